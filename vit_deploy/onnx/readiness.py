"""What TensorRT 11 will run each op of an ONNX graph in, read from the graph alone.

TensorRT 11 builds strongly typed networks only: a GEMM runs in INT8 or FP8 when both of its
inputs come from DequantizeLinear of that type, and every other op runs in the type the graph
gives its tensors. So the precision an engine computes in can be proven here, without a GPU,
from the ONNX types (onnx shape inference fills in every intermediate tensor's type).

The report knows nothing of how the graph was made, so it judges graphs of other tools too:
- every GEMM/Conv (MatMul, Gemm, Conv): INT8, FP8, or the float type it runs in, and why;
- every other compute op that carries float data, by type and output type (data movement such
  as Reshape or Transpose, Q/DQ and Cast are not compute);
- the compute ops whose output is FP32 although the policy keeps only ``keep_fp32_ops`` in FP32
  (:func:`failures`: for a TensorRT precision graph each one is a validation failure: it would run
  FP32 on the GPU);
- every attention block (MatMul -> Softmax -> MatMul): whether it matches the pattern TensorRT's
  fused multi-head attention takes (TensorRT docs, "Fused Attention"), in FP16, INT8 or FP8,
  and if not, why: the scale on Q before the first MatMul, Q/DQ of one quantized type on both
  inputs of both MatMuls (the softmax output included) and after the second (the next GEMM's input
  quantizer, through data movement), and the format's limits on sequence length and head size
  (``formats.QuantFormat``).
"""

from __future__ import annotations

import collections
from typing import Any

import onnx
from onnx import TensorProto

from .formats import FORMATS

GEMM_OPS = ("MatMul", "Gemm", "Conv")
# Ops that move or reshape data without arithmetic; TensorRT moves Q/DQ across them when it fuses.
DATA_MOVEMENT = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Slice", "Split", "Concat",
                 "Expand", "Identity", "Tile", "Pad"}
NOT_COMPUTE = DATA_MOVEMENT | {"QuantizeLinear", "DequantizeLinear", "Cast", "CastLike", "Constant",
                               "ConstantOfShape", "Shape", "Size"}
FLOAT_TYPES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
               TensorProto.DOUBLE: "fp64"}
QUANTIZED_TYPES = {f.onnx_type: f.name for f in FORMATS.values()}


class _Graph:
    """Types, producers and consumers of every tensor of a model (after shape inference)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        inferred = onnx.shape_inference.infer_shapes(model)
        g = inferred.graph
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | str]] = {}
        for v in list(g.input) + list(g.output) + list(g.value_info):
            t = v.type.tensor_type
            self.types[v.name] = t.elem_type
            self.shapes[v.name] = [d.dim_param or d.dim_value for d in t.shape.dim]
        for init in g.initializer:
            self.types[init.name] = init.data_type
            self.shapes[init.name] = list(init.dims)
        self.initializers = {init.name for init in g.initializer}
        self.nodes = list(g.node)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
        for n in g.node:
            if n.op_type == "Constant":
                value = next((a.t for a in n.attribute if a.name == "value"), None)
                if value is not None:
                    self.types[n.output[0]] = value.data_type
                    self.initializers.add(n.output[0])

    def dtype(self, name: str) -> str:
        t = self.types.get(name, 0)
        return FLOAT_TYPES.get(t) or QUANTIZED_TYPES.get(t) or TensorProto.DataType.Name(t).lower()

    def source(self, name: str) -> onnx.NodeProto | None:
        """The node behind ``name`` once data movement is walked back (TensorRT moves Q/DQ across it)."""
        node = self.producer.get(name)
        while node is not None and node.op_type in DATA_MOVEMENT - {"Concat"} and node.input:
            node = self.producer.get(node.input[0])
        return node

    def quantized_as(self, name: str) -> str | None:
        """The quantized type (``int8``/``fp8``) ``name`` was dequantized from, or None when it is plain float."""
        node = self.source(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        return QUANTIZED_TYPES.get(self.types.get(node.input[0], 0))


def readiness(model: onnx.ModelProto, keep_fp32_ops: tuple[str, ...] = ("LayerNormalization",)) -> dict[str, Any]:
    """The report (see the module docstring) for ``model``; ``keep_fp32_ops``: the float policy's FP32 ops."""
    g = _Graph(model)
    gemms = [_gemm(g, n) for n in g.nodes if n.op_type in GEMM_OPS]
    float_ops: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    fp32_outside: list[str] = []
    for n in g.nodes:
        if n.op_type in NOT_COMPUTE or not n.output:
            continue
        dtype = g.dtype(n.output[0])
        if dtype not in FLOAT_TYPES.values():
            continue
        if n.op_type not in GEMM_OPS:
            float_ops[n.op_type][dtype] += 1
        if dtype in ("fp32", "fp64") and n.op_type not in keep_fp32_ops:
            fp32_outside.append(n.name or n.output[0])
    attention = [_attention(g, n) for n in g.nodes if n.op_type == "Softmax"]
    counts = collections.Counter(e["precision"] for e in gemms)
    return {
        "gemms": gemms,
        "gemm_precisions": dict(sorted(counts.items())),
        "float_ops": {op: dict(sorted(c.items())) for op, c in sorted(float_ops.items())},
        "keep_fp32_ops": list(keep_fp32_ops),
        "fp32_compute_outside_policy": len(fp32_outside),
        "fp32_compute_ops": dict(collections.Counter(_op(g, n) for n in fp32_outside).most_common()),
        "fp32_compute_examples": fp32_outside[:5],
        "attention": attention,
        "attention_patterns": dict(collections.Counter(a["pattern"] or "not fusable" for a in attention)),
    }


