"""The variants table, the model and preprocessing configs, and numeric tolerances.

Standard library only: the CLI, the manifest and the runtime read these without importing torch.
Sizes follow the ViT paper (Dosovitskiy et al. 2021, table 1) and timm; "ti16" is DeiT-Tiny's
shape, which timm and the augreg checkpoints call ViT-Ti/16.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NoReturn

from .errors import UsageError, VitDeployError


@dataclass(frozen=True)
class VariantShape:
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int


VARIANTS: dict[str, VariantShape] = {
    "ti16": VariantShape(patch_size=16, dim=192, depth=12, heads=3, mlp_dim=768),
    "s16": VariantShape(patch_size=16, dim=384, depth=12, heads=6, mlp_dim=1536),
    "b16": VariantShape(patch_size=16, dim=768, depth=12, heads=12, mlp_dim=3072),
    "b32": VariantShape(patch_size=32, dim=768, depth=12, heads=12, mlp_dim=3072),
    "l16": VariantShape(patch_size=16, dim=1024, depth=24, heads=16, mlp_dim=4096),
    "l32": VariantShape(patch_size=32, dim=1024, depth=24, heads=16, mlp_dim=4096),
    "h14": VariantShape(patch_size=14, dim=1280, depth=32, heads=16, mlp_dim=5120),
    # Not paper variants. "mini" is the shape of the small reference model trained on offline
    # data (tools/train_digits.py) for accuracy checks of the precision graphs; "test" is a tiny
    # shape (like timm's test_vit) that runs the whole pipeline in a second, for tests and smoke
    # runs. Use both at small resolutions (32, 48, ...).
    "mini": VariantShape(patch_size=8, dim=96, depth=6, heads=3, mlp_dim=384),
    "test": VariantShape(patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64),
}
PAPER_VARIANTS = ("ti16", "s16", "b16", "b32", "l16", "l32", "h14")

DEFAULT_RESOLUTION = 224
DEFAULT_NUM_CLASSES = 1000
# Bounds that keep a typo from exhausting memory before anything useful happens: attention at
# 1024 px is already 4097 tokens (b16) per image; 100k classes is a 512 MB head for h14 (ImageNet-21k
# has 21,843).
MAX_RESOLUTION = 1024
MAX_NUM_CLASSES = 100_000
MAX_SEED = 2**32 - 1  # what numpy's and torch's generators accept
# timm and the JAX checkpoints use 1e-6; Hugging Face's ViTConfig defaults to 1e-12, and the
# HF loader passes that through, because at random init the difference is visible in FP32.
DEFAULT_LAYER_NORM_EPS = 1e-6


# The resampling filters an image may be resized with (images/decode.py maps them onto PIL's);
# HF's and timm's configs use the same names.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
# The largest image side a preprocessing config may ask for: well above any ViT resolution (H/14
# runs at 518), well below a resize that would allocate gigabytes per image.
MAX_IMAGE_SIDE = 4096


@dataclass(frozen=True)
class Where:
    """Where checked values come from, so a refusal is one line naming the source, the field and the fix.

    Args:
        source: the file (or "" for the command line) the values were read from.
        fix: what the user should do, e.g. "fix or remove the file".
        names: a field's name as the source spells it (``{"std": "image_std"}``); default: the field itself.
        error: the exception type raised (UsageError for options, CheckpointError for checkpoint files).
    """

    source: str = ""
    fix: str = "fix the value"
    names: Mapping[str, str] = field(default_factory=dict)
    error: type[VitDeployError] = UsageError

    def fail(self, name: str, value: Any, problem: str) -> NoReturn:
        prefix = f"{self.source}: " if self.source else ""
        try:
            shown = repr(value)
        except ValueError:  # an int beyond Python's 4300-digit str limit
            shown = "a huge number"
        shown = shown if len(shown) <= 80 else shown[:77] + "..."  # a hostile value may be huge
        raise self.error(f"{prefix}{self.names.get(name, name)} = {shown} {problem}; {self.fix}")


def check_number(
    value: Any, name: str, where: Where, *, integer: bool = False, low: float | None = None,
    high: float | None = None, low_open: bool = False,
) -> Any:
    """``value`` as a finite number in [``low``, ``high``] (``low_open``: above ``low``); ``where.fail`` otherwise.

    JSON gives strings, null, booleans and (for 1e400 or NaN literals) non-finite floats where a
    number belongs; none of them may reach a model or an image transform. ``integer``: a whole
    number, returned as int (224.0 is 224).
    """
    if not _is_finite_number(value):
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        where.fail(name, value, "is not a finite number" if is_number else "is not a number")
    if integer:
        if value != int(value):
            where.fail(name, value, "is not a whole number")
        value = int(value)
    if low is not None and (value <= low if low_open else value < low):
        where.fail(name, value, f"must be {'above' if low_open else 'at least'} {low:g}")
    if high is not None and value > high:
        where.fail(name, value, f"must be at most {high:g}")
    return value


def _is_finite_number(value: Any) -> bool:
    # bool is an int subclass, and JSON's true is no size; JSON ints have no bound (10**400 is no float)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) <= sys.float_info.max if isinstance(value, int) else math.isfinite(value)


def resize_for_crop_pct(crop: int, crop_pct: float) -> int:
    """The resize (shorter side) that a center crop of ``crop`` px at ``crop_pct`` implies: timm's rule, floor."""
    return math.floor(crop / crop_pct)


