"""The precision step (FP16 / INT8 / FP8 graphs) and `build-engine` on the tiny ``test`` variant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import ROOT
from onnx import numpy_helper
from PIL import Image

from vit_deploy import runtime
from vit_deploy.artifact import read_manifest, sha256_file
from vit_deploy.errors import ArtifactError, UsageError
from vit_deploy.onnx.graph import topologically_sorted
from vit_deploy.onnx.quantize import attention_matmuls
from vit_deploy.steps.export import ExportOptions, export_artifact
from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

PHOTOS = ROOT / "calibration" / "photos.txt"


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def fp32(tiny_artifacts) -> Path:
    return tiny_artifacts["fp32"]


@pytest.fixture(scope="module")
def fp32_long(tmp_path_factory) -> Path:
    """23 x 23 patches + class token = 530 tokens: above TensorRT's 512-token INT8 attention limit."""
    out = tmp_path_factory.mktemp("art") / "test-184"
    export_artifact(ExportOptions("test", 184, num_classes=5, out_dir=out))
    return out


def photos_folder(tmp_path: Path, n: int = 6) -> Path:
    """n real photographs (from the shipped definition) copied into a folder."""
    from vit_deploy.images.sets import list_sources

    folder = tmp_path / "photos"
    folder.mkdir()
    for path, _ in list_sources(PHOTOS)[:n]:
        shutil.copy(path, folder / path.name)
    return folder


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def test_fp16_graph_keeps_fp32_io_and_layernorm(fp32, tmp_path):
    s = build_precision_artifact(PrecisionOptions("fp16", fp32, tmp_path / "fp16", calib=str(PHOTOS)))
    model = onnx.load(s["model_file"])
    g = model.graph
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in g.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in g.output] == [f32]
    weights = {t.name: t.data_type for t in g.initializer}
    matmul_weights = [i for n in g.node if n.op_type == "MatMul" for i in n.input if i in weights]
    assert matmul_weights and all(weights[w] == f16 for w in matmul_weights)
    # every LayerNormalization computes in FP32: its scale is an FP32 weight
    for ln in (n for n in g.node if n.op_type == "LayerNormalization"):
        assert weights[ln.input[1]] == f32
    m = read_manifest(s["artifact"])
    assert m["precision"] == "fp16" and m["precision_policy"]["keep_fp32_ops"] == ["LayerNormalization"]
    assert m["parent"]["sha256"] == sha256_file(fp32 / "model.onnx")
    v = m["validation"]
    assert v["passed"] and v["reference"] == "pytorch fp32" and "20 images" in v["inputs"]
    assert v["metrics"]["min_cosine"] >= 0.9999


def check_symmetric_qdq(graph: onnx.GraphProto) -> None:
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zero_point = inits[n.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), n.name


def test_int8_graph_is_symmetric_per_channel_on_every_weight_layer(fp32, tmp_path):
    s = build_precision_artifact(PrecisionOptions("int8", fp32, tmp_path / "int8", calib=str(PHOTOS), calib_batch=4))
    g = onnx.load(s["model_file"]).graph
    check_symmetric_qdq(g)
    inits = {t.name: t for t in g.initializer}
    prod = producers(g)
    attention = set(attention_matmuls(onnx.load(str(fp32 / "model.onnx"))))
    for mm in (n for n in g.node if n.op_type in ("MatMul", "Gemm", "Conv")):
        a, b = (prod.get(i) for i in mm.input[:2])
        quantized = a is not None and a.op_type == "DequantizeLinear"
        assert quantized == (mm.name not in attention), mm.name  # attention stays float by default
        if b is not None and b.input[0] in inits and inits[b.input[0]].data_type == onnx.TensorProto.INT8:
            weight = numpy_helper.to_array(inits[b.input[0]])
            scale = numpy_helper.to_array(inits[b.input[1]])
            axis = next(a.i for a in b.attribute if a.name == "axis")
            out_axis = {"MatMul": 1, "Gemm": 0, "Conv": 0}[mm.op_type]  # [K, N]; Gemm transB [N, K]; [O, I, h, w]
            assert axis == out_axis and scale.shape == (weight.shape[out_axis],), mm.name
    # Q/DQ sits on GEMM inputs only: an output Q/DQ pair would feed float ops (Add, GELU) and
    # only add rounding error, since TensorRT cannot keep that tensor in INT8
    gemm_outputs = {o for n in g.node if n.op_type in ("MatMul", "Gemm", "Conv") for o in n.output}
    requantized = [n.name for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in gemm_outputs]
    assert not requantized, requantized
    m = read_manifest(s["artifact"])
    policy = m["precision_policy"]
    assert set(policy["excluded_nodes"]) == attention and policy["float_layers"] == []
    assert policy["quantized_weight_layers"] == 2 * 4 + 2  # 2 blocks x (qkv, proj, fc1, fc2) + patch embedding + head
    assert policy["format"] == "int8" and policy["scale_dtype"] == "float16" and policy["opset"] == 19
    assert m["calibration"]["images"] == 20 and m["validation"]["passed"]
    assert m["validation"]["metrics"]["mean_cosine"] >= 0.995


