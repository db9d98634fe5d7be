"""The quantized formats as data: what INT8 and FP8 (E4M3) differ in, in one table.

Everything else of a quantized graph is shared (calibration, SmoothQuant, the range rules, the
Q/DQ writer, the float fallback, the FP16 float parts): it reads the format it is given. A format
says how a value already divided by its scale is stored (rounded and clipped to -127..127, or cast
to E4M3 with saturation at +-448), the squared rounding error that the ``mse`` range rule weighs,
which range rules make sense for it, how weights are scaled, and where TensorRT can fuse attention
with it (TensorRT docs, "Working with Quantized Types" and "Fused Attention"; docs/tensorrt.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..errors import UsageError


@dataclass(frozen=True)
class QuantFormat:
    """One quantized element type and the rules our graphs follow for it.

    Args:
        name: the precision's name (``build-engine --int8 | --fp8``, the manifest's ``precision``).
        onnx_type: the element type of the Q/DQ zero points and the quantized weights.
        max_value: the largest magnitude stored: a tensor's range (amax) maps onto it.
        integer: uniform levels (rounding error step^2 / 12 everywhere) or a float grid (error
            relative to the value, down to the subnormals).
        methods: the calibration range rules offered, the default first (``entropy`` is TensorRT's
            INT8 rule on 128 uniform levels; it has no meaning on a float grid).
        fused_attention_max_tokens: the longest sequence TensorRT's fused attention takes with Q/DQ
            of this type on the attention inputs (None: no limit documented).
        fused_attention_head_sizes: the head sizes it takes.
        min_compute_capability: the oldest GPU (major, minor) with tensor cores for this type.
        quantizes_image: whether the layer that reads the graph's image input (the patch embedding)
            is quantized. Normalised pixels fill their range evenly, which suits INT8's uniform levels;
            E4M3 has 8 values per octave, so near the top of the range a step is 7% of full scale: on
            the real ViT-Ti that one FP8 input cost more than every other quantized tensor together
            (mean cosine 0.9878 alone), for 0.7% of a ViT-B's FLOPs (docs/precision.md).
        smoothquant: whether SmoothQuant migrates activation ranges into the weights by default. It is
            what makes INT8 work on a real ViT; in E4M3 an outlier costs no resolution (the exponent
            absorbs it) while every weight keeps a relative error, so moving range into the weights
            only adds error (real ViT-Ti, every GEMM but the patch embedding FP8: mean cosine 0.9950
            without, 0.9937 with).
    """

    name: str
    onnx_type: int
    max_value: float
    integer: bool
    methods: tuple[str, ...]
    fused_attention_max_tokens: int | None
    fused_attention_head_sizes: tuple[int, ...]
    min_compute_capability: tuple[int, int]
    quantizes_image: bool = True
    smoothquant: bool = True

    @property
    def label(self) -> str:
        return self.name.upper()

    def store(self, scaled: np.ndarray) -> np.ndarray:
        """``scaled`` (a value divided by its scale) as the stored element type: round half to even and
        clip for INT8 (QuantizeLinear's rule), a saturating cast for FP8 (QuantizeLinear's default)."""
        clipped = np.clip(scaled, -self.max_value, self.max_value)
        if self.integer:
            return np.rint(clipped).astype(np.int8)
        import ml_dtypes  # onnx's own dependency: numpy's float8 types

        return clipped.astype(ml_dtypes.float8_e4m3fn)

    def fake(self, scaled: np.ndarray) -> np.ndarray:
        """The float32 values of :meth:`store`: what DequantizeLinear gives back, before the scale."""
        return self.store(scaled).astype(np.float32)

    def rounding_mse(self, scaled: np.ndarray) -> np.ndarray:
        """Expected squared rounding error of each magnitude in ``scaled`` (in units of the scale).

        INT8: uniform steps of 1, so 1/12 everywhere. E4M3: 3 mantissa bits, so the step is
        2^(exponent - 3) for normal values (>= 2^-6) and 2^-9 below (the subnormals).
        """
        scaled = np.abs(np.asarray(scaled, dtype=np.float64))
        if self.integer:
            return np.full(scaled.shape, 1 / 12)
        exponent = np.floor(np.log2(np.maximum(scaled, FP8_SMALLEST_NORMAL)))
        step = np.exp2(exponent - FP8_MANTISSA_BITS)
        return step * step / 12

    def method(self, requested: str | None) -> str:
        """The range rule to use: ``requested`` when it applies to this format, the default when None."""
        if requested is None:
            return self.methods[0]
        if requested not in self.methods:
            raise UsageError(f"--calib-method {requested} does not apply to --{self.name}; choose one of "
                             f"{', '.join(self.methods)}")
        return requested

    def head_sizes_text(self) -> str:
        sizes = self.fused_attention_head_sizes
        if len(sizes) > 4 and all(b - a == sizes[1] - sizes[0] for a, b in zip(sizes, sizes[1:], strict=False)):
            return f"{sizes[0]}-{sizes[-1]} in steps of {sizes[1] - sizes[0]}"
        return "/".join(map(str, sizes))

    def zero_point(self, shape: tuple[int, ...] = ()) -> np.ndarray:
        return self.store(np.zeros(shape, dtype=np.float32))


FP8_MANTISSA_BITS = 3
FP8_SMALLEST_NORMAL = 2.0**-6

INT8 = QuantFormat(
    name="int8", onnx_type=TensorProto.INT8, max_value=127.0, integer=True,
    methods=("mse", "entropy", "percentile", "minmax"),
    # TensorRT's fused INT8 MHA: sequence length <= 512 and head size 16, 32 or 64 (TensorRT 10 developer
    # guide, "Multi-Head Attention Fusion"; docs/tensorrt.md)
    fused_attention_max_tokens=512, fused_attention_head_sizes=(16, 32, 64),
    min_compute_capability=(7, 5),  # Turing: INT8 tensor cores
)
FP8 = QuantFormat(
    name="fp8", onnx_type=TensorProto.FLOAT8E4M3FN, max_value=448.0, integer=False,
    methods=("minmax", "mse", "percentile"),
    # no TensorRT 11 text on FP8 MHA limits; ModelOpt's TensorRT rules: head size above 8, at most 256
    fused_attention_max_tokens=None, fused_attention_head_sizes=tuple(range(16, 257, 8)),
    min_compute_capability=(8, 9),  # Ada and Hopper: FP8 tensor cores
    quantizes_image=False,
    smoothquant=False,
)
FORMATS: dict[str, QuantFormat] = {f.name: f for f in (INT8, FP8)}


def quant_format(precision: str) -> QuantFormat:
    try:
        return FORMATS[precision]
    except KeyError:
        raise ValueError(f"no quantized format {precision!r}; known: {', '.join(FORMATS)}") from None
