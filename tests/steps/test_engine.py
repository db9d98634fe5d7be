"""The TensorRT engine step: real builds on a GPU host, and the no-TensorRT path everywhere.

Tests marked ``gpu`` build and run real TensorRT engines from the tiny ``test`` variant; the
conftest hook skips them, with the reason from ``unavailable_reason()``, where TensorRT or a
CUDA GPU is missing (``pytest -rs`` shows it). The rest runs on the CPU: option checks, and that
``build-engine`` stops with exit 3 before writing anything when TensorRT is absent.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from vit_deploy.artifact import read_manifest, sha256_file
from vit_deploy.errors import ArtifactError, EngineBuildError, EngineUnavailable, UsageError
from vit_deploy.steps.engine import (
    EngineOptions,
    build_engine_artifact,
    default_timing_cache,
    plan_name,
    validation_batches,
)
from vit_deploy.trt.plan import check_compatible
from vit_deploy.trt.probe import unavailable_reason

GPU_REASON = unavailable_reason()


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def fp32(tiny_artifacts) -> Path:
    return tiny_artifacts["fp32"]


# --------------------------------------------------------------------------------------------
# Real engines (GPU hosts only)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp16(fp32, tmp_path_factory) -> Path:
    from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

    out = tmp_path_factory.mktemp("art") / "test-32-fp16"
    build_precision_artifact(PrecisionOptions("fp16", fp32, out))
    return out


@pytest.fixture(scope="module")
def fp16_engine(fp16, tmp_path_factory) -> tuple[dict, Path]:
    """One FP16 engine with a small profile (1..4, opt 2) and its own timing cache."""
    work = tmp_path_factory.mktemp("trt")
    cache = work / "timing.cache"
    opts = EngineOptions(fp16, work / "engine", min_batch=1, opt_batch=2, max_batch=4, timing_cache=cache)
    return build_engine_artifact(opts), cache


@pytest.mark.gpu
def test_fp16_engine_artifact_matches_pytorch_and_records_the_build(fp16, fp16_engine):
    import tensorrt as trt
    import torch

    summary, _ = fp16_engine
    m = read_manifest(summary["artifact"])
    v = m["validation"]
    assert v["passed"], v["failures"]
    assert v["reference"] == "pytorch fp32" and v["batch_sizes"] == [1, 2, 3, 4]
    assert v["metrics"]["min_cosine"] >= 0.9999
    assert m["kind"] == "tensorrt" and m["precision"] == "fp16"
    plan = Path(summary["model_file"])
    assert plan.name == plan_name("fp16") and m["files"][0]["sha256"] == sha256_file(plan)
    assert m["parent"]["sha256"] == sha256_file(fp16 / "model.fp16.onnx")
    t = m["tensorrt"]
    major, minor = torch.cuda.get_device_capability()
    assert t["version"] == trt.__version__ and t["compute_capability"] == f"{major}.{minor}"
    assert t["profile"] == {"images": {"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [4, 3, 32, 32]}}
    assert m["versions"]["tensorrt"] == trt.__version__
    check_compatible(t, rebuild_from=fp16)  # built here, so it runs here


@pytest.mark.gpu
def test_engine_runner_profile_types_and_batch_limit(fp16, fp16_engine):
    import torch

    from vit_deploy.artifact import Artifact
    from vit_deploy.images.synthetic import random_images
    from vit_deploy.parity.reference import reference_model
    from vit_deploy.trt.plan import TrtEngine

    summary, _ = fp16_engine
    parent = read_manifest(fp16)
    prep = Artifact(fp16, parent).preprocessing
    images = random_images(3, 32, prep, seed=7)
    with torch.no_grad():
        reference = reference_model(Artifact(fp16, parent))(torch.from_numpy(images)).numpy()
    with TrtEngine(Path(summary["model_file"])) as engine:
        assert (engine.min_batch, engine.opt_batch, engine.max_batch) == (1, 2, 4)
        assert engine.input_name == "images" and engine.output_name == "logits"
        out_np = engine.infer(images)
        assert isinstance(out_np, np.ndarray) and out_np.shape == (3, 5)
        out_cuda = engine.infer(torch.from_numpy(images).cuda())
        assert isinstance(out_cuda, torch.Tensor) and out_cuda.is_cuda
        out_cpu = engine.infer(torch.from_numpy(images))
        assert isinstance(out_cpu, torch.Tensor) and out_cpu.device.type == "cpu"
        for out in (out_np, out_cuda.cpu().numpy(), out_cpu.numpy()):
            cos = np.sum(out * reference, -1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(reference, axis=-1))
            assert cos.min() >= 0.9999
        with pytest.raises(UsageError, match="outside this engine's profile"):
            engine.infer(random_images(5, 32, prep))


@pytest.mark.gpu
def test_runtime_runs_the_engine_like_any_artifact(fp16_engine):
    """runtime.open on the engine folder: split above the profile maximum, threads, PyTorch parity."""
    from helpers import assert_concurrent_calls_match_sequential

    from vit_deploy import runtime
    from vit_deploy.images.synthetic import random_images

    summary, _ = fp16_engine
    with runtime.open(summary["artifact"]) as runner, runtime.open(summary["artifact"], "pytorch") as torch_runner:
        assert runner.backend == "tensorrt" and (runner.min_batch, runner.max_batch) == (1, 4)
        images = random_images(10, 32, runner.preprocessing, seed=1)
        out = runner.infer(images)  # 10 images through a profile of at most 4: split as 4, 4, 2
        reference = torch_runner.infer(images)
        cos = np.sum(out * reference, -1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(reference, axis=-1))
        assert out.shape == (10, 5) and cos.min() >= 0.9999
        inputs = [random_images(1 + i % 4, 32, runner.preprocessing, seed=20 + i) for i in range(12)]
        assert_concurrent_calls_match_sequential(runner, inputs, threads=4)


@pytest.mark.gpu
def test_compare_and_inspect_commands_on_an_engine(fp16_engine, run_cli):
    summary, _ = fp16_engine
    code, out, err = run_cli("compare", summary["artifact"], "--batch-sizes", "1,3,4", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["kind"] == "tensorrt" and s["passed"] and [r["batch"] for r in s["rows"]] == [1, 3, 4]
    code, out, err = run_cli("inspect", summary["artifact"], "--json")
    assert code == 0, err
    assert json.loads(out)["tensorrt"]["num_layers"] > 0


@pytest.mark.gpu
def test_inspector_lists_every_layer_with_its_precision(fp16_engine):
    from vit_deploy.trt.inspector import engine_summary

    summary, _ = fp16_engine
    s = engine_summary(Path(summary["model_file"]))
    assert s["num_layers"] > 0 and len(s["layers"]) == s["num_layers"]
    assert all(layer["name"] for layer in s["layers"])
    assert sum(s["precision_counts"].values()) == s["num_layers"]
    assert {t["Name"] for t in s["io_tensors"]} == {"images", "logits"}
    assert set(s["precision_counts"]) - {"unknown"}, "DETAILED verbosity should report tensor types"


@pytest.mark.gpu
def test_second_build_reuses_the_timing_cache(fp16, fp16_engine, tmp_path):
    first, cache = fp16_engine
    assert cache.is_file() and first["tensorrt"]["timing_cache"]["saved"]
    opts = EngineOptions(fp16, tmp_path / "again", min_batch=1, opt_batch=2, max_batch=4, timing_cache=cache)
    second = build_engine_artifact(opts)
    state = second["tensorrt"]["timing_cache"]
    assert state["loaded"] and not state["rebuilt"]


@pytest.mark.gpu
def test_a_timing_cache_file_that_is_not_one_is_replaced_only_with_force(fp16, tmp_path):
    """--timing-cache names a file the user chose: one TensorRT cannot read is theirs, not a damaged cache of ours."""
    mine = tmp_path / "notes.txt"
    mine.write_text("not a timing cache\n")
    opts = EngineOptions(fp16, tmp_path / "engine", min_batch=1, opt_batch=2, max_batch=4, timing_cache=mine)
    with pytest.raises(UsageError, match="is not a TensorRT timing cache .* pass --force"):
        build_engine_artifact(opts)
    assert mine.read_text() == "not a timing cache\n" and not (tmp_path / "engine").exists()
    s = build_engine_artifact(dataclasses.replace(opts, force=True))
    assert s["tensorrt"]["timing_cache"]["rebuilt"] and s["tensorrt"]["timing_cache"]["saved"]


@pytest.mark.gpu
def test_fp32_engine_meets_the_fp32_tolerance(fp32, tmp_path):
    s = build_engine_artifact(EngineOptions(fp32, tmp_path / "fp32-trt", min_batch=1, opt_batch=2, max_batch=4))
    assert s["validation"]["passed"], s["validation"]["failures"]
    assert s["tensorrt"]["tf32"] == "disabled"  # BuilderFlag.TF32 exists in 11.x and is on by default


@pytest.mark.gpu
def test_unparsable_graph_reports_every_parser_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from vit_deploy.trt.build import build_serialized_engine

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 8, 8])
    node = helper.make_node("NoSuchOp", ["images"], ["logits"], name="mystery", domain="com.example")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(EngineBuildError) as e:
        build_serialized_engine(path, input_name="images", chw=(3, 8, 8), min_batch=1, opt_batch=1, max_batch=2,
                                workspace_mib=None, optimization_level=0, timing_cache=None,
                                hardware_compatible=False, version_compatible=False)
    assert "mystery" in str(e.value) and "NoSuchOp" in str(e.value) and e.value.exit_code == 1


@pytest.mark.gpu
@pytest.mark.parametrize("flags", [{"version_compatible": True}, {"hardware_compatible": True}])
def test_version_and_hardware_compatible_engines_build_record_and_run(fp16, flags, tmp_path):
    """Audit point 5: the portable build options, built, recorded, checked and run (host code for VC plans)."""
    from vit_deploy import runtime
    from vit_deploy.images.synthetic import random_images

    opts = EngineOptions(fp16, tmp_path / "engine", min_batch=1, opt_batch=2, max_batch=4, **flags)
    s = build_engine_artifact(opts)
    assert s["validation"]["passed"], s["validation"]["failures"]
    t = read_manifest(s["artifact"])["tensorrt"]
    for key, value in flags.items():
        assert t[key] is value
    if flags.get("hardware_compatible"):
        assert t["hardware_compatibility_level"] == "AMPERE_PLUS"
    with runtime.open(s["artifact"]) as runner, runtime.open(s["artifact"], "pytorch") as reference:
        images = random_images(3, 32, runner.preprocessing, seed=5)
        out, ref = runner.infer(images), reference.infer(images)
        cos = np.sum(out * ref, -1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(ref, axis=-1))
        assert cos.min() >= 0.9999


@pytest.mark.gpu
def test_int8_qdq_engine_reports_int8_layers_and_meets_the_int8_tolerance(tiny_artifacts, tmp_path):
    """Audit points 1 and 5: an explicit Q/DQ graph becomes an engine whose inspector lists int8 layers."""
    opts = EngineOptions(tiny_artifacts["int8"], tmp_path / "int8-trt", min_batch=1, opt_batch=2, max_batch=4)
    s = build_engine_artifact(opts)
    assert s["validation"]["passed"], s["validation"]["failures"]
    counts = read_manifest(s["artifact"])["tensorrt"]["precision_counts"]
    assert counts.get("int8", 0) > 0, counts


@pytest.mark.gpu
def test_fp8_engine_runs_fp8_where_the_gpu_has_it_and_is_exit_3_elsewhere(fp32, tmp_path):
    """An FP8 graph becomes an engine with FP8 layers that meets the FP8 tolerance on Ada/Hopper and newer;
    on an older GPU the graph is kept and the build stops with exit 3, naming the GPU and its capability."""
    from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact
    from vit_deploy.trt import device_facts

    graph = tmp_path / "fp8"
    build_precision_artifact(PrecisionOptions("fp8", fp32, graph, calib=str(ROOT / "calibration" / "photos.txt")))
    opts = EngineOptions(graph, tmp_path / "fp8-trt", min_batch=1, opt_batch=2, max_batch=4)
    facts = device_facts()
    if tuple(int(p) for p in facts["compute_capability"].split(".")) < (8, 9):
        with pytest.raises(EngineUnavailable, match=f"compute capability {facts['compute_capability']}"):
            build_engine_artifact(opts)
        assert read_manifest(graph)["validation"]["passed"] and not (tmp_path / "fp8-trt").exists()
        return
    s = build_engine_artifact(opts)
    assert s["validation"]["passed"], s["validation"]["failures"]
    assert read_manifest(s["artifact"])["tensorrt"]["inspector"]["precision_counts"].get("fp8", 0) > 0


@pytest.mark.gpu
def test_fp16_engine_reports_fp16_layers(fp16_engine):
    """Audit point 1 on a real plan: the inspector's type field is read, so FP16 layers count as fp16."""
    from vit_deploy.trt.inspector import engine_summary

    summary, _ = fp16_engine
    counts = engine_summary(Path(summary["model_file"]))["precision_counts"]
    assert counts.get("fp16", 0) > 0, counts
    assert counts.get("int8", 0) == 0, counts


