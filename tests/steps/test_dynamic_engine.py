"""The engine step on a ``--dynamic-res`` graph: one optimization profile over batch, height and width.

What is provable without a GPU runs everywhere: the profile asked of TensorRT (min/max from the export's
range, opt at the native size, each overridable within it), every refusal as one line before TensorRT
is needed. The ``gpu`` tests build the engine and check parity at several sizes and the refusal of a size
outside its profile; they skip, with the reason, where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from vit_deploy.artifact import open as open_artifact
from vit_deploy.errors import EngineUnavailable, UsageError
from vit_deploy.specs import ResolutionRange
from vit_deploy.steps.engine import EngineOptions, build_engine_artifact, profile_sizes
from vit_deploy.trt.build import profile_shapes

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def no_tensorrt(monkeypatch):
    import vit_deploy.trt.probe

    monkeypatch.setattr(vit_deploy.trt.probe, "unavailable_reason", lambda: "TensorRT is not installed here")


def test_the_profile_spans_the_export_range_with_opt_at_the_native_size(tiny_dynamic):
    graph = open_artifact(tiny_dynamic["fp16"])
    sizes, covered = profile_sizes(EngineOptions(graph.directory), graph)
    assert sizes == [(16, 16), (32, 32), (64, 64)]
    assert covered == ResolutionRange(min=16, max=64, step=8, native=32)
    assert profile_shapes("images", graph.chw, 1, 8, 64, sizes) == {
        "images": {"min": [1, 3, 16, 16], "opt": [8, 3, 32, 32], "max": [64, 3, 64, 64]}}


def test_min_opt_and_max_can_be_narrowed_inside_the_range(tiny_dynamic):
    graph = open_artifact(tiny_dynamic["fp16"])
    sizes, covered = profile_sizes(EngineOptions(graph.directory, min_res=24, opt_res=(40, 24), max_res=48), graph)
    assert sizes == [(24, 24), (40, 24), (48, 48)]
    assert (covered.min, covered.max, covered.native) == (24, 48, 32)
    assert profile_sizes(EngineOptions(graph.directory, opt_res=48), graph)[0][1] == (48, 48)


@pytest.mark.parametrize(("options", "needle"), [
    ({"min_res": 20}, "--min-res 20 is not a size the export takes (height and width each a multiple of 8 from 16 "
                      "to 64); nearest: 16 or 24"),
    ({"max_res": 72}, "--max-res 72 is not a size the export takes"),
    ({"opt_res": (32, 36)}, "--opt-res 36 is not a size"),
    ({"min_res": 40}, "leave out the native size 32"),
    ({"max_res": 24}, "leave out the native size 32"),
    ({"max_res": 40, "opt_res": 48}, "--opt-res 48x48 is outside the profile's 16 to 40"),
])
def test_a_profile_outside_the_export_range_is_refused_before_tensorrt(tiny_dynamic, tmp_path, no_tensorrt, options,
                                                                      needle):
    with pytest.raises(UsageError) as e:
        build_engine_artifact(EngineOptions(tiny_dynamic["fp16"], tmp_path / "engine", **options))
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "engine").exists()


def test_sizes_on_a_fixed_export_are_refused(tiny_artifacts, tmp_path, no_tensorrt):
    with pytest.raises(UsageError, match="--opt-res set the image sizes of a dynamic-resolution engine"):
        build_engine_artifact(EngineOptions(tiny_artifacts["fp16"], tmp_path / "engine", opt_res=32))


def test_cli_checks_the_sizes_first_and_stops_with_exit_3_without_tensorrt(tiny_dynamic, tmp_path, run_cli,
                                                                           no_tensorrt):
    code, _, err = run_cli("build-engine", str(tiny_dynamic["fp16"]), "--min-res", "20", "--out", str(tmp_path / "a"))
    assert code == 1 and "nearest: 16 or 24" in err
    code, _, err = run_cli("build-engine", str(tiny_dynamic["fp16"]), "--opt-res", "4x4x4",
                           "--out", str(tmp_path / "b"))
    assert code == 1 and "is not N or HxW" in err
    code, _, err = run_cli("build-engine", str(tiny_dynamic["fp16"]), "--opt-res", "40x24", "--max-res", "48",
                           "--out", str(tmp_path / "c"))
    assert code == 3 and "TensorRT is not installed here" in err
    assert not (tmp_path / "c").exists()


def test_profile_shapes_must_be_ordered():
    with pytest.raises(UsageError, match="min <= opt <= max"):
        profile_shapes("images", (3, 32, 32), 1, 2, 4, [(32, 32), (16, 16), (64, 64)])


# --------------------------------------------------------------------------------------------
# Real engines (GPU hosts only)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dynamic_engine(tiny_dynamic, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dyn-trt") / "engine"
    return build_engine_artifact(EngineOptions(tiny_dynamic["fp16"], out, min_batch=1, opt_batch=2, max_batch=4,
                                               max_res=48))


@pytest.mark.gpu
def test_dynamic_engine_records_its_profile_and_passes_at_every_size(dynamic_engine):
    m = dynamic_engine["manifest"]
    assert m["tensorrt"]["profile"] == {"images": {"min": [1, 3, 16, 16], "opt": [2, 3, 32, 32],
                                                   "max": [4, 3, 48, 48]}}
    assert (m["dynamic_resolution"]["min"], m["dynamic_resolution"]["max"]) == (16, 48)
    v = dynamic_engine["validation"]
    assert v["passed"], v["failures"]
    assert [tuple(s) for s in v["image_sizes"]] == [(32, 32), (16, 16), (48, 48), (16, 48), (32, 40)]


@pytest.mark.gpu
def test_dynamic_engine_runs_any_size_in_its_profile_and_names_the_profile_otherwise(dynamic_engine, tiny_dynamic):
    from vit_deploy import runtime
    from vit_deploy.images.synthetic import random_images
    from vit_deploy.specs import Preprocessing

    prep = Preprocessing(32, 32)
    items = [random_images(1, 24, prep, seed=1, width=40), random_images(3, 48, prep, seed=2, width=16)]
    with runtime.open(dynamic_engine["artifact"]) as engine, runtime.open(tiny_dynamic["fp32"], "pytorch") as ref:
        out, expected = engine.infer(items), ref.infer(items)
        cosine = np.sum(out * expected, -1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(expected, axis=-1)
        assert out.shape == (4, 5) and cosine.min() >= 0.9999
        with pytest.raises(UsageError, match="width 64 -> 48"):
            engine.infer(random_images(1, 32, prep, width=64))  # in the export's range, outside this profile
        with pytest.raises(UsageError, match="outside this engine's profile: height 16 to 48"):
            engine.engine.infer(random_images(1, 32, prep, width=64))  # the engine's own check


def test_engine_unavailable_is_exit_3(tiny_dynamic, tmp_path, no_tensorrt):
    with pytest.raises(EngineUnavailable) as e:
        build_engine_artifact(EngineOptions(tiny_dynamic["fp16"], tmp_path / "engine"))
    assert e.value.exit_code == 3


def test_build_engine_checks_the_profile_sizes_before_making_the_precision_graph(tiny_dynamic, tmp_path, run_cli):
    code, _, err = run_cli("build-engine", str(tiny_dynamic["fp32"]), "--fp16", "--max-res", "80",
                           "--out", str(tmp_path / "fp16"))
    assert code == 1 and "--max-res 80 is not a size the export takes" in err
    assert not (tmp_path / "fp16").exists()