def check_preprocessing(fields: Mapping[str, Any], where: Where) -> dict[str, Any]:
    """Any subset of :class:`Preprocessing`'s fields, type- and range-checked, normalised (ints, 3 floats).

    The one check of preprocessing values, wherever they come from (a checkpoint's processor config,
    timm's pretrained_cfg, the export options, the dataclass itself): sizes are whole numbers in
    [1, MAX_IMAGE_SIDE] with crop <= resize, the interpolation a known filter, mean and std one or
    three finite numbers (one applies to all channels), std above 0.
    """
    out: dict[str, Any] = {}
    for name in ("resize", "crop"):
        if name in fields:
            out[name] = check_number(fields[name], name, where, integer=True, low=1, high=MAX_IMAGE_SIDE)
    if "interpolation" in fields:
        value = fields["interpolation"]
        if not isinstance(value, str) or value.lower() not in INTERPOLATIONS:
            where.fail("interpolation", value, f"is not one of {', '.join(INTERPOLATIONS)}")
        out["interpolation"] = value.lower()
    for name in ("mean", "std"):
        if name in fields:
            out[name] = _channel_values(fields[name], name, where, positive=name == "std")
    for name, only in (("channel_order", "RGB"), ("layout", "NCHW")):
        if name in fields and fields[name] != only:
            where.fail(name, fields[name], f"is not supported (only {only})")
    if "resize" in out and "crop" in out and out["crop"] > out["resize"]:
        resize = where.names.get("resize", "resize")
        where.fail("crop", out["crop"], f"is larger than {resize} {out['resize']}: the center crop must fit in the "
                   "resized image")
    return out


