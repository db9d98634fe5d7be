"""`vit-deploy compare`, `inspect` and `predict` on the tiny ``test`` variant (CPU, ONNX Runtime)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import ROOT

from vit_deploy.artifact import Artifact, read_manifest, write_manifest
from vit_deploy.images.decode import load_batch
from vit_deploy.parity.metrics import topk_agreement
from vit_deploy.parity.reference import reference_model
from vit_deploy.predict import imagenet_labels
from vit_deploy.steps.export import ExportOptions, export_artifact

PHOTOS = ROOT / "calibration" / "photos.txt"
DIGITS = ROOT / "assets" / "digits"


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts) -> dict[str, Path]:
    return tiny_artifacts


def test_topk_agreement_analytic():
    ref = np.array([[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]], dtype=np.float32)
    same_set = np.array([[1, 2, 3, 4, 5, 0], [0, 1, 2, 3, 4, 5]], dtype=np.float32)  # top-5 order differs
    swapped = np.array([[5, 4, 3, 2, 0, 1], [0, 1, 2, 3, 4, 5]], dtype=np.float32)  # class 5 enters, 4 leaves
    assert topk_agreement(ref, same_set, 5) == 1.0
    assert topk_agreement(ref, swapped, 5) == 0.5
    assert topk_agreement(ref[:, :3], ref[:, :3], 5) == 1.0  # fewer classes than k


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_compare_passes_on_real_photographs(artifacts, run_cli, precision):
    code, out, err = run_cli("compare", str(artifacts[precision]), "--images", str(PHOTOS), "--batch-sizes", "1,3,8",
                             "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["passed"] and s["precision"] == precision and [r["batch"] for r in s["rows"]] == [1, 3, 8]
    assert s["reference"].startswith("pytorch fp32") and "20 images" in s["inputs"]
    metrics = s["rows"][0]["metrics"]
    assert set(metrics) >= {"max_abs", "mean_abs", "rel_l2", "min_cosine", "top1_agreement", "top5_agreement"}
    # batch size must not change the result beyond float noise
    rel = [r["metrics"]["rel_l2"] for r in s["rows"]]
    assert max(rel) - min(rel) < 1e-4
    if precision == "fp32":
        assert metrics["rel_l2"] <= 1e-5 and s["tolerance"] == {"max_rel_l2": 1e-5, "max_abs": 1e-4}


def test_compare_metrics_are_those_of_an_independent_computation(artifacts, run_cli):
    """The table's numbers recomputed here from the PyTorch model and ONNX Runtime directly."""
    import onnxruntime as ort

    code, out, _ = run_cli("compare", str(artifacts["int8"]), "--images", str(PHOTOS), "--batch-sizes", "4", "--json")
    row = json.loads(out)["rows"][0]["metrics"]
    manifest = read_manifest(artifacts["int8"])
    from vit_deploy.images.sets import list_sources
    from vit_deploy.specs import Preprocessing

    files = [p for p, _ in list_sources(PHOTOS)]
    x = load_batch(files, Preprocessing.from_dict(manifest["preprocessing"]))
    with torch.no_grad():
        ref = reference_model(Artifact(Path('.'), manifest))(torch.from_numpy(x)).double()
    sess = ort.InferenceSession(str(artifacts["int8"] / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    cand = torch.from_numpy(np.concatenate([sess.run(None, {"images": x[i:i + 4]})[0] for i in range(0, 20, 4)]))
    cand = cand.double()
    assert row["rel_l2"] == pytest.approx(float((cand - ref).norm() / ref.norm()), rel=1e-6)
    assert row["min_cosine"] == pytest.approx(float(torch.cosine_similarity(ref, cand, dim=1).min()), abs=1e-9)
    assert row["max_abs"] == pytest.approx(float((cand - ref).abs().max()), rel=1e-6)


@pytest.mark.skipif(__import__("importlib").util.find_spec("openvino") is None, reason="openvino not installed")
def test_compare_the_fast_cpu_path(artifacts, run_cli):
    code, out, err = run_cli("compare", str(artifacts["int8"]), "--backend", "openvino", "--images", str(PHOTOS),
                             "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["passed"] and s["candidate"]["backend"] == "openvino"


def test_compare_fails_with_exit_2_outside_the_bounds(artifacts, run_cli, monkeypatch):
    from vit_deploy import specs

    monkeypatch.setitem(specs.TOLERANCES, "int8", specs.Tolerance(min_cosine=0.9999999))
    code, out, err = run_cli("compare", str(artifacts["int8"]))
    assert code == 2 and "FAIL: cosine" in out and "outside the int8 bounds" in err


def test_compare_against_another_artifact(artifacts, run_cli, tmp_path):
    code, out, err = run_cli("compare", str(artifacts["fp16"]), "--reference", str(artifacts["fp32"]), "--json")
    assert code == 0, err
    assert json.loads(out)["reference"].startswith(f"fp32 onnx artifact {artifacts['fp32']}")
    other = tmp_path / "other"
    export_artifact(ExportOptions("test", 48, num_classes=5, out_dir=other))
    code, _, err = run_cli("compare", str(artifacts["fp16"]), "--reference", str(other))
    assert code == 1 and "different model" in err


def test_compare_without_a_reference_model_points_to_one(artifacts, run_cli, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(artifacts["fp16"], copy)
    manifest = read_manifest(copy)
    manifest["checkpoint"] = {"pretrained": True, "source": str(tmp_path / "gone.pth"), "sha256": "0" * 64}
    write_manifest(copy, manifest)
    code, _, err = run_cli("compare", str(copy))
    assert code == 1 and "no PyTorch reference" in err and f"--reference {artifacts['fp32']}" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--batch-sizes", "1,x"], "not a comma-separated list"),
    (["--batch-sizes", "0"], "give batch sizes from 1 to 4096"),
    (["--images", "/nonexistent/folder"], "does not exist"),
])
def test_compare_bad_options(artifacts, run_cli, args, message):
    code, _, err = run_cli("compare", str(artifacts["fp32"]), *args)
    assert code == 1 and message in err, err


def test_compare_on_the_trained_model_reports_accuracy(run_cli, tmp_path):
    out = tmp_path / "mini"
    export_artifact(ExportOptions("mini", 32, num_classes=10, weights=str(DIGITS / "vit-mini-digits.safetensors"),
                                  out_dir=out))
    code, stdout, err = run_cli("compare", str(out), "--images", str(DIGITS / "heldout"), "--json")
    assert code == 0, err
    row = json.loads(stdout)["rows"][0]["metrics"]
    assert row["accuracy"] == row["reference_accuracy"] >= 0.95 and row["top1_agreement"] == 1.0


def test_inspect_onnx(artifacts, run_cli):
    code, out, err = run_cli("inspect", str(artifacts["int8"]), "--json")
    assert code == 0, err
    s = json.loads(out)["onnx"]
    graph = onnx.load(str(artifacts["int8"] / "model.int8.onnx"))
    ops = [n.op_type for n in graph.graph.node]
    assert s["opset"] == 19 and s["nodes"] == len(ops)  # FP16 scales in Q/DQ need opset 19
    assert s["ops"]["QuantizeLinear"] == ops.count("QuantizeLinear") > 0
    assert s["initializer_types"]["int8"] > 0 and s["initializer_types"]["float16"] > 0
    assert s["io"]["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert s["tensorrt_readiness"]["gemm_precisions"] == {"fp16": 4, "int8": 10}
    code, out, _ = run_cli("inspect", str(artifacts["int8"]))
    assert code == 0 and "tensorrt  GEMMs 4 FP16, 10 INT8; float ops FP16" in out
    code, out, _ = run_cli("inspect", str(artifacts["fp16"]))
    assert code == 0 and "FP16 onnx artifact" in out and "float16" in out and "LayerNormalization" in out
    assert "attention blocks: 2 FP16" in out


@pytest.mark.skipif(
    __import__("vit_deploy.trt.probe", fromlist=["unavailable_reason"]).unavailable_reason() is None,
    reason="TensorRT is usable here: tests/steps/test_engine.py inspects real engines",
)
def test_inspect_engine_without_tensorrt_shows_the_build_record(artifacts, run_cli, tmp_path):
    from helpers import engine_manifest_without_plan

    plan = engine_manifest_without_plan(artifacts["fp16"], tmp_path / "plan")
    code, out, err = run_cli("inspect", str(plan))
    assert code == 0, err
    assert "TensorRT 11.0.0 for NVIDIA H100 (compute capability 9.0)" in out
    assert "layer details need TensorRT on a GPU host" in out


def test_inspect_refuses_a_changed_file(artifacts, run_cli, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(artifacts["fp32"], copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"x")
    code, _, err = run_cli("inspect", str(copy))
    assert code == 1 and "changed after it was made" in err
    code, _, err = run_cli("inspect", str(copy), "--no-verify")
    assert code == 1 and "corrupt or truncated" in err


def test_imagenet_labels_are_shipped_in_index_order():
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) >= 990
    assert (labels[0], labels[1], labels[281], labels[999]) == ("tench", "goldfish", "tabby", "toilet tissue")


def test_predict_prints_five_labels_with_probabilities(run_cli, tmp_path):
    from skimage import data

    out = tmp_path / "b"
    export_artifact(ExportOptions("test", 32, num_classes=1000, out_dir=out))
    cat = Path(data.__file__).parent / "chelsea.png"
    code, stdout, err = run_cli("predict", str(out), str(cat), "--json")
    assert code == 0, err
    (result,) = json.loads(stdout)
    top = result["top"]
    assert len(top) == 5 and not result["pretrained"]
    # the probabilities are the softmax of the PyTorch model's logits for the preprocessed photo
    manifest = read_manifest(out)
    from vit_deploy.specs import Preprocessing

    x = load_batch([cat], Preprocessing.from_dict(manifest["preprocessing"]))
    with torch.no_grad():
        probs = torch.softmax(reference_model(Artifact(Path('.'), manifest))(torch.from_numpy(x)).double(), dim=-1)[0]
    expected = torch.topk(probs, 5)
    assert [t["class"] for t in top] == expected.indices.tolist()
    np.testing.assert_allclose([t["probability"] for t in top], expected.values.numpy(), rtol=1e-4)
    assert [t["label"] for t in top] == [imagenet_labels()[i] for i in expected.indices.tolist()]

    code, stdout, _ = run_cli("predict", str(cat), str(cat), "--artifact", str(out))
    assert code == 0 and stdout.count("random weights") == 2 and stdout.count("%") == 10


def test_predict_bad_inputs(run_cli, artifacts, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    code, _, err = run_cli("predict", str(artifacts["fp32"]), str(bad))
    assert code == 1 and "not-an-image.png" in err
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    from skimage import data

    cat = str(Path(data.__file__).parent / "chelsea.png")
    code, _, err = run_cli("predict", cat, "--artifact", str(artifacts["fp32"]), "--labels", str(labels))
    assert code == 1 and "names 2 classes; the model has 5" in err


@pytest.mark.parametrize("bad", ["zeros", "nan"])
def test_all_zero_or_nan_logits_fail_compare_and_predict(run_cli, artifacts, monkeypatch, bad):
    """An artifact whose logits are all zero or NaN (e.g. an INT8 graph built from NaN ranges) scored cosine 1.0:
    compare said PASS and predict printed nan%. Now compare fails it and predict refuses, each in one line."""
    from skimage import data

    from vit_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    def broken(self, batch):
        return np.full((batch.shape[0], 5), 0.0 if bad == "zeros" else np.nan, np.float32)

    monkeypatch.setattr(OnnxRuntimeRunner, "_run", broken)
    code, out, err = run_cli("compare", str(artifacts["int8"]), "--images", str(PHOTOS), "--batch-sizes", "4")
    assert code == 2, (out, err)
    assert "samples have all-zero or non-finite logits" in out and "verdict: FAIL" in out
    assert "Traceback" not in err
    cat = str(Path(data.__file__).parent / "chelsea.png")
    code, out, err = run_cli("predict", str(artifacts["int8"]), cat)
    assert code == 2 and out == "" and "Traceback" not in err and "nan%" not in out + err, (out, err)
    assert err.strip().splitlines()[-1].startswith("error: ") and "all-zero or non-finite logits" in err


def test_compare_defaults_to_the_set_the_artifact_was_validated_on(artifacts, run_cli):
    """The tiny INT8 graph was validated on its calibration photos: compare reruns on those, not on noise."""
    code, out, err = run_cli("compare", str(artifacts["int8"]), "--batch-sizes", "4", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["inputs"] == f"20 images from {PHOTOS} (the set this artifact was validated on)", s["inputs"]
    assert "not_gated" not in s and "seeded random" not in out


def test_compare_falls_back_to_the_bundled_photos_and_says_why(artifacts, run_cli, tmp_path):
    """The FP32 export was validated on seeded random inputs, so the manifest names no image set."""
    code, out, err = run_cli("compare", str(artifacts["fp32"]), "--batch-sizes", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["inputs"] == (f"20 images from {PHOTOS} (the bundled photo list: its manifest names no "
                                         "image set it was validated on)")
    copy = tmp_path / "moved"
    shutil.copytree(artifacts["int8"], copy)
    manifest = read_manifest(copy)
    manifest["validation"]["image_set"] = str(tmp_path / "gone")
    write_manifest(copy, manifest)
    code, out, err = run_cli("compare", str(copy), "--batch-sizes", "4", "--json")
    assert code == 0, err
    assert f"the set this artifact was validated on, {tmp_path / 'gone'}, is not here" in json.loads(out)["inputs"]


@pytest.fixture(scope="module")
def trained_int8(tmp_path_factory) -> Path:
    """The trained digits model (pretrained weights) and its INT8 graph, calibrated on its training images."""
    from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIT_DEPLOY_CACHE", str(root / "cache"))
        export_artifact(ExportOptions("mini", 32, num_classes=10, weights=str(DIGITS / "vit-mini-digits.safetensors"),
                                      out_dir=root / "mini"))
        build_precision_artifact(PrecisionOptions("int8", root / "mini", root / "mini-int8", calib_batch=4,
                                                  calib=str(ROOT / "calibration" / "digits.txt")))
    return root / "mini-int8"


def test_random_inputs_only_when_asked_and_then_not_gating_what_noise_cannot_measure(trained_int8, run_cli):
    code, out, err = run_cli("compare", str(trained_int8), "--random-inputs", "--batch-sizes", "4", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["inputs"].startswith("16 seeded random images (seed 0)") and s["inputs"].endswith("(--random-inputs)")
    assert set(s["not_gated"]) == {"min_mean_cosine", "min_top1_agreement"} and not s["top1_agreement_gated"]
    code, out, err = run_cli("compare", str(trained_int8), "--random-inputs", "--batch-sizes", "4")
    assert "mean cosine >= 0.995 (not gated)" in out and "top-1 agreement >= 97% (not gated)" in out
    assert "not gated mean cosine: random inputs leave the ranges the INT8 graph was calibrated for" in out
    assert "not gated top-1 agreement: random inputs have no class" in out
    # what noise can measure stays gated: the FP32 export's numerics
    code, out, err = run_cli("compare", str(trained_int8.parent / "mini"), "--random-inputs", "--batch-sizes", "4",
                             "--json")
    assert code == 0 and "not_gated" not in json.loads(out) and json.loads(out)["tolerance"]["max_rel_l2"] == 1e-5
    code, _, err = run_cli("compare", str(trained_int8), "--random-inputs", "--images", str(PHOTOS))
    assert code == 1 and "not both" in err


def test_compare_prints_bounds_in_the_unit_of_their_values(trained_int8, run_cli):
    code, out, err = run_cli("compare", str(trained_int8), "--batch-sizes", "4")
    assert code == 0, err
    assert "bounds: mean cosine >= 0.995, top-1 agreement >= 97%, top-1 accuracy drop <= 1.0 points" in out
    assert "digits.txt (the set this artifact was validated on)" in out