def test_int8_attention_quantized_only_on_request_and_only_up_to_512_tokens(fp32, fp32_long):
    from vit_deploy.onnx.formats import FP8, INT8
    from vit_deploy.onnx.quantize import plan_quantization

    short = onnx.load(str(fp32 / "model.onnx"))
    long = onnx.load(str(fp32_long / "model.onnx"))
    assert len(attention_matmuls(long)) == 2 * 2  # two per block
    assert not plan_quantization(short, INT8, "tensorrt", 17)["attention_quantized"]
    assert plan_quantization(short, INT8, "tensorrt", 17, 16, quantize_attention=True)["attention_quantized"]
    assert not plan_quantization(short, INT8, "cpu", 17, quantize_attention=True)["attention_quantized"]
    skipped = plan_quantization(long, INT8, "tensorrt", 530, 16, quantize_attention=True)
    assert not skipped["attention_quantized"] and "530 tokens > 512" in skipped["attention_note"]
    assert plan_quantization(long, FP8, "tensorrt", 530, 16, quantize_attention=True)["attention_quantized"]
    plan = plan_quantization(short, INT8, "tensorrt", 17, quantize_attention=True)
    reads = {node for node, _ in plan["inputs"]}
    assert set(attention_matmuls(short)) <= reads


def test_calibration_cache_reused_and_never_stale(fp32, tmp_path):
    calib = photos_folder(tmp_path)

    def build(name, **kw):
        artifact = kw.pop("artifact", fp32)
        opts = PrecisionOptions("int8", artifact, tmp_path / name, calib=str(calib), **({"calib_batch": 2} | kw))
        return read_manifest(build_precision_artifact(opts)["artifact"])

    first, again = build("a"), build("b")
    assert first["precision_policy"]["calibration_cache"]["reused"] is False
    assert again["precision_policy"]["calibration_cache"]["reused"] is True
    assert first["files"][0]["sha256"] == again["files"][0]["sha256"]  # same ranges, same graph
    # the statistics do not depend on the batch size, so another batch reuses them
    assert build("b3", calib_batch=3)["precision_policy"]["calibration_cache"]["reused"] is True
    # a corrupt cache file is a miss, recalibrated and rewritten, not a crash
    cache = Path(first["precision_policy"]["calibration_cache"]["path"])
    cache.write_text("{not json")
    rebuilt = build("e")
    assert rebuilt["precision_policy"]["calibration_cache"]["reused"] is False
    assert rebuilt["files"][0]["sha256"] == first["files"][0]["sha256"]
    assert json.loads(cache.read_text())["version"] >= 2
    # another data set (one image fewer) must not reuse the ranges
    sorted(calib.iterdir())[0].unlink()
    assert build("c")["precision_policy"]["calibration_cache"]["reused"] is False
    # another model (different weights) must not reuse them either
    other = tmp_path / "other-model"
    export_artifact(ExportOptions("test", 32, num_classes=5, out_dir=other, seed=1))
    assert build("d", artifact=other)["precision_policy"]["calibration_cache"]["reused"] is False


def test_bad_calibration_files_are_skipped_and_counted(fp32, tmp_path):
    calib = photos_folder(tmp_path, n=4)
    (calib / "notes.jpg").write_text("not an image")
    png = calib / sorted(p.name for p in calib.iterdir() if p.suffix == ".png")[0]
    (calib / "truncated.png").write_bytes(png.read_bytes()[:200])
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(calib / "sixteen_bit.png")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(calib / "rgba.png")
    s = build_precision_artifact(PrecisionOptions("int8", fp32, tmp_path / "int8", calib=str(calib), calib_batch=2))
    c = read_manifest(s["artifact"])["calibration"]
    assert (c["images"], c["skipped"]) == (6, 2)
    assert any("notes.jpg" in f for f in c["skipped_files"]) and any("truncated.png" in f for f in c["skipped_files"])


