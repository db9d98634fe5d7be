"""FP16 mixed precision in the graph, with FP32 inputs and outputs (TensorRT 11 is strongly typed:
the types written here are the types the engine computes in).

One pass types the float parts of every TensorRT graph: the FP16 graph (``convert_fp16``) and every
quantized graph (``float_parts_fp16``: the same conversion after its Q/DQ are written, so scales,
dequantized weights and every op between the quantized GEMMs are FP16 under the same policy).

The converter is ONNX Runtime's ``onnxruntime.transformers.float16`` (shipped inside the
onnxruntime package we already depend on), not ModelOpt AutoCast, the vendor's documented tool:
AutoCast needs ``nvidia-modelopt[onnx]``, which pins onnx 1.21, onnxruntime-gpu 1.24 and CUDA's
cupy and cannot share an environment with the CPU onnxruntime. Both do the same transformation
that matters to TensorRT: FP16 weights and activations, chosen ops kept in FP32 behind Cast
nodes, I/O kept FP32. Which ops stay FP32 is our policy, decided by measurement (docs/precision.md).
"""

from __future__ import annotations

from typing import Any

import onnx

# Kept in FP32 by default. LayerNormalization: its variance sums squares of residual-stream values,
# which overflow FP16 (max 65504) in large pretrained transformers (TensorRT's own warning for
# ViTs); measured cost on the CPU is nil and on a GPU it is a small op. Softmax: TensorRT's fused
# attention keeps its softmax accumulation in FP32 anyway; measured here it buys nothing on
# our models, so it is left in FP16 to keep the attention chain fusable as one FP16 kernel.
DEFAULT_KEEP_FP32: tuple[str, ...] = ("LayerNormalization",)


def convert_fp16(model: onnx.ModelProto, keep_fp32_ops: tuple[str, ...] = DEFAULT_KEEP_FP32) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from .graph import topologically_sorted

    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(keep_fp32_ops), disable_shape_infer=False
    )
    return topologically_sorted(converted)  # the converter appends its input Casts at the end


def float_parts_fp16(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """A Q/DQ graph with its float parts in FP16 under the FP16 policy (``convert_fp16``), at ``opset``.

    The converter types QuantizeLinear inputs and DequantizeLinear outputs FP16 and turns the scale
    initializers FP16 (the Q/DQ writer made them exact in FP16), so every DequantizeLinear feeds its
    FP16 GEMM directly. FP16 scales need opset 19 or later: the graph is converted to ``opset``
    first (onnx's version converter; every op of an exported ViT keeps its meaning).
    """
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current < opset:
        model = version_converter.convert_version(model, opset)
    return convert_fp16(model)


def fp16_policy(keep_fp32_ops: tuple[str, ...]) -> dict[str, Any]:
    return {
        "converter": "onnxruntime.transformers.float16.convert_float_to_float16",
        "io_dtype": "float32",
        "keep_fp32_ops": list(keep_fp32_ops),
        "weights": "float16 (values beyond FP16 range clamped by the converter)",
    }
