"""The TensorRT engine step: real builds on a GPU host, pure logic and the no-TensorRT path everywhere.

Tests marked ``gpu`` build and run real TensorRT engines from the tiny ``test`` variant and
skip, with the reason from ``unavailable_reason()``, where TensorRT or a CUDA GPU is missing
(``pytest -rs`` shows it). Everything else runs on the CPU: the compatibility rules, the
inspector JSON counting (on samples from NVIDIA's documentation), parser-error formatting,
option checks, and that ``build-engine`` stops with exit 3 before writing anything when
TensorRT is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vit_deploy.artifact import read_manifest, sha256_file
from vit_deploy.errors import ArtifactError, EngineBuildError, EngineUnavailable, UsageError
from vit_deploy.steps.engine import (
    EngineOptions,
    build_engine_artifact,
    default_timing_cache,
    plan_name,
    validation_batches,
)
from vit_deploy.trt import LogCollector, unavailable_reason
from vit_deploy.trt.build import check_batches, format_parser_errors, profile_shapes
from vit_deploy.trt.inspector import io_tensors, layer_precision, layer_precision_counts, summarize, tensor_precision
from vit_deploy.trt.plan import capability_allowed, check_compatible, compatibility_problem, version_allowed

ROOT = Path(__file__).resolve().parent.parent
GPU_REASON = unavailable_reason()
requires_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"needs TensorRT and a CUDA GPU: {GPU_REASON}")


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
    if GPU_REASON is not None:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {GPU_REASON}")
    work = tmp_path_factory.mktemp("trt")
    cache = work / "timing.cache"
    opts = EngineOptions(fp16, work / "engine", min_batch=1, opt_batch=2, max_batch=4, timing_cache=cache)
    return build_engine_artifact(opts), cache


@pytest.mark.gpu
@requires_gpu
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
@requires_gpu
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
@requires_gpu
def test_runtime_runs_the_engine_like_any_artifact(fp16_engine):
    """runtime.open on the engine folder: split above the profile maximum, threads, PyTorch parity."""
    from conftest import assert_concurrent_calls_match_sequential

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
@requires_gpu
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
@requires_gpu
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
@requires_gpu
def test_second_build_reuses_the_timing_cache(fp16, fp16_engine, tmp_path):
    first, cache = fp16_engine
    assert cache.is_file() and first["tensorrt"]["timing_cache"]["saved"]
    opts = EngineOptions(fp16, tmp_path / "again", min_batch=1, opt_batch=2, max_batch=4, timing_cache=cache)
    second = build_engine_artifact(opts)
    state = second["tensorrt"]["timing_cache"]
    assert state["loaded"] and not state["rebuilt"]


@pytest.mark.gpu
@requires_gpu
def test_fp32_engine_meets_the_fp32_tolerance(fp32, tmp_path):
    s = build_engine_artifact(EngineOptions(fp32, tmp_path / "fp32-trt", min_batch=1, opt_batch=2, max_batch=4))
    assert s["validation"]["passed"], s["validation"]["failures"]
    assert s["tensorrt"]["tf32"] == "disabled"  # BuilderFlag.TF32 exists in 11.x and is on by default


@pytest.mark.gpu
@requires_gpu
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
@requires_gpu
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
@requires_gpu
def test_int8_qdq_engine_reports_int8_layers_and_meets_the_int8_tolerance(tiny_artifacts, tmp_path):
    """Audit points 1 and 5: an explicit Q/DQ graph becomes an engine whose inspector lists int8 layers."""
    opts = EngineOptions(tiny_artifacts["int8"], tmp_path / "int8-trt", min_batch=1, opt_batch=2, max_batch=4)
    s = build_engine_artifact(opts)
    assert s["validation"]["passed"], s["validation"]["failures"]
    counts = read_manifest(s["artifact"])["tensorrt"]["precision_counts"]
    assert counts.get("int8", 0) > 0, counts


@pytest.mark.gpu
@requires_gpu
def test_fp16_engine_reports_fp16_layers(fp16_engine):
    """Audit point 1 on a real plan: the inspector's type field is read, so FP16 layers count as fp16."""
    from vit_deploy.trt.inspector import engine_summary

    summary, _ = fp16_engine
    counts = engine_summary(Path(summary["model_file"]))["precision_counts"]
    assert counts.get("fp16", 0) > 0, counts
    assert counts.get("int8", 0) == 0, counts