def _op(g: _Graph, name: str) -> str:
    return next((n.op_type for n in g.nodes if (n.name or n.output[0]) == name), "?")


def _gemm(g: _Graph, node: onnx.NodeProto) -> dict[str, Any]:
    inputs = [g.quantized_as(i) for i in node.input[:2]]
    out = g.dtype(node.output[0])
    if inputs[0] is not None and inputs[0] == inputs[1]:
        precision, why = inputs[0], f"both inputs from {inputs[0].upper()} DequantizeLinear"
    elif any(inputs):
        precision = out
        why = f"only one input from {next(i for i in inputs if i).upper()} DequantizeLinear: runs in {out.upper()}"
    else:
        precision, why = out, f"float inputs: runs in {out.upper()}"
    weight = any(i in g.initializers or g.source(i) is not None and g.source(i).op_type == "DequantizeLinear"
                 and g.source(i).input[0] in g.initializers for i in node.input[1:2])
    return {"node": node.name, "op": node.op_type, "precision": precision, "why": why,
            "role": "weight" if weight else "activation"}


def _attention(g: _Graph, softmax: onnx.NodeProto) -> dict[str, Any]:
    """One attention block around ``softmax``: which fused pattern it matches, or why none."""
    bmm1 = g.producer.get(softmax.input[0])
    after = g.consumers.get(softmax.output[0], [])
    quantized_p = [c for c in after if c.op_type == "QuantizeLinear"]
    if quantized_p:  # softmax -> Q -> DQ -> BMM2
        dq = [c for q in quantized_p for c in g.consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"]
        after = [c for d in dq for c in g.consumers.get(d.output[0], [])]
    bmm2 = next((c for c in after if c.op_type == "MatMul"), None)
    entry: dict[str, Any] = {"softmax": softmax.name, "bmm1": bmm1.name if bmm1 is not None else None,
                             "bmm2": bmm2.name if bmm2 is not None else None, "pattern": None}
    if bmm1 is None or bmm1.op_type != "MatMul" or bmm2 is None:
        entry["reason"] = "not MatMul -> Softmax -> MatMul"
        return entry
    tokens = g.shapes.get(softmax.input[0], [None])[-1]
    head = g.shapes.get(bmm1.input[0], [None])[-1]
    entry.update(tokens=tokens if isinstance(tokens, int) and tokens else None,
                 head_size=head if isinstance(head, int) and head else None)
    if not _scaled_q(g, bmm1.input[0]):
        entry["reason"] = "no attention scale on Q before the first MatMul (TensorRT requires it there)"
        return entry
    q_types = [g.quantized_as(bmm1.input[0]), g.quantized_as(bmm1.input[1]),
               g.quantized_as(bmm2.input[0]), g.quantized_as(bmm2.input[1])]
    float_types = {g.dtype(t) for t in (bmm1.output[0], softmax.output[0], bmm2.output[0])}
    if not any(q_types):
        if float_types == {"fp16"} or float_types == {"bf16"}:
            entry.update(pattern=float_types.pop(), reason="float attention in FP16/BF16")
        else:
            entry["reason"] = f"float attention in {'/'.join(sorted(float_types)).upper()}: no fused kernel"
        return entry
    q_types.append(_requantized(g, bmm2.output[0]))
    names = ("Q", "K^T", "softmax output", "V", "the output (the next GEMM's input)")
    missing = [names[i] for i, t in enumerate(q_types) if t is None]
    kinds = {t for t in q_types if t}
    if missing:
        entry["reason"] = f"partially quantized: no Q/DQ on {', '.join(missing)}"
        return entry
    if len(kinds) > 1:
        entry["reason"] = f"mixed quantized types {sorted(kinds)}"
        return entry
    fmt = FORMATS[kinds.pop()]
    if fmt.fused_attention_max_tokens is not None and (entry["tokens"] or 0) > fmt.fused_attention_max_tokens:
        entry["reason"] = f"{entry['tokens']} tokens > {fmt.fused_attention_max_tokens}: no fused {fmt.label} attention"
        return entry
    if entry["head_size"] is not None and entry["head_size"] not in fmt.fused_attention_head_sizes:
        entry["reason"] = f"head size {entry['head_size']} is not one fused {fmt.label} attention takes"
        return entry
    entry.update(pattern=fmt.name, reason=f"{fmt.label} Q/DQ on Q, K^T, the softmax output, V and the output")
    return entry


def _requantized(g: _Graph, name: str) -> str | None:
    """The quantized type of the QuantizeLinear that ``name`` reaches through data movement, if any."""
    frontier = [name]
    while frontier:
        for node in g.consumers.get(frontier.pop(), []):
            if node.op_type == "QuantizeLinear":
                return QUANTIZED_TYPES.get(g.types.get(node.output[0], 0))
            if node.op_type in DATA_MOVEMENT:
                frontier.append(node.output[0])
    return None


def _scaled_q(g: _Graph, name: str) -> bool:
    """Whether Q reaches the first MatMul multiplied (or divided) by a constant, through Q/DQ and data movement."""
    node = g.producer.get(name)
    while node is not None and (node.op_type in DATA_MOVEMENT | {"QuantizeLinear", "DequantizeLinear", "Cast"}):
        node = g.producer.get(node.input[0])
    return node is not None and node.op_type in ("Mul", "Div") and any(i in g.initializers for i in node.input[1:])


def failures(report: dict[str, Any]) -> list[str]:
    """The readiness problems that fail a TensorRT precision graph: compute in FP32 outside the policy."""
    count = report["fp32_compute_outside_policy"]
    if not count:
        return []
    ops = ", ".join(f"{n} {op}" for op, n in report["fp32_compute_ops"].items())
    kept = ", ".join(report["keep_fp32_ops"]) or "nothing"
    return [f"{count} compute ops would run FP32 on TensorRT outside the float policy (which keeps {kept}): {ops}; "
            f"e.g. {', '.join(report['fp32_compute_examples'][:3])}"]


def summary_line(report: dict[str, Any]) -> str:
    """One line: GEMM precisions, float ops outside FP16, attention patterns."""
    gemms = ", ".join(f"{n} {p.upper()}" for p, n in report["gemm_precisions"].items()) or "none"
    fp32 = report["fp32_compute_outside_policy"]
    kept = [f"{sum(report['float_ops'].get(op, {}).values())} {op}" for op in report["keep_fp32_ops"]
            if report["float_ops"].get(op, {}).get("fp32")]
    floats = (f"{fp32} compute ops FP32 outside the policy" if fp32 else "float ops FP16") + (
        f" (FP32 by policy: {', '.join(kept)})" if kept else "")
    attention = ", ".join(f"{n} {p.upper() if p != 'not fusable' else p}" for p, n in
                          report["attention_patterns"].items()) or "none"
    return f"GEMMs {gemms}; {floats}; attention blocks: {attention}"