def preprocessing_options(
    img_size: int, resize: int | None = None, crop_pct: float | None = None,
    mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """``export --resize/--crop-pct/--mean/--std`` as checked Preprocessing fields (only those given).

    ``--resize`` and ``--crop-pct`` are two ways to say one thing: the center crop is the model's
    ``img_size``, and ``crop_pct`` means ``resize = floor(img_size / crop_pct)`` (timm's rule, so
    0.9 at 224 is 248). Both may be given only when they agree.
    """
    where = Where("", "fix the option", {"resize": "--resize", "crop": "--res", "mean": "--mean", "std": "--std",
                                         "crop_pct": "--crop-pct"})
    fields: dict[str, Any] = {}
    if crop_pct is not None:
        pct = check_number(crop_pct, "crop_pct", where, low=0, low_open=True, high=1)
        fields["resize"] = resize_for_crop_pct(img_size, pct)
        if resize is not None and resize != fields["resize"]:
            raise UsageError(
                f"--resize {resize} and --crop-pct {crop_pct:g} disagree: at --res {img_size}, --crop-pct "
                f"{crop_pct:g} means --resize {fields['resize']} (floor(res / crop_pct), as timm); give one of them"
            )
    if resize is not None:
        fields["resize"] = resize
    fields.update({k: v for k, v in (("mean", mean), ("std", std)) if v is not None})
    if "resize" in fields:
        fields["crop"] = img_size  # the crop is the model's input: it must fit in the resize
    checked = check_preprocessing(fields, where)
    checked.pop("crop", None)
    return checked


def _channel_values(value: Any, name: str, where: Where, positive: bool) -> tuple[float, float, float]:
    if not isinstance(value, list | tuple) or len(value) not in (1, 3):
        where.fail(name, value, "is not a list of 1 or 3 numbers (one per RGB channel)")
    for v in value:
        if not _is_finite_number(v) or (positive and v <= 0):
            where.fail(name, value, "must hold finite numbers" + (" above 0" if positive else ""))
    numbers = [float(v) for v in value]
    return (numbers[0],) * 3 if len(numbers) == 1 else (numbers[0], numbers[1], numbers[2])


@dataclass(frozen=True)
class Preprocessing:
    """How a caller turns an RGB image into the model input. Travels into every manifest.

    Resize the shorter side to ``resize`` with ``interpolation``, center-crop ``crop`` x ``crop``,
    scale to [0, 1], then ``(x - mean) / std`` per channel; RGB order, NCHW float32.
    """

    resize: int
    crop: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        # The backstop behind every source's own check: no instance holds a value that would
        # certify a broken artifact (std 0 divides by zero, a crop larger than the resize fails late).
        checked = check_preprocessing(asdict(self), Where("preprocessing", "re-create it from valid values"))
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


def default_preprocessing(img_size: int) -> Preprocessing:
    # timm's defaults: mean = std = 0.5 (augreg), bicubic, crop_pct 0.875 at 224 only. timm's augreg ViTs
    # were trained at crop_pct 0.9 (resize 248): a bare checkpoint says neither, so --crop-pct 0.9 sets it.
    resize = round(img_size / 0.875) if img_size == 224 else img_size
    return Preprocessing(resize=resize, crop=img_size)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the reference model; the manifest stores it verbatim."""

    variant: str
    img_size: int
    num_classes: int
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    layer_norm_eps: float = DEFAULT_LAYER_NORM_EPS
    in_chans: int = 3
    # The grid side the position embeddings are held at, when not ``grid``: a --dynamic-res export keeps
    # the checkpoint's own grid and resamples from it, in the graph, to each input's grid.
    pos_grid: int | None = None
    preprocessing: Preprocessing = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            object.__setattr__(self, "preprocessing", default_preprocessing(self.img_size))

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens at ``img_size``: the class token and the patches."""
        return self.grid * self.grid + 1

    @property
    def pos_embed_grid(self) -> int:
        """The grid side of the position-embedding parameter (``pos_grid``, else ``grid``)."""
        return self.pos_grid or self.grid

    def with_(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        if d["pos_grid"] is None:  # a fixed export's model section stays as it was
            del d["pos_grid"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**{**d, "preprocessing": Preprocessing.from_dict(d["preprocessing"])})


def model_config(
    variant: str,
    img_size: int = DEFAULT_RESOLUTION,
    num_classes: int = DEFAULT_NUM_CLASSES,
    **overrides: Any,
) -> ModelConfig:
    """The config of a named variant, with the user's inputs checked."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown model {variant!r}; choose one of: {', '.join(VARIANTS)}")
    shape = VARIANTS[variant]
    for name, value, bound in (("--res", img_size, MAX_RESOLUTION), ("--num-classes", num_classes, MAX_NUM_CLASSES)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value > bound:
            raise UsageError(f"{name} must be an integer from 1 to {bound}, got {value!r}")
    if img_size <= 0 or img_size % shape.patch_size:
        lower = max(shape.patch_size, img_size - img_size % shape.patch_size)
        raise UsageError(
            f"resolution {img_size} is not a positive multiple of {variant}'s patch size "
            f"{shape.patch_size}; try --res {lower} or --res {lower + shape.patch_size}"
        )
    if num_classes <= 0:
        raise UsageError(f"--num-classes must be positive, got {num_classes}")
    return ModelConfig(
        variant=variant,
        img_size=img_size,
        num_classes=num_classes,
        patch_size=shape.patch_size,
        dim=shape.dim,
        depth=shape.depth,
        heads=shape.heads,
        mlp_dim=shape.mlp_dim,
        **overrides,
    )


@dataclass(frozen=True)
class ResolutionRange:
    """The image sizes a dynamic-resolution artifact takes: height and width, each on its own, a multiple
    of ``step`` (the patch size) in [``min``, ``max``]. ``native`` is the size of the position embeddings
    the graph holds (``--res``); at any other size the graph resamples them (bicubic, no antialias).

    A property of the export, recorded in the manifest's ``dynamic_resolution`` section and read back
    through ``Artifact.resolution_range`` by every later step (profiles, runtime checks, Triton, predict).
    """

    min: int
    max: int
    step: int
    native: int

    def nearest(self, size: int) -> list[int]:
        """The one or two valid sizes nearest to ``size`` (below and above it), within the range."""
        below = size - size % self.step
        above = below + (self.step if size % self.step else 0)
        return sorted({min(self.max, max(self.min, v)) for v in (below, above)})

    def valid(self, size: int) -> bool:
        return self.min <= size <= self.max and size % self.step == 0

    def problem(self, height: int, width: int) -> str | None:
        """Why ``height`` x ``width`` is not a size this range takes (naming the nearest valid sizes), or None."""
        bad = [(name, v) for name, v in (("height", height), ("width", width)) if not self.valid(v)]
        if not bad:
            return None
        near = "; ".join(f"{name} {v} -> {' or '.join(map(str, self.nearest(v)))}" for name, v in bad)
        return (f"{height}x{width} is not a size this model takes ({self.describe()}); nearest valid: {near}")

    def describe(self) -> str:
        return f"height and width each a multiple of {self.step} from {self.min} to {self.max}"

    def check_sizes(self) -> list[tuple[int, int]]:
        """The (height, width) pairs a check runs at: the native size first, both ends, the ends crossed
        (non-square) and a non-square size inside the range; no pair twice."""
        mid = self.min + (self.max - self.min) // 2 // self.step * self.step
        inside = (mid, self.native) if mid != self.native else (mid, min(self.max, mid + self.step))
        pairs = [(self.native, self.native), (self.min, self.min), (self.max, self.max), (self.min, self.max), inside]
        return list(dict.fromkeys(pairs))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ResolutionRange:
        return cls(**{k: int(d[k]) for k in ("min", "max", "step", "native")})


def parse_dynamic_res(text: str, variant: str, img_size: int) -> ResolutionRange:
    """``--dynamic-res MIN:MAX`` for ``variant`` exported at ``--res img_size``, checked (UsageError says the fix).

    MIN and MAX are multiples of the patch size, at least one patch, at most ``MAX_RESOLUTION`` (the
    exporter's limit), MIN <= MAX, and the range holds ``--res`` (the native size, where TensorRT's
    optimization profile is tuned by default).
    """
    if variant not in VARIANTS:
        raise UsageError(f"unknown model {variant!r}; choose one of: {', '.join(VARIANTS)}")
    step = VARIANTS[variant].patch_size
    parts = str(text).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--dynamic-res {text!r} is not MIN:MAX in pixels, e.g. --dynamic-res 224:512")
    low, high = (int(p) for p in parts)
    if low > high:
        raise UsageError(f"--dynamic-res {text}: MIN {low} is above MAX {high}; give MIN:MAX, e.g. {high}:{low}")
    if low < step:
        raise UsageError(f"--dynamic-res {text}: MIN {low} is below one patch ({step} px for {variant}); "
                         f"give MIN >= {step}")
    if high > MAX_RESOLUTION:
        raise UsageError(f"--dynamic-res {text}: MAX {high} is above the exporter's limit {MAX_RESOLUTION}; "
                         f"give MAX <= {MAX_RESOLUTION}")
    for name, value in (("MIN", low), ("MAX", high)):
        if value % step:
            lower = value - value % step
            raise UsageError(f"--dynamic-res {text}: {name} {value} is not a multiple of {variant}'s patch size "
                             f"{step}; try {max(step, lower)} or {lower + step}")
    if not low <= img_size <= high:
        raise UsageError(f"--dynamic-res {text} does not hold --res {img_size} (the native size of the position "
                         f"embeddings); widen the range or change --res")
    return ResolutionRange(min=low, max=high, step=step, native=img_size)


@dataclass(frozen=True)
class Tolerance:
    """Bounds a precision's logits must meet against the PyTorch FP32 reference (None: not checked).

    ``min_top1_agreement`` is only enforced for trained/pretrained weights: a randomly
    initialised model's logits are nearly tied, so its argmax flips on noise that means nothing.
    ``max_accuracy_drop`` (in points) is enforced where labelled images are given.
    """

    max_rel_l2: float | None = None
    max_abs: float | None = None
    min_cosine: float | None = None  # the worst sample's cosine
    min_mean_cosine: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None

    def bounds(self) -> dict[str, float]:
        """The bounds that are checked (None ones left out), as recorded in manifests and reports."""
        return {k: v for k, v in asdict(self).items() if v is not None}


# The one table of per-precision bounds (documented in docs/precision.md).
TOLERANCES: dict[str, Tolerance] = {
    # export-time check of the FP32 graph: only summation order differs from PyTorch
    "fp32": Tolerance(max_rel_l2=1e-5, max_abs=1e-4),
    "fp16": Tolerance(min_cosine=0.9999, min_top1_agreement=0.995, max_accuracy_drop=0.1),
    # a trained ViT's INT8 logits are judged on the mean cosine and top-1 agreement; their worst
    # image sits near 0.95 for every quantizer measured (docs/quantizers.md), so no worst-case bound
    "int8": Tolerance(min_mean_cosine=0.995, min_top1_agreement=0.97, max_accuracy_drop=1.0),
    # FP8 (E4M3) keeps 3 mantissa bits at every magnitude: on a trained ViT its per-tensor W8A8 graphs sit
    # a little below INT8-with-SmoothQuant (real ViT-Ti, 1,252 held-out photos: mean cosine 0.9950, agreement
    # 96.6%; ModelOpt's FP8 0.9917, 94.5%); docs/precision.md
    "fp8": Tolerance(min_mean_cosine=0.993, min_top1_agreement=0.96, max_accuracy_drop=1.0),
}



def tolerance(precision: str) -> Tolerance:
    """The bounds an artifact of ``precision`` is held to (the one lookup of TOLERANCES)."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise UsageError(f"no tolerance for precision {precision!r}; known: {', '.join(TOLERANCES)}") from None


# Checkpoint specs that name a hub model instead of a local file (vit-deploy export --weights).
HUB_PREFIXES = ("hf:", "timm:")

# The choice lists the CLI offers (click.Choice) and the library checks against: cheap to import.
RUNTIME_BACKENDS = ("tensorrt", "onnxruntime", "openvino", "pytorch")  # vit_deploy.runtime.open(artifact, backend)
ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")  # ONNX Runtime execution providers, by short name
TRITON_BACKENDS = ("auto", "python", "onnxruntime", "tensorrt")  # vit-deploy triton-repo --backend
# Activation range rules of the quantized formats (onnx/calibrate.py); which apply to which format
# and the default of each: onnx/formats.py (INT8: mse; FP8: minmax)
CALIBRATION_METHODS = ("mse", "entropy", "percentile", "minmax")
PRECISIONS = ("fp16", "int8", "fp8")  # what the precision step makes from an FP32 export
QUANTIZED_PRECISIONS = ("int8", "fp8")  # the ones calibrated on images (explicit Q/DQ)

# What an INT8 graph is made for: "tensorrt" (attention in INT8 up to TensorRT's 512-token fused
# INT8 attention limit) or "cpu" (attention always float: the OpenVINO CPU path; see onnx/int8.py).
INT8_TARGETS = ("tensorrt", "cpu")

# Batch sizes of the export-time check: none equals the traced batch (2), which is what proves
# the batch dimension really is dynamic.
TRACE_BATCH = 2
VALIDATION_BATCHES = (1, 3, 8)
