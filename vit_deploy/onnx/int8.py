"""INT8 explicit quantization: QuantizeLinear/DequantizeLinear pairs written into the ONNX graph
(TensorRT 11 has no calibrators; it reads the scales from these nodes).

Quantizer: ONNX Runtime's ``quantize_static`` in QDQ format (see docs/quantizers.md for the
comparison with ModelOpt that chose it). Settings follow what TensorRT consumes and fuses:
symmetric INT8 activations and weights (zero point 0), per-channel weight scales on the output
channel, Q/DQ on the inputs of MatMul / Gemm / Conv only, so each DQ->MatMul pair fuses into
an INT8 GEMM and everything between (LayerNorm, GELU, Softmax, residual Adds) stays in float.

Attention: TensorRT's fused INT8 attention exists only for sequences of at most 512 tokens;
beyond that (b16 at 384 has 577) the two attention MatMuls (Q*scale @ K^T and P @ V, the
MatMuls whose inputs are both activations) are excluded and stay float.

Target "cpu" (``build-engine --int8 --target cpu``): the graph for the OpenVINO CPU path keeps
attention in float at every sequence length. Measured on b16@224 (docs/benchmarks.md): with
quantized attention MatMuls OpenVINO spends about a third of its time on layout conversions and
extra quantize ops around them; with them in float it fuses attention into one kernel and runs
1.2x faster, at the same accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..progress import Progress
from ..specs import INT8_TARGETS
from .export import INPUT_NAME

ATTENTION_INT8_MAX_TOKENS = 512
QUANTIZED_OP_TYPES = ("MatMul", "Gemm", "Conv")
CALIBRATION_METHODS = ("entropy", "percentile", "minmax")
PERCENTILE = 99.999


def attention_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul nodes whose inputs are both activations (no weight initializer)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name for n in model.graph.node
        if n.op_type == "MatMul" and not any(i in constants for i in n.input)
    ]


class _BatchReader:
    """ONNX Runtime CalibrationDataReader over an in-memory array, one batch per item.

    ``set_range`` lets quantize_static's strided calibration run one batch at a time, so the
    memory for intermediate tensors is that of one batch, not of the whole set.
    """

    def __init__(self, images: np.ndarray, batch: int, progress: Progress | None) -> None:
        self.batches = [images[i : i + batch] for i in range(0, len(images), batch)]
        self.start, self.end = 0, len(self.batches)
        self.progress = progress
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index
        self._it = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter([{INPUT_NAME: b} for b in self.batches[self.start : self.end]])
        item = next(self._it, None)
        if item is not None and self.progress is not None:
            self.progress.tick()
        return item

    def rewind(self) -> None:
        self._it = None


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calib_images: np.ndarray,
    *,
    method: str,
    num_tokens: int,
    batch: int,
    cache_path: Path | None = None,
    progress: Progress | None = None,
    target: str = "tensorrt",
) -> dict[str, Any]:
    """Write the Q/DQ graph to ``out_path``; returns the policy record for the manifest."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    if target not in INT8_TARGETS:
        raise ValueError(f"unknown target {target!r}")
    model = onnx.load(str(fp32_path), load_external_data=False)
    float_attention = target == "cpu" or num_tokens > ATTENTION_INT8_MAX_TOKENS
    excluded = attention_matmuls(model) if float_attention else []
    calibrate_method = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[method]
    extra_options = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": True,
        "CalibStridedMinMax": 1,  # one batch per collection round (see _BatchReader)
        "CalibPercentile": PERCENTILE,
        # ORT would quantize biases to INT32 DequantizeLinear nodes; TensorRT's quantized types are
        # INT8/FP8/INT4/FP4 only ("Working with Quantized Types"), and it fuses float biases itself
        "QuantizeBias": False,
        # ORT also puts Q/DQ on MatMul/Conv *outputs* by default; TensorRT fuses DQ->GEMM->Q only
        # when the next op consumes INT8, and here it is float (Add, LayerNorm, GELU), so the extra
        # pair only adds rounding error (measured: rel L2 ~20% lower on b16 without it)
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
        # TensorRT wants per-channel scales on the output-channel axis: 1 for a MatMul weight [K, N]
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }
    reader = _BatchReader(calib_images, batch, progress)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs advice about pre-processing on every call
    try:
        # ORT's histogram calibrators print() progress; our bar shows it, and stdout is for --json
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            quantize_static(
                str(fp32_path), str(out_path), reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=calibrate_method,
                extra_options=extra_options,
                calibration_cache_path=cache_path,
                use_external_data_format=fp32_path.stat().st_size > (1 << 30),
            )
    finally:
        root.setLevel(level)
    return {
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ)",
        "activations": "int8 symmetric per-tensor (zero point 0)",
        "weights": "int8 symmetric per-channel (output channel)",
        "op_types": list(QUANTIZED_OP_TYPES),
        "calibration_method": method,
        "percentile": PERCENTILE if method == "percentile" else None,
        "target": target,
        "attention": _attention_note(target, num_tokens, bool(excluded)),
        "excluded_nodes": excluded,
    }


def _attention_note(target: str, num_tokens: int, excluded: bool) -> str:
    if target == "cpu":
        return "excluded from INT8: CPU target (OpenVINO fuses float attention)"
    if excluded:
        return f"excluded from INT8: {num_tokens} tokens > {ATTENTION_INT8_MAX_TOKENS} (TensorRT fused INT8 MHA limit)"
    return f"quantized ({num_tokens} tokens <= {ATTENTION_INT8_MAX_TOKENS})"
