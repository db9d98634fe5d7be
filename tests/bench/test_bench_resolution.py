"""``vit-deploy bench-res``: a dynamic-resolution artifact timed at several sizes next to fixed exports."""

from __future__ import annotations

import json

import pytest

from vit_deploy.bench.resolution import ResolutionBenchOptions, plan, run_resolution_bench
from vit_deploy.errors import UsageError
from vit_deploy.steps.export import ExportOptions, export_artifact

FAST = {"threads": 1, "repeats": 2, "min_time": 0.02, "warmup": 1, "batch": 2}


@pytest.fixture(scope="module")
def fixed16(tmp_path_factory):
    return export_artifact(ExportOptions("test", 16, num_classes=5, out_dir=tmp_path_factory.mktemp("f") / "t16"))


def test_dynamic_and_fixed_are_timed_at_each_size(tiny_dynamic, tiny_artifacts, fixed16, tmp_path, run_cli):
    code, out, err = run_cli("bench-res", str(tiny_dynamic["fp32"]), fixed16["artifact"], str(tiny_artifacts["fp32"]),
                             "--sizes", "16,32,48", "--batch", "2", "--threads", "1", "--repeats", "2",
                             "--min-time", "0.02", "--warmup", "1", "--out", str(tmp_path / "res"))
    assert code == 0, err
    result = json.loads((tmp_path / "res" / "bench-res.json").read_text())
    table = {r["size"]: r for r in result["table"]}
    assert list(table) == [16, 32, 48]
    for size in (16, 32):
        r = table[size]
        assert r["dynamic_img_per_s"] > 0 and r["fixed_img_per_s"] > 0
        assert r["dynamic_over_fixed"] == pytest.approx(r["dynamic_img_per_s"] / r["fixed_img_per_s"], rel=1e-2)
    assert table[48]["fixed_img_per_s"] is None and table[48]["dynamic_img_per_s"] > 0  # no fixed export at 48
    assert table[48]["gflop_per_image"] > table[16]["gflop_per_image"]
    dynamic = next(e for e in result["rows"] if e["name"] == "dynamic")
    assert [r["size"] for r in dynamic["results"]] == [16, 32, 48]
    assert all(r["status"] == "ok" for r in dynamic["results"])
    assert "| 32x32 |" in out and "dynamic / fixed" in out
    assert (tmp_path / "res" / "bench-res.png").stat().st_size > 1000
    assert "![throughput vs resolution](bench-res.png)" in (tmp_path / "res" / "bench-res.md").read_text()


def test_default_sizes_are_the_fixed_ones_else_the_range_ends_and_native(tiny_dynamic, tiny_artifacts, fixed16):
    assert plan(ResolutionBenchOptions(tiny_dynamic["fp32"], (tiny_artifacts["fp32"], fixed16["artifact"])))[2] == [
        16, 32]
    assert plan(ResolutionBenchOptions(tiny_dynamic["fp32"]))[2] == [16, 32, 64]


@pytest.mark.parametrize(("args", "needle"), [
    (lambda a: (a["fixed"], ()), "is a fixed-resolution artifact; give a --dynamic-res one first"),
    (lambda a: (a["dynamic"], (a["dynamic"],)), "is a dynamic-resolution artifact too"),
    (lambda a: (a["dynamic"], (a["fp16"],)), "not the same model, weights and precision"),
])
def test_artifacts_that_do_not_compare_are_refused(tiny_dynamic, tiny_artifacts, args, needle):
    given = {"fixed": tiny_artifacts["fp32"], "dynamic": tiny_dynamic["fp32"], "fp16": tiny_artifacts["fp16"]}
    dynamic, fixed = args(given)
    with pytest.raises(UsageError, match=needle):
        plan(ResolutionBenchOptions(dynamic, fixed))


def test_sizes_outside_the_range_are_refused_before_anything_runs(tiny_dynamic, run_cli, tmp_path):
    with pytest.raises(UsageError, match="height 36 -> 32 or 40"):
        run_resolution_bench(ResolutionBenchOptions(tiny_dynamic["fp32"], sizes=(36,), **FAST))
    code, _, err = run_cli("bench-res", str(tiny_dynamic["fp32"]), "--sizes", "16x32", "--out", str(tmp_path))
    assert code == 1 and "square sizes" in err
