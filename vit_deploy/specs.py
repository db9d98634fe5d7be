"""The variants table, the model and preprocessing configs, and numeric tolerances.

Standard library only: the CLI, the manifest and the runtime read these without importing torch.
Sizes follow the ViT paper (Dosovitskiy et al. 2021, table 1) and timm; "ti16" is DeiT-Tiny's
shape, which timm and the augreg checkpoints call ViT-Ti/16.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import UsageError


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
# timm and the JAX checkpoints use 1e-6; Hugging Face's ViTConfig defaults to 1e-12, and the
# HF loader passes that through, because at random init the difference is visible in FP32.
DEFAULT_LAYER_NORM_EPS = 1e-6


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"])})


def default_preprocessing(img_size: int) -> Preprocessing:
    # The augreg/timm convention: mean = std = 0.5, bicubic; crop_pct 0.875 at 224 only.
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
    preprocessing: Preprocessing = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            object.__setattr__(self, "preprocessing", default_preprocessing(self.img_size))

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid + 1

    def with_(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
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
}



def tolerance(precision: str) -> Tolerance:
    """The bounds an artifact of ``precision`` is held to (the one lookup of TOLERANCES)."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise UsageError(f"no tolerance for precision {precision!r}; known: {', '.join(TOLERANCES)}") from None


# The choice lists the CLI offers (click.Choice) and the library checks against: cheap to import.
RUNTIME_BACKENDS = ("tensorrt", "onnxruntime", "openvino", "pytorch")  # vit_deploy.runtime.open(artifact, backend)
ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")  # ONNX Runtime execution providers, by short name
TRITON_BACKENDS = ("auto", "python", "onnxruntime", "tensorrt")  # vit-deploy triton-repo --backend
# INT8 activation range rules (onnx/calibrate.py); the first is the default
CALIBRATION_METHODS = ("mse", "entropy", "percentile", "minmax")
PRECISIONS = ("fp16", "int8")  # what the precision step makes from an FP32 export

# What an INT8 graph is made for: "tensorrt" (attention in INT8 up to TensorRT's 512-token fused
# INT8 attention limit) or "cpu" (attention always float: the OpenVINO CPU path; see onnx/int8.py).
INT8_TARGETS = ("tensorrt", "cpu")

# Batch sizes of the export-time check: none equals the traced batch (2), which is what proves
# the batch dimension really is dynamic.
TRACE_BATCH = 2
VALIDATION_BATCHES = (1, 3, 8)
