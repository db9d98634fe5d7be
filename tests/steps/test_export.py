"""The export step and its CLI on the tiny ``test`` variant: graph shape, manifest, failures."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vit_deploy.artifact import Artifact, read_manifest, sha256_file
from vit_deploy.images.synthetic import random_images
from vit_deploy.model.factory import build_model
from vit_deploy.specs import Preprocessing
from vit_deploy.steps import export as export_step
from vit_deploy.steps.export import ExportOptions, export_artifact


def export_tiny(out: Path, **kw) -> dict:
    return export_artifact(ExportOptions("test", kw.pop("img_size", 32), num_classes=kw.pop("num_classes", 5),
                                         out_dir=out, **kw))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    return export_tiny(tmp_path_factory.mktemp("export") / "tiny")


def ort_run(path: Path, images: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]


def test_graph_has_named_dynamic_batch_and_runs_at_an_untraced_batch(tiny):
    graph = onnx.load(tiny["model_file"])
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert (inp.name, out.name) == ("images", "logits")
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 32, 32]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 5]
    # batch 5 is neither the traced batch (2) nor a validation batch: compare with the PyTorch model
    model, _ = build_model("test", 32, 5)
    images = random_images(5, 32, model.cfg.preprocessing, seed=123)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(ort_run(Path(tiny["model_file"]), images), expected, rtol=1e-5, atol=1e-5)


def test_graph_ops_layernorm_single_op_and_fusable_attention(tiny):
    graph = onnx.load(tiny["model_file"])
    ops = collections.Counter(n.op_type for n in graph.graph.node)
    depth = 2
    assert ops["LayerNormalization"] == 2 * depth + 1
    assert "ReduceMean" not in ops
    # onnxsim must not fold the blocks' MatMul+Add into Reshape-Gemm-Reshape; only the head
    # (a 2-D matmul on the class token) is a Gemm, straight from the exporter
    assert ops["MatMul"] == 6 * depth and ops["Gemm"] == 1
    assert ops["Softmax"] == depth
    # each Softmax reads a MatMul whose first input is Q already multiplied by the scale,
    # and feeds a MatMul (the TensorRT fused-attention form)
    producer = {o: n for n in graph.graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in graph.graph.node:
        for i in n.input:
            consumers[i].append(n)
    for softmax in (n for n in graph.graph.node if n.op_type == "Softmax"):
        qk = producer[softmax.input[0]]
        assert qk.op_type == "MatMul"
        assert producer[qk.input[0]].op_type == "Mul"
        assert [c.op_type for c in consumers[softmax.output[0]]] == ["MatMul"]
    assert graph.opset_import[0].version == 17


def test_manifest_describes_the_artifact(tiny):
    out = Path(tiny["artifact"])
    m = read_manifest(out)
    Artifact(Path(out), m).verify()
    assert m["schema_version"] == 1 and (m["kind"], m["precision"]) == ("onnx", "fp32")
    assert {k: m["model"][k] for k in ("variant", "img_size", "patch_size", "num_classes")} == {
        "variant": "test", "img_size": 32, "patch_size": 8, "num_classes": 5}
    assert Preprocessing.from_dict(m["preprocessing"]).mean == (0.5, 0.5, 0.5)
    assert m["io"]["inputs"] == [{"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]
    assert m["io"]["outputs"] == [{"name": "logits", "shape": ["batch", 5], "dtype": "float32"}]
    assert m["files"][0]["sha256"] == sha256_file(out / "model.onnx")
    assert m["onnx"]["opset"] == 17 and m["onnx"]["simplified"] is True
    assert m["onnx"]["nodes"] < m["onnx"]["nodes_exported"]
    assert m["checkpoint"] == {"pretrained": False, "init": "random", "seed": 0}
    assert {"torch", "onnx", "onnxruntime", "onnxsim", "python"} <= set(m["versions"])
    v = m["validation"]
    assert v["batch_sizes"] == [1, 3, 8]
    assert v["passed"] and v["onnx_checker"] == "passed"
    assert v["metrics"]["rel_l2"] <= 1e-5 and v["metrics"]["max_abs"] <= 1e-4
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_cli_export_text_and_json(tmp_path, run_cli):
    code, out, err = run_cli("export", "--model", "test", "--res", "32", "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "NOT PRETRAINED" in err and "[1/6]" in err
    assert "parity" in out and "PASS" in out and "model.onnx" in out
    code, out, err = run_cli("export", "--model", "test", "--res", "32", "--out", str(tmp_path / "b"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["validation"]["passed"] and summary["manifest"]["kind"] == "onnx"


def test_opset_20_and_no_simplify(tmp_path):
    s = export_tiny(tmp_path / "a", opset=20, simplify=False)
    m = s["manifest"]
    assert m["onnx"]["opset"] == 20 and onnx.load(s["model_file"]).opset_import[0].version == 20
    assert m["onnx"]["simplified"] is False and m["onnx"]["nodes"] == m["onnx"]["nodes_exported"]
    assert s["validation"]["passed"]


def test_simplifier_failure_keeps_the_unsimplified_graph(tmp_path, monkeypatch):
    import onnxsim

    def broken(*a, **k):
        raise RuntimeError("boom from onnxsim")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    s = export_tiny(tmp_path / "a")
    assert s["simplified"] is False and "boom from onnxsim" in s["manifest"]["onnx"]["simplify_note"]
    assert s["validation"]["passed"]


def test_external_data_above_the_size_limit(tmp_path, monkeypatch):
    from vit_deploy.onnx import graph

    monkeypatch.setattr(graph, "PROTOBUF_LIMIT", 1)  # pretend the tiny model is an h14
    s = export_tiny(tmp_path / "a")
    out = Path(s["artifact"])
    assert s["files"] == ["model.onnx", "model.onnx.data"]
    assert [f["role"] for f in s["manifest"]["files"]] == ["model", "external_data"]
    assert (out / "model.onnx").stat().st_size < (out / "model.onnx.data").stat().st_size
    Artifact(Path(out), read_manifest(out)).verify()
    assert s["validation"]["passed"]


def test_validation_failure_exits_2_and_keeps_the_artifact(tmp_path, run_cli, monkeypatch):
    from vit_deploy import specs

    monkeypatch.setitem(specs.TOLERANCES, "fp32", specs.Tolerance(max_rel_l2=0.0, max_abs=0.0))
    out = tmp_path / "a"
    code, _, err = run_cli("export", "--model", "test", "--res", "32", "--out", str(out))
    assert code == 2
    assert "validation failed" in err and str(out) in err
    assert read_manifest(out)["validation"]["passed"] is False
    assert (out / "model.onnx").is_file()


def test_existing_artifact_is_not_overwritten_without_force(tmp_path, run_cli, tiny):
    out = tmp_path / "a"
    assert run_cli("export", "--model", "test", "--res", "32", "--out", str(out))[0] == 0
    before = sha256_file(out / "manifest.json")
    code, _, err = run_cli("export", "--model", "test", "--res", "32", "--out", str(out), "--seed", "1")
    assert code == 1 and "--force" in err and len(err.strip().splitlines()) == 1
    assert sha256_file(out / "manifest.json") == before
    code, _, err = run_cli("export", "--model", "test", "--res", "32", "--out", str(out), "--seed", "1", "--force")
    assert code == 0, err
    assert read_manifest(out)["checkpoint"]["seed"] == 1


def test_unwritable_output_folder(tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli("export", "--model", "test", "--res", "32", "--out", str(blocker / "sub" / "out"))
    assert code == 1 and "cannot write to" in err and "Traceback" not in err


@pytest.mark.parametrize("with_old_artifact", [False, True])
def test_interrupted_export_leaves_nothing_that_looks_finished(tmp_path, run_cli, monkeypatch, with_old_artifact):
    out = tmp_path / "a"
    if with_old_artifact:
        export_tiny(out)
        old = sha256_file(out / "model.onnx")

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("vit_deploy.steps.validate.validate", interrupt)
    args = ["export", "--model", "test", "--res", "32", "--out", str(out), "--force"]
    code, _, err = run_cli(*args)
    assert code == 130 and "interrupted" in err
    assert [p.name for p in tmp_path.iterdir()] == (["a"] if with_old_artifact else [])
    if with_old_artifact:  # the good artifact it was going to replace is untouched
        assert sha256_file(out / "model.onnx") == old
        Artifact(Path(out), read_manifest(out)).verify()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "b99"], "unknown model 'b99'; choose one of: ti16, s16, b16"),
        (["--model", "b16", "--res", "225"], "not a positive multiple of b16's patch size 16"),
        (["--model", "test", "--res", "32", "--opset", "16"], "--opset 16 is not supported"),
        (["--model", "test", "--res", "32", "--weights", "/nonexistent/w.pth"], "/nonexistent/w.pth"),
        (["--res", "32"], "Missing option '--model'"),
    ],
)
def test_user_errors_are_one_line_exit_1(args, message, run_cli, tmp_path):
    code, out, err = run_cli("export", *args, "--out", str(tmp_path / "x"))
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_exporter_default_out_dir():
    assert export_step.default_out_dir("b16", 384) == Path("artifacts/b16-384")
