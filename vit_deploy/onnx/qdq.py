"""Explicit quantization written into an ONNX graph: the layers that can be quantized, and the
QuantizeLinear/DequantizeLinear pairs that quantize them, in a quantized format (``formats.py``:
INT8 or FP8 E4M3).

The form is the one TensorRT 11 consumes and fuses (TensorRT docs, "Working with Quantized Types"):
- weights stored in the quantized type with a per-output-channel scale and a DequantizeLinear,
  symmetric (zero point 0);
- each quantized activation gets one QuantizeLinear -> DequantizeLinear pair with a per-tensor
  scale, shared by every quantized op that reads it; ops that are not quantized (the residual
  Add, LayerNorm, GELU, Softmax) keep reading the float tensor;
- biases stay float (TensorRT has no INT32 Q/DQ and fuses float biases itself), and no Q/DQ goes
  on a GEMM's output (it would only add a rounding step before a float op);
- every scale is a value the graph's float type holds exactly (``scale_dtype``: float16 where the
  float parts are FP16, so each DequantizeLinear feeds its FP16 GEMM with no Cast between), rounded
  up so the range is never narrowed, and the weights are quantized with that very scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .formats import INT8, QuantFormat

# ONNX Runtime fuses DequantizeLinear -> MatMul -> ... into its integer kernels (MatMulIntegerToFloat,
# QLinear*); on x86 CPUs without VNNI those use 16-bit saturating multiply-adds and lose accuracy (the real
# ViT-Ti's INT8 mean cosine read 0.9917 fused vs 0.9934 as written, on an AVX2-only machine). This session
# option keeps Q/DQ as written: the arithmetic TensorRT performs (exact integer products), for any CPU.
EXACT_QDQ_OPTION = "session.disable_quant_qdq"


@dataclass(frozen=True)
class WeightLayer:
    """A MatMul / Gemm / Conv whose second input is a weight initializer."""

    node: str
    op_type: str
    activation: str  # the input tensor that meets the weight
    weight: str  # initializer name
    in_axis: int  # weight axis that meets the activation's channels
    out_axis: int  # weight axis of the output channels: the per-channel scale axis


def weight_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """Every MatMul, Gemm and Conv with a weight initializer, in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.input[0] in inits:
            continue
        if node.op_type == "MatMul":
            if len(inits[node.input[1]].dims) != 2:
                continue
            in_axis, out_axis = 0, 1
        elif node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0):
                continue
            in_axis, out_axis = (1, 0) if attrs.get("transB", 0) else (0, 1)
        else:
            in_axis, out_axis = 1, 0
        layers.append(WeightLayer(node.name, node.op_type, node.input[0], node.input[1], in_axis, out_axis))
    return layers


def layer_kind(node: str) -> str:
    """A short role name for a weight layer of the exported ViT (its node names follow the torch modules)."""
    for key in ("patch_embed", "qkv", "proj", "fc1", "fc2", "head"):
        if f"/{key}/" in node or node.startswith(f"/{key}"):
            return key
    return "other"


def layer_label(node: str) -> str:
    """``blocks.7.fc2`` for ``/blocks/blocks.7/mlp/fc2/MatMul``; ``head`` for ``/head/Gemm``."""
    parts = [p for p in node.strip("/").split("/") if p]
    block = next((p for p in parts if p.startswith("blocks.")), None)
    kind = layer_kind(node)
    return f"{block}.{kind}" if block else kind


def activation_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul nodes whose inputs are both activations: attention's Q*scale @ K^T and P @ V."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in model.graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def representable_scale(amax: np.ndarray | float, fmt: QuantFormat, dtype: type = np.float32) -> np.ndarray:
    """``amax / fmt.max_value`` as a float32 array whose values ``dtype`` holds exactly, rounded up (a
    scale rounded down would clip the largest values), kept within ``dtype``'s finite positive range."""
    scale = np.maximum(np.asarray(amax, dtype=np.float64), 1e-12) / fmt.max_value
    info = np.finfo(dtype)
    stored = np.clip(scale, info.smallest_subnormal, info.max).astype(dtype)
    short = stored.astype(np.float64) < np.minimum(scale, float(info.max))
    with np.errstate(over="ignore"):  # only the short values are stepped up, never the largest one
        stored = np.where(short, np.nextafter(stored, dtype(np.inf)), stored)
    return stored.astype(np.float32)


