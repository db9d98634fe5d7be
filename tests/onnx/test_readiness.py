"""The TensorRT-readiness report, from graphs alone: today's (before issue 18) INT8 graph with FP32 float
parts is flagged op by op, the FP16-float INT8 and FP8 graphs pass, attention patterns are recognised
and their misses named, and graphs written by hand in other tools' shapes (DQ behind a Transpose) read
the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vit_deploy.onnx import quantize as quant
from vit_deploy.onnx.formats import FP8, INT8
from vit_deploy.onnx.readiness import failures, readiness, summary_line

RNG = np.random.default_rng(0)
BLOCKS = 2  # the ``test`` variant: 2 blocks, 2 heads of 16, 17 tokens at 32 px
WEIGHT_GEMMS = 4 * BLOCKS + 2  # qkv, proj, fc1, fc2 per block, the patch-embedding Conv and the head Gemm


@pytest.fixture(scope="module")
def fp32(tiny_artifacts) -> Path:
    return tiny_artifacts["fp32"] / "model.onnx"


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return RNG.uniform(-1, 1, size=(8, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def ranges(fp32, images):
    model = onnx.load(str(fp32))
    out = {}
    for fmt in (INT8, FP8):
        plan = quant.plan_quantization(model, fmt, "tensorrt", 17, 16, quantize_attention=True)
        out[fmt.name] = quant.calibrate_ranges(model, plan, images, 4, fmt.methods[0], True)
    return out


def graph(fp32, ranges, fmt, attention=False, float_layers=(), finished=True):
    model = onnx.load(str(fp32))
    plan = quant.plan_quantization(model, fmt, "tensorrt", 17, 16, attention, float_layers)
    return (quant.finished_graph if finished else quant.quantized_graph)(model, plan, ranges[fmt.name])


def test_todays_fp32_float_int8_graph_fails_and_names_its_fp32_ops(fp32, ranges):
    old = graph(fp32, ranges, INT8, finished=False)  # the INT8 graph as it was written before: FP32 floats
    report = readiness(old)
    assert report["gemm_precisions"] == {"fp32": 2 * BLOCKS, "int8": WEIGHT_GEMMS}
    ops = report["fp32_compute_ops"]
    # every op whose output is FP32 (the count): the INT8 GEMMs write FP32, the attention MatMuls
    # compute in it, and so do the biases and residuals, GELU and the softmax
    assert ops["MatMul"] == 6 * BLOCKS and ops["Conv"] == ops["Gemm"] == 1
    assert {"Add", "Mul", "Softmax", "Erf", "Div"} <= set(ops)
    assert "LayerNormalization" not in ops  # the policy keeps it FP32
    assert report["fp32_compute_outside_policy"] == sum(ops.values())
    message = failures(report)
    assert len(message) == 1 and f"{report['fp32_compute_outside_policy']} compute ops would run FP32" in message[0]
    assert all(a["pattern"] is None and "FP32" in a["reason"] for a in report["attention"])


def quantized_gemms(fmt) -> int:
    """Weight GEMMs the format quantizes: FP8 leaves the patch embedding (it reads the image) in FP16."""
    return WEIGHT_GEMMS - (not fmt.quantizes_image)


@pytest.mark.parametrize("fmt", [INT8, FP8], ids=["int8", "fp8"])
def test_fp16_float_graphs_pass_with_fp16_attention(fp32, ranges, fmt):
    report = readiness(graph(fp32, ranges, fmt))
    assert failures(report) == [] and report["fp32_compute_outside_policy"] == 0
    assert report["gemm_precisions"] == {"fp16": WEIGHT_GEMMS + 2 * BLOCKS - quantized_gemms(fmt),
                                         fmt.name: quantized_gemms(fmt)}
    assert set(report["float_ops"]["LayerNormalization"]) == {"fp32"}
    assert all(set(types) == {"fp16"} for op, types in report["float_ops"].items() if op != "LayerNormalization")
    assert report["attention_patterns"] == {"fp16": BLOCKS}
    fp16 = WEIGHT_GEMMS + 2 * BLOCKS - quantized_gemms(fmt)
    assert summary_line(report).startswith(f"GEMMs {fp16} FP16, {quantized_gemms(fmt)} {fmt.label}; float ops FP16")


@pytest.mark.parametrize("fmt", [INT8, FP8], ids=["int8", "fp8"])
def test_quantized_attention_matches_the_fused_pattern(fp32, ranges, fmt):
    report = readiness(graph(fp32, ranges, fmt, attention=True))
    assert report["gemm_precisions"].get(fmt.name) == quantized_gemms(fmt) + 2 * BLOCKS
    assert report["attention_patterns"] == {fmt.name: BLOCKS}
    assert all(a["tokens"] == 17 and a["head_size"] == 16 for a in report["attention"])
    # proj left in float: the attention output is no longer quantized, and the pattern says so
    proj = next(n.name for n in onnx.load(str(fp32)).graph.node if n.name.endswith("blocks.0/attn/proj/MatMul"))
    report = readiness(graph(fp32, ranges, fmt, attention=True, float_layers=[proj]))
    reasons = sorted(a["reason"] for a in report["attention"])
    assert "no Q/DQ on the output" in reasons[-1] and report["attention_patterns"] == {fmt.name: 1, "not fusable": 1}


def test_the_fp32_export_and_the_fp16_graph(tiny_artifacts):
    fp32 = readiness(onnx.load(str(tiny_artifacts["fp32"] / "model.onnx")))
    assert fp32["gemm_precisions"] == {"fp32": WEIGHT_GEMMS + 2 * BLOCKS} and failures(fp32)
    fp16 = readiness(onnx.load(str(tiny_artifacts["fp16"] / "model.fp16.onnx")))
    assert fp16["gemm_precisions"] == {"fp16": WEIGHT_GEMMS + 2 * BLOCKS} and failures(fp16) == []
    assert fp16["attention_patterns"] == {"fp16": BLOCKS}


def attention_graph(q_scale: bool, dq_before_transpose: bool) -> onnx.ModelProto:
    """One attention head written by hand as another tool might: FP16, INT8 Q/DQ on Q, K, P and V and after
    the second MatMul, K's DequantizeLinear before its Transpose (TensorRT moves Q/DQ across it)."""
    s = numpy_helper.from_array(np.array(0.05, np.float16), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    half = numpy_helper.from_array(np.array(0.25, np.float16), "half")
    nodes, value = [], {}

    def qdq(x: str, name: str) -> str:
        nodes.extend([helper.make_node("QuantizeLinear", [x, "s", "z"], [f"{name}_q"]),
                      helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [f"{name}_dq"])])
        return f"{name}_dq"

    q = "q"
    if q_scale:
        nodes.append(helper.make_node("Mul", ["q", "half"], ["q_scaled"]))
        q = "q_scaled"
    q = qdq(q, "qq")
    if dq_before_transpose:
        k = qdq("k", "kq")
        nodes.append(helper.make_node("Transpose", [k], ["kt"], perm=[0, 2, 1]))
        k = "kt"
    else:
        nodes.append(helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]))
        k = qdq("kt", "kq")
    nodes.append(helper.make_node("MatMul", [q, k], ["scores"], name="bmm1"))
    nodes.append(helper.make_node("Softmax", ["scores"], ["p"], axis=-1, name="softmax"))
    nodes.append(helper.make_node("MatMul", [qdq("p", "pq"), qdq("v", "vq")], ["o"], name="bmm2"))
    nodes.append(helper.make_node("QuantizeLinear", ["o", "s", "z"], ["o_q"]))
    nodes.append(helper.make_node("DequantizeLinear", ["o_q", "s", "z"], ["out"]))
    value = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT16, [1, 17, 64]) for n in ("q", "k", "v")}
    g = helper.make_graph(nodes, "attention", list(value.values()),
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 17, 64])], [s, z, half])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def test_a_hand_written_attention_in_another_tools_shape():
    report = readiness(attention_graph(q_scale=True, dq_before_transpose=True))
    assert report["gemm_precisions"] == {"int8": 2}
    (block,) = report["attention"]
    assert block["pattern"] == "int8" and block["tokens"] == 17 and block["head_size"] == 64
    (block,) = readiness(attention_graph(q_scale=False, dq_before_transpose=False))["attention"]
    assert block["pattern"] is None and "no attention scale on Q" in block["reason"]