def test_definition_file_with_wrong_checksum_skips_that_image(fp32, tmp_path):
    lines = [ln for ln in PHOTOS.read_text().splitlines() if not ln.startswith("#")][:5]
    lines[0] = "0" * 64 + lines[0][64:]
    definition = tmp_path / "set.txt"
    definition.write_text("\n".join(lines) + "\n")
    opts = PrecisionOptions("int8", fp32, tmp_path / "int8", calib=str(definition), calib_batch=2)
    s = build_precision_artifact(opts)
    c = read_manifest(s["artifact"])["calibration"]
    assert (c["images"], c["skipped"]) == (4, 1) and "differs from the definition" in c["skipped_files"][0]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "no image files found"),
        ("all-bad", "only 0 of 2 images are usable"),
        ("few", "fewer than the batch size 8"),
        ("missing", "does not exist"),
    ],
)
def test_calibration_set_errors(fp32, tmp_path, setup, message):
    calib = tmp_path / "calib"
    if setup != "missing":
        calib.mkdir()
    if setup == "all-bad":
        (calib / "a.png").write_text("no")
        (calib / "b.jpg").write_bytes(b"\x89PNG\r\n")
    if setup == "few":
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(calib / "one.png")
    with pytest.raises(UsageError, match=message):
        build_precision_artifact(PrecisionOptions("int8", fp32, tmp_path / "int8", calib=str(calib), calib_batch=8))
    assert not (tmp_path / "int8").exists()


def test_changed_parent_file_is_refused(fp32, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fp32, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="was changed after it was made"):
        build_precision_artifact(PrecisionOptions("fp16", copy, tmp_path / "fp16"))


def test_precision_graph_is_not_a_valid_parent(fp32, tmp_path):
    s = build_precision_artifact(PrecisionOptions("fp16", fp32, tmp_path / "fp16"))
    with pytest.raises(UsageError, match="made from an FP32 ONNX export"):
        build_precision_artifact(PrecisionOptions("int8", Path(s["artifact"]), tmp_path / "x", calib=str(PHOTOS)))


def test_cli_build_engine_exit_codes(fp32, tmp_path, run_cli, monkeypatch):
    out = tmp_path / "fp16"
    code, stdout, err = run_cli("build-engine", str(fp32), "--fp16", "--out", str(out), "--json")
    assert code == 3, err
    summary = json.loads(stdout)
    assert summary["validation"]["passed"] and summary["engine"]["built"] is False
    assert "engine not built" in err and f"build-engine {out}" in err
    # a ready precision graph goes straight to the engine step (the old --artifact spelling still works)
    code, _, err = run_cli("build-engine", "--artifact", str(out))
    assert code == 3 and "validated fp16 graph" in err
    code, _, err = run_cli("build-engine", str(fp32), "--int8", "--out", str(tmp_path / "x"))
    assert code == 1 and "--int8 needs calibration images" in err
    code, _, err = run_cli("build-engine", str(fp32), "--int8", "--calib", str(PHOTOS),
                           "--calib-method", "kl")
    assert code == 1 and "'kl' is not one of 'mse', 'entropy', 'percentile', 'minmax'" in err
    # one precision per build, said in one line before any work
    code, _, err = run_cli("build-engine", str(fp32), "--fp16", "--int8", "--calib", str(PHOTOS))
    assert code == 1 and "--fp16 --int8: one build makes one precision graph" in err and "\n" not in err.strip()
    code, _, err = run_cli("build-engine", str(fp32), "--fp8", "--target", "cpu", "--calib", str(PHOTOS))
    assert code == 1 and "--target cpu makes INT8 graphs only" in err
    code, _, err = run_cli("build-engine", str(fp32), "--fp8", "--calib", str(PHOTOS), "--calib-method", "entropy")
    assert code == 1 and "--calib-method entropy does not apply to --fp8" in err
    assert not (tmp_path / "x").exists() and not (fp32.parent / f"{fp32.name}-fp8").exists()


def test_fp8_graph_end_to_end_on_onnx_runtime(fp32, tmp_path):
    """``--fp8``: calibrated, FP8 E4M3 Q/DQ on every weight layer, FP16 float parts, validated on ONNX Runtime
    against the PyTorch model, with the readiness report in the manifest; its cache is its own, not INT8's."""
    s = build_precision_artifact(PrecisionOptions("fp8", fp32, tmp_path / "fp8", calib=str(PHOTOS), calib_batch=4))
    m = read_manifest(s["artifact"])
    assert m["precision"] == "fp8" and m["validation"]["passed"], m["validation"]["failures"]
    assert m["validation"]["metrics"]["mean_cosine"] >= 0.997
    policy = m["precision_policy"]
    assert policy["format"] == "fp8" and policy["calibration_method"] == "minmax"
    # every weight layer but the patch embedding, which reads the image (E4M3 loses 7% at its top)
    assert policy["quantized_weight_layers"] == 9 and policy["float_by_format"] == ["patch_embed"]
    assert policy["smoothquant"]["enabled"] is False
    assert "-fp8-minmax-" in policy["calibration_cache"]["path"]
    g = onnx.load(s["model_file"]).graph
    fp8 = [t for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN]
    assert len([t for t in fp8 if t.name.endswith("_quantized")]) == 9  # the weights
    readiness = m["tensorrt_readiness"]
    assert readiness["gemm_precisions"] == {"fp16": 5, "fp8": 9} and readiness["fp32_compute_outside_policy"] == 0
    assert readiness["gated"] is True
    with runtime.open(s["artifact"]) as runner:  # it runs like any graph, at any batch
        assert runner.infer(np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 5)