def quantize_weight(
    weight: np.ndarray, out_axis: int, fmt: QuantFormat = INT8, scale_dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization: (weight in ``fmt``'s type, float32 scale per channel)."""
    other = tuple(a for a in range(weight.ndim) if a != out_axis)
    scale = representable_scale(np.abs(weight).max(axis=other), fmt, scale_dtype)
    shape = [1] * weight.ndim
    shape[out_axis] = -1
    return fmt.store(weight / scale.reshape(shape)), scale


def insert_qdq(
    model: onnx.ModelProto,
    layers: Iterable[WeightLayer],
    activation_amax: dict[str, float],
    quantized_inputs: Iterable[tuple[str, int]],
    fmt: QuantFormat = INT8,
    scale_dtype: type = np.float32,
) -> onnx.ModelProto:
    """``model``, changed in place and returned, with ``fmt`` weights for ``layers`` and a Q/DQ pair on
    every tensor in ``activation_amax``, read through the DequantizeLinear by each (node name, input
    index) in ``quantized_inputs``; every scale exact in ``scale_dtype``. In place because a b16 graph
    is 350 MB: the caller hands over its own copy (the folded graph) rather than paying for one more."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    new_nodes, new_inits = [], []

    dequantized_weights: dict[str, str] = {}
    for layer in layers:
        node = nodes[layer.node]
        weight = node.input[1]  # the current name: folding may have given the node its own copy
        if weight not in dequantized_weights:
            q, scale = quantize_weight(numpy_helper.to_array(inits[weight]), layer.out_axis, fmt, scale_dtype)
            new_inits += [
                numpy_helper.from_array(q, f"{weight}_quantized"),
                numpy_helper.from_array(scale, f"{weight}_scale"),
                numpy_helper.from_array(fmt.zero_point(scale.shape), f"{weight}_zero_point"),
            ]
            new_nodes.append(helper.make_node(
                "DequantizeLinear", [f"{weight}_quantized", f"{weight}_scale", f"{weight}_zero_point"],
                [f"{weight}_dequantized"], name=f"{weight}_DequantizeLinear", axis=layer.out_axis,
            ))
            dequantized_weights[weight] = f"{weight}_dequantized"
        node.input[1] = dequantized_weights[weight]

    dequantized: dict[str, str] = {}
    after: dict[str, list[onnx.NodeProto]] = {}  # Q/DQ nodes go right after the producer of their tensor
    for tensor, amax in activation_amax.items():
        base = tensor.strip("/").replace("/", "_") if tensor.startswith("/") else tensor
        scale = representable_scale(float(amax), fmt, scale_dtype)
        new_inits += [
            numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(fmt.zero_point(), f"{base}_zero_point"),
        ]
        after[tensor] = [
            helper.make_node("QuantizeLinear", [tensor, f"{base}_scale", f"{base}_zero_point"],
                             [f"{base}_quantized"], name=f"{base}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                             [f"{base}_dequantized"], name=f"{base}_DequantizeLinear"),
        ]
        dequantized[tensor] = f"{base}_dequantized"
    for node_name, index in quantized_inputs:
        node = nodes[node_name]
        node.input[index] = dequantized[node.input[index]]

    # unused float weights go; the INT8 copies replace them
    added = [n for nodes_after in after.values() for n in nodes_after]
    still_used = {i for n in list(graph.node) + new_nodes + added for i in n.input}
    kept = [t for t in graph.initializer if t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    # dependency order without a sort: weight DQs and graph-input Q/DQs first, the rest after their producer
    inputs = {i.name for i in graph.input}
    ordered = new_nodes + [n for name in list(after) if name in inputs for n in after.pop(name)]
    for node in graph.node:
        ordered.append(node)
        for name in node.output:
            ordered += after.pop(name, [])
    del graph.node[:]
    graph.node.extend(ordered)
    return model