@pytest.mark.gpu
def test_cuda_input_written_on_a_non_default_stream(fp16, fp16_engine):
    """Audit point 5: an input still being written on the caller's side stream is waited for, not raced."""
    import torch

    from vit_deploy.artifact import Artifact
    from vit_deploy.images.synthetic import random_images
    from vit_deploy.parity.reference import reference_model
    from vit_deploy.trt.plan import TrtEngine

    summary, _ = fp16_engine
    parent = read_manifest(fp16)
    images = random_images(4, 32, Artifact(fp16, parent).preprocessing, seed=11)
    with torch.no_grad():
        reference = reference_model(Artifact(fp16, parent))(torch.from_numpy(images)).numpy()
    side = torch.cuda.Stream()
    with TrtEngine(Path(summary["model_file"])) as engine, torch.cuda.stream(side):
        for _ in range(3):
            host = torch.from_numpy(images).pin_memory()
            x = torch.empty(host.shape, device="cuda")
            torch.cuda._sleep(50_000_000)  # keep the side stream busy so a missing wait would read garbage
            x.copy_(host, non_blocking=True)
            out = engine.infer(x)  # called on the side stream: the engine must wait for it
            assert torch.cuda.current_stream() == side
            got = out.cpu().numpy()
            cos = np.sum(got * reference, -1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(reference, axis=-1))
            assert cos.min() >= 0.9999