def test_a_tensorrt_graph_with_fp32_compute_fails_validation(fp32, tmp_path, monkeypatch):
    """The readiness gate: if the typing pass left float ops in FP32 (here: it does nothing), the graph is
    written, fails validation naming the ops, and says it would run FP32 on the GPU."""
    from vit_deploy.onnx import fp16

    monkeypatch.setattr(fp16, "convert_fp16", lambda model, keep_fp32_ops=(): model)
    s = build_precision_artifact(PrecisionOptions("int8", fp32, tmp_path / "int8", calib=str(PHOTOS), calib_batch=4))
    v = s["validation"]
    assert not v["passed"] and any("would run FP32 on TensorRT" in f and "MatMul" in f for f in v["failures"])


def test_cli_validation_failure_exits_2(fp32, tmp_path, run_cli, monkeypatch):
    from vit_deploy import specs

    monkeypatch.setitem(specs.TOLERANCES, "fp16", specs.Tolerance(min_cosine=1.0000001))
    out = tmp_path / "fp16"
    code, _, err = run_cli("build-engine", "--artifact", str(fp32), "--fp16", "--out", str(out))
    assert code == 2 and "validation failed: cosine" in err and str(out) in err
    assert read_manifest(out)["validation"]["passed"] is False


def test_cli_defaults_to_the_newest_export(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("export", "--model", "test", "--res", "32")[0] == 0
    assert run_cli("export", "--model", "test", "--res", "48")[0] == 0
    code, _, err = run_cli("build-engine", "--fp16")
    assert code == 3 and str(tmp_path / "artifacts" / "test-48-fp16") in err


def test_cli_without_any_export(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("build-engine", "--fp16")
    assert code == 1 and "run `vit-deploy export" in err


def test_topological_sort_repairs_appended_nodes():
    from onnx import helper

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    nodes = [helper.make_node("Neg", ["t"], ["y"], name="second"), helper.make_node("Abs", ["x"], ["t"], name="first")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    fixed = topologically_sorted(model)
    onnx.checker.check_model(fixed)
    assert [n.name for n in fixed.graph.node] == ["first", "second"]


def test_cpu_target_int8_keeps_attention_float_at_any_length(fp32, tmp_path, run_cli):
    fp32 = Path(shutil.copytree(fp32, tmp_path / fp32.name))  # the default output lands beside it
    code, out, err = run_cli("build-engine", "--artifact", str(fp32), "--int8", "--target", "cpu",
                             "--calib", str(PHOTOS), "--calib-batch", "4", "--json")
    assert code == 0, err  # a CPU graph is finished: no TensorRT step, no exit 3
    summary = json.loads(out)
    out_dir = Path(summary["artifact"])
    assert out_dir.name == f"{fp32.name}-int8-cpu"
    manifest = read_manifest(out_dir)
    policy = manifest["precision_policy"]
    assert manifest["runtime"] == {"backend": "openvino"}  # the backend runtime.open picks by default
    with runtime.open(out_dir) as runner:
        assert runner.backend == "openvino"
    attention = set(attention_matmuls(onnx.load(str(fp32 / "model.onnx"))))
    assert policy["target"] == "cpu" and set(policy["excluded_nodes"]) == attention and attention  # 17 tokens
    g = onnx.load(str(out_dir / "model.int8.onnx")).graph
    prod = producers(g)
    for mm in (n for n in g.node if n.op_type == "MatMul" and n.name in attention):
        assert not any(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in mm.input)
    code, _, err = run_cli("build-engine", "--artifact", str(fp32), "--fp16", "--target", "cpu",
                           "--out", str(tmp_path / "x"))
    assert code == 1 and "--target cpu makes INT8 graphs only" in err


def test_missing_checkpoint_falls_back_to_the_fp32_graph_and_says_so(fp32, tmp_path):
    from vit_deploy.artifact import write_manifest

    copy = Path(shutil.copytree(fp32, tmp_path / "a"))
    manifest = read_manifest(copy)
    manifest["checkpoint"] = {"pretrained": True, "source": str(tmp_path / "gone.safetensors"), "sha256": "0" * 64}
    write_manifest(copy, manifest)
    s = build_precision_artifact(PrecisionOptions("fp16", copy, tmp_path / "fp16"))
    v = s["validation"]
    assert v["reference"].startswith(f"fp32 ONNX graph {copy / 'model.onnx'}") and "unavailable" in v["reference"]
    assert v["passed"] and v["metrics"]["min_cosine"] >= 0.9999