@pytest.mark.gpu
@requires_gpu
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
    import vit_deploy.trt

    reason = "TensorRT is not installed here (it needs a CUDA GPU host: pip install tensorrt-cu12)"
    monkeypatch.setattr(vit_deploy.trt, "unavailable_reason", lambda: reason)
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
        "from vit_deploy.trt import unavailable_reason, tensorrt_version\n"
        "assert tensorrt_version() is None\n"
        "print(unavailable_reason())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("TensorRT is not installed here")


def test_error_classes_and_exit_codes():
    assert EngineUnavailable.exit_code == 3 and EngineBuildError.exit_code == 1


# --- compatibility rules ---------------------------------------------------------------------

BUILT = {"version": "11.0.0", "compute_capability": "8.9", "gpu": "NVIDIA L4"}
H100_11_1 = {"version": "11.1.0", "compute_capability": "9.0", "gpu": "NVIDIA H100"}


def test_incompatible_engine_message_names_both_sides():
    problem = compatibility_problem(BUILT, H100_11_1)
    assert problem.startswith(
        "engine built with TensorRT 11.0.0 for compute capability 8.9 (NVIDIA L4); "
        "this machine has TensorRT 11.1.0 and compute capability 9.0 (NVIDIA H100)"
    )
    assert "version" in problem and "compute capability it was built for" in problem


def test_same_version_and_gpu_is_compatible():
    assert compatibility_problem(BUILT, dict(BUILT)) is None
    assert compatibility_problem({**BUILT, "version": "11.0.0.9"}, {**BUILT, "version": "11.0.0.9"}) is None


def test_version_and_capability_are_each_enforced():
    assert "TensorRT version that built it" in compatibility_problem(BUILT, {**BUILT, "version": "11.0.1"})
    assert not version_allowed("11.0.0.5", "11.0.0.6", version_compatible=False)  # build numbers count too
    only_cc = compatibility_problem(BUILT, {**BUILT, "compute_capability": "8.6", "gpu": "NVIDIA A10"})
    assert "8.9 (NVIDIA L4)" in only_cc and "8.6 (NVIDIA A10)" in only_cc and "TensorRT version" not in only_cc


def test_hardware_compatible_engines_run_on_any_ampere_or_newer_gpu():
    hc = {**BUILT, "hardware_compatible": True}
    assert compatibility_problem(hc, {**BUILT, "compute_capability": "9.0", "gpu": "NVIDIA H100"}) is None
    assert compatibility_problem(hc, {**BUILT, "compute_capability": "8.0", "gpu": "NVIDIA A100"}) is None
    problem = compatibility_problem(hc, {**BUILT, "compute_capability": "7.5", "gpu": "Tesla T4"})
    assert "Ampere or newer" in problem and "7.5 (Tesla T4)" in problem
    assert capability_allowed("8.6", "12.0", hardware_compatible=True)
    assert not capability_allowed("8.6", "12.0", hardware_compatible=False)


def test_version_compatible_engines_run_on_later_runtimes_only():
    vc = {**BUILT, "version_compatible": True}
    assert compatibility_problem(vc, {**BUILT, "version": "11.1.0"}) is None
    assert compatibility_problem(vc, {**BUILT, "version": "11.4.1.2"}) is None
    older = compatibility_problem({**vc, "version": "11.1.0"}, {**BUILT, "version": "11.0.0"})
    assert "same or a later TensorRT" in older
    # across majors only the documented pairs: 10 -> 11 and 8 -> 10
    assert version_allowed("10.8.0", "11.0.0", version_compatible=True)
    assert version_allowed("8.6.1", "10.0.0", version_compatible=True)
    assert not version_allowed("8.6.1", "11.0.0", version_compatible=True)
    # version compatibility does not relax the GPU check
    both = compatibility_problem(vc, {**BUILT, "version": "11.1.0", "compute_capability": "9.0"})
    assert both and "compute capability it was built for" in both and "TensorRT version" not in both


