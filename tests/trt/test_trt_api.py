"""The TensorRT API as our code uses it, checked against the real TensorRT 11.4 bindings, without a GPU.

The bindings wheel (``tensorrt-cu13-bindings``) imports once TensorRT's three shared libraries
exist; ``tests/trt/trt_stubs.py`` builds stand-ins whose functions only return NULL, from the
bindings' own undefined symbols. In a subprocess (``LD_LIBRARY_PATH`` must be set before the
interpreter starts) ``tests/trt/trt_api_check.py`` then collects every TensorRT name and call in
vit_deploy's source by AST and holds it against the real classes, enum members, properties and
pybind11 signatures. The same subprocess setup drives every error path that is reachable
without a GPU and requires our typed error, in one line.

Everything skips, with the reason, when there is no C compiler, no ``nm``, or no way to get the
wheel (it is taken from this environment, else fetched once with ``pip download``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trt_stubs
from helpers import ROOT
from trt_api_check import collect


@pytest.fixture(scope="module")
def bindings() -> Path:
    if trt_stubs.tool("nm") is None:
        pytest.skip("no nm (binutils) to list the symbols the bindings need")
    found = trt_stubs.bindings_dir()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="module")
def stubs(bindings, tmp_path_factory) -> Path:
    symbols = trt_stubs.needed_symbols(bindings / "tensorrt_bindings" / "tensorrt.so")
    assert "createInferBuilder_INTERNAL" in symbols and "createNvOnnxParser_INTERNAL" in symbols, symbols
    built = trt_stubs.build_stubs(tmp_path_factory.mktemp("trt-stubs"), symbols)
    if isinstance(built, str):
        pytest.skip(built)
    return built


def run_python(code_or_args: str | list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def api_report(stubs: Path, bindings: Path, *files: Path) -> dict:
    script = [str(ROOT / "tests" / "trt" / "trt_api_check.py"), *map(str, files)]
    r = run_python(script, trt_stubs.bindings_env(stubs, bindings))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_every_tensorrt_name_and_call_exists_in_the_real_bindings(stubs, bindings):
    report = api_report(stubs, bindings)
    assert report["version"] == "11.4.0.106"
    assert report["problems"] == []
    uses = set(report["uses"])
    # the inference reaches every object kind our code touches (a regression here means lost coverage)
    for expected in (
        "path trt.BuilderFlag.TF32", "path trt.Logger.ERROR", "path trt.LayerInformationFormat.JSON",
        "call trt.Builder", "call trt.Runtime", "call trt.OnnxParser",
        "call Builder.create_network", "call OnnxParser.parse_from_file", "attr OnnxParser.num_errors",
        "call IOptimizationProfile.set_shape", "call IBuilderConfig.set_timing_cache(ignore_mismatch)",
        "set IBuilderConfig.builder_optimization_level", "set Runtime.engine_host_code_allowed",
        "call Runtime.deserialize_cuda_engine", "call ICudaEngine.get_tensor_profile_shape",
        "call IExecutionContext.execute_async_v3", "call IExecutionContext.set_tensor_address",
        "set EngineInspector.execution_context", "call EngineInspector.get_layer_information",
        "call ITimingCache.serialize",
    ):
        assert expected in uses, expected
    counts = report["counts"]
    assert counts["paths"] >= 20 and counts["calls"] >= 35, counts


def test_parser_error_accessors_exist(stubs, bindings):
    from vit_deploy.trt.build import PARSER_ERROR_FIELDS

    code = f"from vit_deploy.trt import import_tensorrt; t = import_tensorrt(); " \
           f"print([f for f in {PARSER_ERROR_FIELDS!r} if not hasattr(t.ParserError, f)])"
    r = run_python(code, trt_stubs.bindings_env(stubs, bindings))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


TYPOS = '''
from vit_deploy.trt import import_tensorrt


def build(builder_config_bytes):
    trt = import_tensorrt()
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    config = builder.create_builder_config()
    config.set_memory_pool_limt(trt.MemoryPoolType.WORKSPACE, 1)
    config.clear_flag(trt.BuilderFlag.TF33)
    config.set_timing_cache(config.create_timing_cache(builder_config_bytes), ignore_missmatch=False)
    config.builder_optimisation_level = 3
'''


def test_the_check_catches_misspelt_names_and_keywords(stubs, bindings, tmp_path):
    source = tmp_path / "typos.py"
    source.write_text(TYPOS)
    problems = api_report(stubs, bindings, source)["problems"]
    assert len(problems) == 4, problems
    for needle in ("set_memory_pool_limt", "BuilderFlag.TF33", "ignore_missmatch", "builder_optimisation_level"):
        assert any(needle in p for p in problems), (needle, problems)


def test_collection_reads_types_from_the_source_alone():
    """Without the bindings the collector still sees paths and annotated receivers (no hand-written list)."""
    uses = {u.key for u in collect([ROOT / "vit_deploy" / "trt" / "build.py"])}
    assert "path trt.BuilderFlag.TF32" in uses
    assert "call IBuilderConfig.set_timing_cache(ignore_mismatch)" in uses  # typed by its annotation
    assert "call trt.Builder" in uses


ERROR_PATHS = '''
import json, sys, tempfile
from pathlib import Path

from vit_deploy.errors import VitDeployError

results = {}


def attempt(name, fn):
    try:
        fn()
        results[name] = ["no error", ""]
    except VitDeployError as e:
        results[name] = [type(e).__name__, str(e)]
    except BaseException as e:
        results[name] = ["UNTYPED " + type(e).__name__, str(e)]


from vit_deploy.trt import LogCollector, trt_logger
from vit_deploy.trt.probe import unavailable_reason
from vit_deploy.trt.build import build_serialized_engine
from vit_deploy.trt.plan import TrtEngine, check_compatible, deserialize
from vit_deploy.trt.inspector import engine_summary

graph = Path(tempfile.mkdtemp()) / "model.onnx"
graph.write_bytes(b"not needed: TensorRT cannot start")
collector = LogCollector()
attempt("build_serialized_engine", lambda: build_serialized_engine(
    graph, input_name="images", chw=(3, 32, 32), min_batch=1, opt_batch=2, max_batch=4, workspace_mib=None,
    optimization_level=3, timing_cache=None, hardware_compatible=False, version_compatible=False))
attempt("deserialize", lambda: deserialize(b"plan", trt_logger(collector), collector, "plan bytes"))
attempt("TrtEngine", lambda: TrtEngine(b"plan"))
attempt("engine_summary", lambda: engine_summary(b"plan"))
attempt("check_compatible", lambda: check_compatible({"version": "11.4.0.106", "compute_capability": "9.0"}))
print(json.dumps({"reason": unavailable_reason(), "results": results}))
'''


def test_error_paths_without_a_gpu_are_typed_and_one_line(stubs, bindings):
    r = run_python(ERROR_PATHS, trt_stubs.bindings_env(stubs, bindings))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    reason = out["reason"]
    assert "TensorRT 11.4.0.106 is installed but could not start" in reason and "nullptr" in reason
    assert "\n" not in reason
    for name, (kind, message) in out["results"].items():
        assert kind == "EngineUnavailable", (name, kind, message)
        assert "\n" not in message and "TensorRT 11.4.0.106" in message, (name, message)


def test_doctor_reports_the_bindings_and_why_no_engine(stubs, bindings):
    r = run_python(["-m", "vit_deploy.cli", "doctor", "--json"], trt_stubs.bindings_env(stubs, bindings))
    assert r.returncode == 0, r.stderr[-3000:]
    t = json.loads(r.stdout)["tensorrt"]
    assert t["bindings"] == "tensorrt-cu13-bindings 11.4.0.106" and t["version"] == "11.4.0.106"
    assert set(t["libraries"].values()) == {"loaded"} and not t["ok"]
    assert "nullptr" in t["builder"] and "nvidia-smi" in t["reason"]


@pytest.mark.parametrize("present", [(), ("libnvinfer.so.11", "libnvinfer_plugin.so.11")])
def test_a_missing_tensorrt_library_is_named(stubs, bindings, present, tmp_path):
    """Audit point 2: bindings installed, libraries not: the message names the library, not "not installed"."""
    partial = tmp_path / "libs"
    partial.mkdir()
    for lib in present:
        (partial / lib).symlink_to(stubs / lib)
    code = "from vit_deploy.trt.probe import unavailable_reason; print(unavailable_reason())"
    r = run_python(code, trt_stubs.bindings_env(partial, bindings))
    assert r.returncode == 0, r.stderr[-2000:]
    reason = r.stdout.strip()
    assert "libnvonnxparser.so.11" in reason and "not installed here" not in reason, reason
    assert "pip install tensorrt-cu13-libs==11.4.0.106" in reason
    for lib in present:
        assert lib not in reason, reason