# --------------------------------------------------------------------------------------------
# Without TensorRT (every machine)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make this process behave as if TensorRT were absent, wherever the test runs."""
    import vit_deploy.trt.probe

    reason = "TensorRT is not installed here (it needs a CUDA GPU host: pip install tensorrt-cu12)"
    monkeypatch.setattr(vit_deploy.trt.probe, "unavailable_reason", lambda: reason)
    return reason


def test_build_engine_stops_with_exit_3_before_writing_anything(fp32, tmp_path, no_tensorrt):
    out = tmp_path / "out" / "engine"
    with pytest.raises(EngineUnavailable) as e:
        build_engine_artifact(EngineOptions(fp32, out))
    assert e.value.exit_code == 3
    message = str(e.value)
    assert no_tensorrt in message and f"vit-deploy build-engine {fp32}" in message
    assert not (tmp_path / "out").exists(), "nothing may be written when no engine can be built"
    assert not (tmp_path / "cache").exists(), "not even the timing cache folder"
    assert not list(fp32.parent.glob(".*partial*")), "no staging folder left beside the graph"


@pytest.mark.skipif(GPU_REASON is None, reason="TensorRT and a GPU are present: the real no-TensorRT path cannot run")
def test_an_fp8_engine_on_a_gpu_without_fp8_is_exit_3_naming_the_gpu(tiny_artifacts, tmp_path, monkeypatch):
    """TensorRT present (simulated) on an A10 (8.6): the FP8 graph is kept and nothing is written."""
    import vit_deploy.trt
    import vit_deploy.trt.probe
    from vit_deploy.steps.engine import missing_tensor_cores
    from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

    a10 = {"gpu": "NVIDIA A10", "compute_capability": "8.6"}
    assert missing_tensor_cores("fp16", a10) is None and missing_tensor_cores("int8", a10) is None
    assert missing_tensor_cores("fp8", {"gpu": "NVIDIA H100", "compute_capability": "9.0"}) is None
    graph = tmp_path / "fp8"
    build_precision_artifact(PrecisionOptions("fp8", tiny_artifacts["fp32"], graph,
                                              calib=str(ROOT / "calibration" / "photos.txt"), calib_batch=4))
    monkeypatch.setattr(vit_deploy.trt.probe, "unavailable_reason", lambda: None)
    monkeypatch.setattr(vit_deploy.trt, "tensorrt_version", lambda: "11.4.0")
    monkeypatch.setattr(vit_deploy.trt, "device_facts", lambda device=None: a10)
    out = tmp_path / "fp8-trt"
    with pytest.raises(EngineUnavailable) as e:
        build_engine_artifact(EngineOptions(graph, out))
    message = str(e.value)
    assert e.value.exit_code == 3 and "\n" not in message
    assert "NVIDIA A10 (compute capability 8.6) has no FP8 tensor cores" in message and "8.9 or newer" in message
    assert f"graph is kept at {graph}" in message and not out.exists()


