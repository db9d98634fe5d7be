"""vit_deploy.runtime on the tiny ``test`` variant: one interface over ONNX Runtime and PyTorch,
input checks, batch splitting, threads, manifest verification. (TensorRT engines: tests/steps/test_engine.py.)"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import ROOT, assert_concurrent_calls_match_sequential, cpu_int8_floor

from vit_deploy import artifact as artifact_view
from vit_deploy import runtime
from vit_deploy.artifact import read_manifest, sha256_file, write_manifest
from vit_deploy.errors import ArtifactError, EngineUnavailable, UsageError
from vit_deploy.images.synthetic import random_images
from vit_deploy.parity.reference import reference_model

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
OPENVINO = pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed"))
PHOTOS = ROOT / "calibration" / "photos.txt"


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts) -> dict[str, Path]:
    return tiny_artifacts


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    from vit_deploy.specs import model_config

    return random_images(8, 32, model_config("test", 32, 5).preprocessing, seed=3)


def torch_logits(directory: Path, x: np.ndarray) -> np.ndarray:
    """The independent path: the PyTorch model called directly, no runner involved."""
    model = reference_model(artifact_view.open(directory))
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnxruntime_runner_equals_a_plain_session(artifacts, images, precision):
    directory = artifacts[precision]
    session = ort.InferenceSession(str(next(directory.glob("*.onnx"))), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"images": images})[0]
    with runtime.open(directory) as runner:
        assert runner.backend == "onnxruntime" and runner.precision == precision
        np.testing.assert_array_equal(runner.infer(images), expected)


def test_backends_agree_with_pytorch(artifacts, images):
    expected = torch_logits(artifacts["fp32"], images)
    with runtime.open(artifacts["fp32"]) as onnx_runner, runtime.open(artifacts["fp32"], "pytorch") as torch_runner:
        np.testing.assert_allclose(onnx_runner.infer(images), expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(torch_runner.infer(images), expected)
    # any artifact can run its PyTorch reference, e.g. an INT8 graph's
    with runtime.open(artifacts["int8"], "pytorch") as torch_runner:
        assert torch_runner.precision == "fp32"
        np.testing.assert_array_equal(torch_runner.infer(images), expected)


@pytest.mark.parametrize("backend", ["onnxruntime", OPENVINO, "pytorch"])
def test_torch_tensors_in_torch_tensors_out(artifacts, images, backend):
    with runtime.open(artifacts["fp32"], backend) as runner:
        from_numpy = runner.infer(images)
        from_torch = runner.infer(torch.from_numpy(images))
    assert isinstance(from_numpy, np.ndarray) and isinstance(from_torch, torch.Tensor)
    np.testing.assert_array_equal(from_torch.numpy(), from_numpy)


def test_input_metadata_comes_from_the_manifest(artifacts):
    manifest = read_manifest(artifacts["fp16"])
    with runtime.open(artifacts["fp16"] / "model.fp16.onnx") as runner:  # a file inside the folder works too
        meta = runner.input_metadata
    assert meta["name"] == manifest["io"]["inputs"][0]["name"] == "images"
    assert meta["shape"] == ["batch", 3, 32, 32] and meta["dtype"] == "float32"
    assert meta["preprocessing"] == manifest["preprocessing"]


BAD_INPUTS = [
    (lambda x: x.astype(np.float64), "dtype float64"),
    (lambda x: x.astype(np.float16), "dtype float16"),
    (lambda x: x[0], "rank 3"),
    (lambda x: x[:, :1], "1 channels"),
    (lambda x: np.concatenate([x, x[:, :1]], axis=1), "4 channels"),
    (lambda x: x[:, :, :16, :16], "16x16; this model takes 32x32"),
    (lambda x: x[:0], "empty batch"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32), "NaN or Inf"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.inf, x).astype(np.float32), "NaN or Inf"),
    (lambda x: x.tolist(), "numpy array or a torch tensor"),
    (lambda x: torch.from_numpy(x).double(), "dtype float64"),
    (lambda x: torch.from_numpy(x).clone().fill_(float("nan")), "NaN or Inf"),
]


@pytest.mark.parametrize(("make", "message"), BAD_INPUTS)
@pytest.mark.parametrize("backend", ["onnxruntime", OPENVINO, "pytorch"])
def test_bad_inputs_are_refused_with_what_was_expected(artifacts, images, backend, make, message):
    with runtime.open(artifacts["fp32"], backend) as runner, pytest.raises(UsageError) as e:
        runner.infer(make(images))
    assert message in str(e.value)
    assert "float32 [batch, 3, 32, 32]" in str(e.value)  # what was expected


def test_batches_above_max_batch_are_split_and_joined(artifacts, images, monkeypatch):
    whole = runtime.open(artifacts["fp32"]).infer(images)
    runner = runtime.open(artifacts["fp32"], max_batch=3)
    seen = []
    run = runner._run
    monkeypatch.setattr(runner, "_run", lambda b: seen.append(len(b)) or run(b))
    np.testing.assert_allclose(runner.infer(images), whole, rtol=1e-6, atol=1e-6)
    assert seen == [3, 3, 2]


def test_short_batches_are_padded_to_the_profile_minimum(artifacts, images, monkeypatch):
    runner = runtime.open(artifacts["fp32"], max_batch=4)
    runner.min_batch = 4  # as an engine whose profile starts at 4 would report
    seen = []
    run = runner._run
    monkeypatch.setattr(runner, "_run", lambda b: seen.append(len(b)) or run(b))
    out = runner.infer(images[:6])
    assert seen == [4, 4] and out.shape == (6, 5)
    np.testing.assert_allclose(out, runtime.open(artifacts["fp32"]).infer(images[:6]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["onnxruntime", OPENVINO, "pytorch"])
def test_concurrent_calls_match_sequential_ones(artifacts, backend):
    from vit_deploy.specs import model_config

    prep = model_config("test", 32, 5).preprocessing
    inputs = [random_images(1 + i % 4, 32, prep, seed=100 + i) for i in range(16)]
    with runtime.open(artifacts["fp32" if backend == "pytorch" else "int8"], backend) as runner:
        assert_concurrent_calls_match_sequential(runner, inputs)


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_changed_model_file_is_refused_naming_both_hashes(artifacts, tmp_path):
    copy = copy_artifact(artifacts["fp32"], tmp_path / "a")
    recorded = read_manifest(copy)["files"][0]["sha256"]
    with open(copy / "model.onnx", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ArtifactError) as e:
        runtime.open(copy)
    assert recorded[:12] in str(e.value) and sha256_file(copy / "model.onnx")[:12] in str(e.value)
    # skipping the hash check still does not crash on the truncated file
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        runtime.open(copy, verify=False)


def test_missing_or_foreign_manifest(artifacts, tmp_path):
    copy = copy_artifact(artifacts["fp32"], tmp_path / "a")
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="not a finished vit-deploy artifact"):
        runtime.open(copy)
    with pytest.raises(ArtifactError, match="does not exist"):
        runtime.open(tmp_path / "nowhere")


def test_backend_and_provider_errors(artifacts):
    with pytest.raises(UsageError, match="choose one of tensorrt, onnxruntime, openvino, pytorch"):
        runtime.open(artifacts["fp32"], "tvm")
    with pytest.raises(UsageError, match="onnx artifact; it runs with backend 'onnxruntime'"):
        runtime.open(artifacts["fp32"], "tensorrt")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UsageError, match="no CUDAExecutionProvider.*available: .*CPUExecutionProvider"):
            runtime.open(artifacts["fp32"], provider="cuda")
    with pytest.raises(UsageError, match="max_batch must be >= 1"):
        runtime.open(artifacts["fp32"], max_batch=0)


def test_closed_runner_refuses_work(artifacts, images):
    with runtime.open(artifacts["fp32"]) as runner:
        pass
    with pytest.raises(UsageError, match="closed"):
        runner.infer(images)


def test_pytorch_reference_needs_its_checkpoint(artifacts, tmp_path):
    copy = copy_artifact(artifacts["fp32"], tmp_path / "a")
    manifest = read_manifest(copy)
    manifest["checkpoint"] = {"pretrained": True, "source": str(tmp_path / "gone.safetensors"), "sha256": "0" * 64}
    write_manifest(copy, manifest)
    with pytest.raises(ArtifactError, match="cannot rebuild the PyTorch reference"):
        runtime.open(copy, "pytorch")


@pytest.mark.skipif(
    __import__("vit_deploy.trt.probe", fromlist=["unavailable_reason"]).unavailable_reason() is None,
    reason="TensorRT is usable here: tests/steps/test_engine.py runs real engines",
)
def test_engine_artifact_without_tensorrt_says_so(artifacts, tmp_path):
    """An engine artifact on a machine without TensorRT: exit-3 error naming the ONNX fallback."""
    from helpers import engine_manifest_without_plan

    copy = engine_manifest_without_plan(artifacts["fp16"], tmp_path / "plan")
    with pytest.raises(EngineUnavailable) as e:
        runtime.open(copy)
    assert e.value.exit_code == 3 and "backend 'onnxruntime'" in str(e.value)
    assert json.loads((copy / "manifest.json").read_text())["kind"] == "tensorrt"


def test_engine_artifact_with_a_changed_plan_is_refused_before_tensorrt(artifacts, tmp_path):
    """The hash check runs first, on any machine: a truncated plan is named, whatever TensorRT says later."""
    from helpers import engine_manifest_without_plan

    copy = engine_manifest_without_plan(artifacts["fp16"], tmp_path / "plan")
    with open(copy / "model.fp16.plan", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ArtifactError, match="model.fp16.plan was changed after it was made"):
        runtime.open(copy)


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed")
def test_openvino_runs_the_same_graphs_as_onnx_runtime(artifacts, images, monkeypatch):
    """FP32 within the FP32 export tolerance of PyTorch; INT8 the same Q/DQ arithmetic as ONNX Runtime."""
    from vit_deploy.runtime import openvino_runner

    expected = torch_logits(artifacts["fp32"], images)
    with runtime.open(artifacts["fp32"], "openvino") as ov_runner:
        assert ov_runner.describe()["config"]["INFERENCE_PRECISION_HINT"] == "f32"
        out = ov_runner.infer(images)
    assert np.linalg.norm(out - expected) / np.linalg.norm(expected) <= 1e-5
    with runtime.open(artifacts["int8"], "openvino") as ov_runner:
        # attention is float in the INT8 graph: OpenVINO's default (bf16 on AMX) runs it fastest
        assert "INFERENCE_PRECISION_HINT" not in ov_runner.describe()["config"]
        ov_out = ov_runner.infer(images)
    cos = np.sum(ov_out * expected, -1) / (np.linalg.norm(ov_out, axis=-1) * np.linalg.norm(expected, axis=-1))
    assert cos.min() >= cpu_int8_floor(0.99, 0.9)
    # in f32, both runtimes execute the same quantized graph: far closer to each other than to FP32 (ONNX
    # Runtime with Q/DQ as written; OpenVINO exact only where the CPU has VNNI/AMX)
    monkeypatch.setattr(openvino_runner, "inference_precision", lambda artifact: "f32")
    with runtime.open(artifacts["int8"], "openvino") as ov_runner, \
            runtime.open(artifacts["int8"], exact_qdq=True) as ort_runner:
        ov_out, ort_out = ov_runner.infer(images), ort_runner.infer(images)
    assert np.linalg.norm(ov_out - ort_out) < cpu_int8_floor(0.5, 10) * np.linalg.norm(ort_out - expected)


def test_openvino_without_the_package_says_how_to_install(artifacts, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UsageError, match="pip install 'vit-deploy\\[cpu\\]'"):
        runtime.open(artifacts["int8"], "openvino")