def test_check_compatible_raises_with_the_rebuild_command(monkeypatch, tmp_path):
    import vit_deploy.trt.plan as trt_engine

    monkeypatch.setattr(trt_engine, "current_facts", lambda: dict(H100_11_1))
    with pytest.raises(ArtifactError) as e:
        check_compatible(BUILT, rebuild_from=tmp_path / "graph")
    hint = f"rebuild with vit-deploy build-engine {tmp_path / 'graph'} on this machine"
    assert str(e.value).endswith(hint)
    monkeypatch.setattr(trt_engine, "current_facts", lambda: dict(BUILT))
    check_compatible(BUILT)


def test_check_compatible_without_tensorrt_is_engine_unavailable(monkeypatch):
    import vit_deploy.trt

    monkeypatch.setattr(vit_deploy.trt, "unavailable_reason", lambda: "TensorRT is not installed here")
    with pytest.raises(EngineUnavailable, match="TensorRT is not installed here"):
        check_compatible(BUILT)


# --- inspector JSON --------------------------------------------------------------------------

# TensorRT Developer Guide, "Engine Inspector", the kDETAILED getLayerInformation() example
# (10.x schema; here as mirrored in HeKun-NVIDIA/TensorRT-Developer_Guide_in_Chinese), trimmed.
DOC_INT8_CONV = {
    "Name": "node_of_gpu_0/res4_0_branch2a_1 + node_of_gpu_0/res4_0_branch2a_bn_1 + node_of_gpu_0/res4_0_branch2a_bn_2",
    "LayerType": "CaskConvolution",
    "Inputs": [{"Name": "gpu_0/res3_3_branch2c_bn_3", "Dimensions": [16, 512, 28, 28],
                "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
    "Outputs": [{"Name": "gpu_0/res4_0_branch2a_bn_2", "Dimensions": [16, 256, 28, 28],
                 "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
    "ParameterType": "Convolution",
    "TacticValue": "0x11bde0e1d9f2f35d",
}
# NVIDIA/TensorRT issue #3876 (a user's FP16 engine, 10.x schema), one layer.
ISSUE_FP16_CONV = {
    "Name": "/model.2/cv1/conv/Conv + /model.2/cv1/act/Relu",
    "LayerType": "CaskConvolution",
    "Inputs": [{"Name": "/model.1/act/Relu_output_0", "Location": "Device", "Dimensions": [1, 50, 160, 160],
                "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
    "Outputs": [{"Name": "Reformatted Output Tensor 0 to /model.2/cv1/conv/Conv + /model.2/cv1/act/Relu",
                 "Location": "Device", "Dimensions": [1, 25, 160, 160],
                 "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
}
# A dynamic-shape layer as 10.x prints it when no execution context is attached.
DYNAMIC_NOOP = {
    "Name": "(Unnamed Layer* 0) [Shuffle]", "LayerType": "NoOp",
    "Inputs": [{"Name": "foo0", "Location": "Device", "Dimensions": [-1, 25088],
                "Format/Datatype": "N/A due to dynamic shapes"}],
    "Outputs": [{"Name": "(Unnamed Layer* 0) [Shuffle]_output", "Location": "Device", "Dimensions": [-1, 128, 14, 14],
                 "Format/Datatype": "N/A due to dynamic shapes"}],
}
# TensorRT 11 engine information, "I/O Tensors" exactly as the IEngineInspector migration page shows it.
ENGINE_INFO_11 = {
    "I/O Tensors": [
        {"Name": "input_0", "IOMode": "Input", "DataType": "Float", "Dimensions": [1, 3, 224, 224],
         "Location": "Device", "IsShapeInferenceIO": False,
         "ProfileInfo": [{"MinShape": [1, 3, 224, 224], "OptShape": [1, 3, 224, 224], "MaxShape": [1, 3, 224, 224],
                          "Format": "Row major linear FP32 format (kLINEAR)"}]},
        {"Name": "output_0", "IOMode": "Output", "DataType": "Float", "Dimensions": [1, 1000],
         "Location": "Device", "IsShapeInferenceIO": False},
    ]
}
# Layers in the 11.x split schema, as NVIDIA's own 11.x tooling reads them: the trt-perf-analysis
# schema (NVIDIA/TensorRT, commit a892d222, .agents/skills/trt-perf-analysis/schemas/analyze-data.schema.json)
# gives a layer tensor "Name" (required), "Datatype", "Dimensions", "Format", "StrideOrder", "Strides"; its
# report (report_template/app.js) looks the "Datatype" value up case-insensitively among "float", "half",
# "int8", "bfloat16", ... Only the required field and the type are given where the test is about the type.
LAYER_11_INT8_GEMM = {
    "Name": "/blocks.0/attn/qkv/MatMul", "LayerType": "gemm",
    "Inputs": [{"Name": "x_q", "Datatype": "Int8", "Dimensions": [2, 65, 32]},
               {"Name": "w_q", "Datatype": "Int8", "Dimensions": [32, 96]}],
    "Outputs": [{"Name": "qkv", "Datatype": "Half", "Dimensions": [2, 65, 96]}],
}
LAYER_11_FP32_LN = {
    "Name": "/blocks.0/norm1/LayerNormalization", "LayerType": "Normalization",
    "Inputs": [{"Name": "x", "Datatype": "Float", "Dimensions": [2, 65, 32], "StrideOrder": [2, 1, 0]}],
    "Outputs": [{"Name": "y", "Datatype": "Float", "Dimensions": [2, 65, 32], "Strides": [2080, 32, 1]}],
}


def test_tensor_precision_reads_the_11x_datatype_key_in_any_case_and_with_the_format_prefix():
    """Audit point 1: "Datatype" (NVIDIA's 11.x tooling), never read before; "DataType"; "Format/Datatype"."""
    assert tensor_precision(LAYER_11_INT8_GEMM["Inputs"][0]) == "int8"
    assert tensor_precision(LAYER_11_INT8_GEMM["Outputs"][0]) == "fp16"
    assert tensor_precision(LAYER_11_FP32_LN["Inputs"][0]) == "fp32"
    for key in ("Datatype", "DataType", "datatype", "DATATYPE", "Format/Datatype", "format/datatype"):
        assert tensor_precision({"Name": "t", key: "half"}) == "fp16", key
    # the type key wins over a format string that would say otherwise; "Format" is only the fallback
    assert tensor_precision({"Name": "t", "Datatype": "Int8", "Format": "Row major linear FP32 format"}) == "int8"
    assert tensor_precision({"Name": "t", "Format": "Row major linear FP16 format"}) == "fp16"
    assert tensor_precision({"Name": "t"}) == "unknown"


def test_tensor_precision_reads_both_inspector_schemas():
    assert tensor_precision(DOC_INT8_CONV["Inputs"][0]) == "int8"
    assert tensor_precision(ISSUE_FP16_CONV["Inputs"][0]) == "fp16"
    assert tensor_precision(DYNAMIC_NOOP["Inputs"][0]) == "unknown"
    assert tensor_precision(ENGINE_INFO_11["I/O Tensors"][0]) == "fp32"
    assert tensor_precision({"DataType": "Half"}) == "fp16"
    assert tensor_precision({"DataType": "BFloat16"}) == "bf16"
    assert tensor_precision({"DataType": "FP8"}) == "fp8"
    assert tensor_precision({"DataType": "UInt8"}) == "uint8"
    assert tensor_precision({"Format/Datatype": "Row major linear FP32"}) == "fp32"
    assert tensor_precision({"DataType": "Int32"}) == "int32"


def test_layer_precision_is_the_lowest_input_precision():
    assert layer_precision(LAYER_11_INT8_GEMM) == "int8"
    assert layer_precision(LAYER_11_FP32_LN) == "fp32"
    assert layer_precision("just a layer name") == "unknown"
    dq = {"Inputs": [{"Datatype": "Int8"}, {"Datatype": "Float"}], "Outputs": [{"Datatype": "Float"}]}
    assert layer_precision(dq) == "int8"
    outputs_only = {"Inputs": [], "Outputs": [{"Datatype": "Half"}]}
    assert layer_precision(outputs_only) == "fp16"


def test_layer_precision_counts_on_documented_samples():
    layers = [DOC_INT8_CONV, ISSUE_FP16_CONV, DYNAMIC_NOOP, LAYER_11_INT8_GEMM, LAYER_11_FP32_LN, "name only"]
    counts = layer_precision_counts(layers)
    assert counts == {"int8": 2, "fp16": 1, "fp32": 1, "unknown": 2}
    assert list(counts) == ["int8", "fp16", "fp32", "unknown"]  # most reduced first
    assert layer_precision_counts([]) == {}


def test_summary_reads_io_tensors_of_either_version():
    s = summarize(ENGINE_INFO_11, [LAYER_11_INT8_GEMM, LAYER_11_FP32_LN])
    assert [t["Name"] for t in s["io_tensors"]] == ["input_0", "output_0"] and s["num_layers"] == 2
    assert s["layers"][0]["inputs"][0] == {"name": "x_q", "precision": "int8", "format": None,
                                           "dimensions": [2, 65, 32]}
    assert s["layer_types"] == {"gemm": 1, "Normalization": 1}
    assert io_tensors({"Bindings": ["input_0", "output_0"]}) == [{"Name": "input_0"}, {"Name": "output_0"}]
    # the summary's own layer briefs count the same as the raw inspector layers
    assert layer_precision_counts(s["layers"]) == layer_precision_counts([LAYER_11_INT8_GEMM, LAYER_11_FP32_LN])


# --- build helpers ---------------------------------------------------------------------------


def test_parser_errors_are_all_listed_with_their_nodes():
    records = [
        {"code": "UNSUPPORTED_NODE", "desc": "No importer registered for op: NoSuchOp", "node": 4,
         "node_name": "mystery", "node_operator": "NoSuchOp"},
        {"code": "INVALID_GRAPH", "desc": "graph has no outputs", "node": -1, "node_name": "", "node_operator": ""},
    ]
    text = format_parser_errors("/a/model.onnx", records, ["[graph.cpp] failed"])
    lines = text.splitlines()
    assert lines[0] == "TensorRT could not parse /a/model.onnx: 2 parser error(s)"
    assert lines[1] == "  1. node 4 'mystery' (NoSuchOp): No importer registered for op: NoSuchOp [UNSUPPORTED_NODE]"
    assert lines[2] == "  2. graph: graph has no outputs [INVALID_GRAPH]"
    assert "[graph.cpp] failed" in text and "then run build-engine again" in lines[-1]


def test_log_collector_keeps_errors_and_warnings_only():
    log = LogCollector()
    log.add("VERBOSE", "noise")
    log.add("INFO", "more noise")
    assert log.explain() == "TensorRT logged no error"
    log.add("WARNING", "weights are fp16 ")
    assert log.explain() == "weights are fp16"
    log.add("ERROR", "out of memory")
    log.add("INTERNAL_ERROR", "assertion failed")
    assert log.errors() == ["out of memory", "assertion failed"] and log.warnings() == ["weights are fp16"]
    assert log.explain() == "out of memory; assertion failed"
    log.clear()
    assert log.records == []


def test_profile_shapes_and_batch_checks():
    assert profile_shapes("images", (3, 384, 384), 1, 8, 64) == {
        "images": {"min": [1, 3, 384, 384], "opt": [8, 3, 384, 384], "max": [64, 3, 384, 384]}
    }
    for bad in ((0, 1, 2), (2, 1, 4), (1, 8, 4)):
        with pytest.raises(UsageError, match="1 <= --min-batch"):
            check_batches(*bad)


def test_validation_batches_cover_the_profile():
    assert validation_batches(1, 8, 64) == [1, 3, 8, 64]
    assert validation_batches(1, 1, 1) == [1]
    assert validation_batches(4, 8, 16) == [4, 8, 16]  # no odd size below the minimum


def test_default_timing_cache_is_per_version_and_gpu(tmp_path):
    path = default_timing_cache("11.1.0", "9.0")
    assert path == tmp_path / "cache" / "tensorrt" / "timing-11.1.0-cc9.0.cache"


# --- audit point 2: TensorRT's failures become our typed errors, in one line -------------------


class _NullFactory:
    """What the real bindings do when TensorRT's factory returns nullptr (seen with stub libraries)."""

    __version__ = "11.4.0.106"

    def __init__(self) -> None:
        self.builders = 0

        def refuse(*args, **kwargs):
            self.builders += 1
            raise TypeError("pybind11::init(): factory function returned nullptr")

        self.Builder = self.Runtime = refuse

        class Logger:
            ERROR = "ERROR"

            def __init__(self, *args):
                pass

        self.Logger = Logger


@pytest.fixture
def fresh_probe():
    """Forget the cached TensorRT probe before and after the test."""
    from vit_deploy import doctor

    def clear():
        vit_deploy_trt.unavailable_reason.cache_clear()
        doctor.probe_tensorrt.cache_clear()

    import vit_deploy.trt as vit_deploy_trt

    clear()
    yield
    clear()


def test_builder_and_runtime_nullptr_become_engine_unavailable_in_one_line():
    from vit_deploy.trt.build import create_builder
    from vit_deploy.trt.plan import create_runtime

    fake = _NullFactory()
    for create in (create_builder, create_runtime):
        with pytest.raises(EngineUnavailable) as e:
            create(fake, logger=None)
        message = str(e.value)
        assert "\n" not in message and "factory function returned nullptr" in message
        assert "TensorRT 11.4.0.106" in message and "nvidia-smi" in message and e.value.exit_code == 3


def test_unavailable_reason_is_computed_once(monkeypatch, fresh_probe):
    """Audit point 2: a Builder per question cost a CUDA context each time (up to four per runner)."""
    fake = _NullFactory()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    first = unavailable_reason_now()
    assert "factory function returned nullptr" in first and "\n" not in first
    for _ in range(4):
        assert unavailable_reason_now() == first
    assert fake.builders == 1


def unavailable_reason_now():
    import vit_deploy.trt

    return vit_deploy.trt.unavailable_reason()


def test_missing_library_is_named_not_called_not_installed(monkeypatch, fresh_probe):
    """Audit point 2: bindings installed, libnvinfer.so.11 absent: say which library and how to get it."""
    import vit_deploy.trt
    from vit_deploy.trt import missing_library

    error = ImportError("libnvinfer.so.11: cannot open shared object file: No such file or directory")
    assert missing_library(error) == "libnvinfer.so.11"
    assert missing_library(ImportError("No module named 'tensorrt'")) is None

    def broken():
        raise error

    monkeypatch.setattr(vit_deploy.trt, "import_tensorrt", broken)
    reason = unavailable_reason_now()
    assert "libnvinfer.so.11" in reason and "not installed here" not in reason, reason
    assert "pip install" in reason and "\n" not in reason


def test_no_tensorrt_at_all_says_not_installed_with_the_command(monkeypatch, fresh_probe):
    import vit_deploy.trt

    def absent():
        raise ModuleNotFoundError("No module named 'tensorrt_bindings'", name="tensorrt_bindings")

    monkeypatch.setattr(vit_deploy.trt, "import_tensorrt", absent)
    reason = unavailable_reason_now()
    assert reason.startswith("TensorRT is not installed here") and "pip install tensorrt-cu1" in reason


# --- one table of compatibility rules for Python and C++ (examples/cpp/compat.hpp) -------------


def test_python_follows_the_shared_compatibility_table():
    from vit_deploy.trt.plan import compatibility_rules

    rules = compatibility_rules()
    for case in rules["version_cases"]:
        assert version_allowed(case["built"], case["running"], case["version_compatible"]) is case["allowed"], case
    for case in rules["capability_cases"]:
        assert capability_allowed(case["built"], case["running"], case["hardware_compatible"]) is case["allowed"], case