def test_real_unavailable_reason_says_what_is_missing(fp32, tmp_path):
    assert GPU_REASON and ("TensorRT" in GPU_REASON or "CUDA" in GPU_REASON)
    with pytest.raises(EngineUnavailable, match="on a GPU host with TensorRT run"):
        build_engine_artifact(EngineOptions(fp32, tmp_path / "engine"))
    assert not (tmp_path / "engine").exists()


def test_options_are_checked_before_tensorrt_is_needed(fp32, tmp_path, no_tensorrt):
    with pytest.raises(UsageError, match="build-engine ARTIFACT"):
        build_engine_artifact(EngineOptions(None))
    with pytest.raises(UsageError, match="--min-batch"):
        build_engine_artifact(EngineOptions(fp32, tmp_path / "a", min_batch=4, opt_batch=2, max_batch=8))
    with pytest.raises(UsageError, match="0 to 5"):
        build_engine_artifact(EngineOptions(fp32, tmp_path / "b", optimization_level=9))
    with pytest.raises(UsageError, match="--workspace-mib"):
        build_engine_artifact(EngineOptions(fp32, tmp_path / "c", workspace_mib=0))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("x")
    with pytest.raises(ArtifactError, match="--force"):
        build_engine_artifact(EngineOptions(fp32, taken))


def test_an_engine_artifact_is_not_a_graph_to_build_from(fp32, tmp_path, no_tensorrt):
    fake = tmp_path / "engine-art"
    shutil.copytree(fp32, fake)
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["kind"], manifest["parent"] = "tensorrt", {"path": str(fp32)}
    (fake / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match=f"ONNX graph folder \\({fp32}\\)"):
        build_engine_artifact(EngineOptions(fake, tmp_path / "out"))


def test_only_vit_deploy_trt_imports_tensorrt_and_everything_imports_without_it():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "vit_deploy").rglob("*.py")
        if "trt" not in p.relative_to(ROOT / "vit_deploy").parts[:1]
        and any(line.strip().startswith(("import tensorrt", "from tensorrt")) for line in p.read_text().splitlines())
    ]
    assert not offenders, f"tensorrt imported outside vit_deploy/trt: {offenders}"
    code = (
        "import sys\n"
        "sys.modules['tensorrt'] = sys.modules['tensorrt_bindings'] = None  # their imports now raise ImportError\n"
        "import vit_deploy.steps.engine, vit_deploy.trt.build, vit_deploy.trt.plan, vit_deploy.trt.inspector\n"
        "from vit_deploy.trt import tensorrt_version\nfrom vit_deploy.trt.probe import unavailable_reason\n"
        "assert tensorrt_version() is None\n"
        "print(unavailable_reason())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("TensorRT is not installed here")


def test_error_classes_and_exit_codes():
    assert EngineUnavailable.exit_code == 3 and EngineBuildError.exit_code == 1


def test_validation_batches_cover_the_profile():
    assert validation_batches(1, 8, 64) == [1, 3, 8, 64]
    assert validation_batches(1, 1, 1) == [1]
    assert validation_batches(4, 8, 16) == [4, 8, 16]  # no odd size below the minimum


def test_default_timing_cache_is_per_version_and_gpu(tmp_path):
    path = default_timing_cache("11.1.0", "9.0")
    assert path == tmp_path / "cache" / "tensorrt" / "timing-11.1.0-cc9.0.cache"
