"""The benchmark machinery (not the speed) on the tiny ``test`` variant: FLOP count, ceilings,
workers and the round-robin schedule, the result's structure, table, JSON, plot, build cost."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import PHOTOS, cpu_int8_floor

from vit_deploy.bench.backends import ROWS, Row, find_artifacts, select_rows
from vit_deploy.bench.build_cost import BuildOptions, format_build, run_build_cost
from vit_deploy.bench.ceiling import ceiling_key, measure_ceilings
from vit_deploy.bench.flops import PUBLISHED_GFLOP, counted_flops, model_flops
from vit_deploy.bench.report import PLOT_MISSING, format_table, plot, targets, write_outputs
from vit_deploy.bench.run import BenchOptions, check_options, run_bench
from vit_deploy.errors import UsageError
from vit_deploy.model.vit import VisionTransformer, create_model
from vit_deploy.specs import model_config

BACKENDS = ("pytorch-fp32", "ort-fp32", "ort-int8", "tensorrt-fp16", "broken")
BATCHES = (1, 3)


# -- FLOPs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("res", [224, 384])
def test_flops_match_the_published_b16_figures(res):
    gflop = model_flops(model_config("b16", res))["gflop"]
    assert gflop == pytest.approx(PUBLISHED_GFLOP[("b16", res)], rel=0.005)


def test_flops_match_torch_flop_counter():
    """The independent count: torch's FlopCounterMode on the reference model as written."""
    tiny = model_config("test", 32, 5)
    assert model_flops(tiny)["total"] == counted_flops(create_model(tiny), 32)
    b16 = model_config("b16", 224)
    with torch.device("meta"):  # the full-size model, without its memory or compute
        model = VisionTransformer(b16)
    assert model_flops(b16)["total"] == counted_flops(model, 224)


def test_flops_breakdown_adds_up():
    f = model_flops(model_config("b16", 384))
    assert sum(f["breakdown"].values()) == f["total"]
    assert f["breakdown"]["mlp"] == 12 * f["per_block"]["mlp"]


# -- ceilings -------------------------------------------------------------------------------
def test_ceilings_are_measured_quickly_on_tiny_shapes():
    c = measure_ceilings(("fp32", "bf16", "int8", "tf32"), [(64, 32, 64)], threads=1, min_time=0.005, repeats=2)
    for p in ("fp32", "bf16", "int8"):
        assert c[p]["gflops"] > 0 and c[p]["shape"] == [64, 32, 64] and c[p]["method"]
    assert c["int8"]["method"].startswith("onnxruntime") and len(c["int8"]["runs"]) == 2  # uint8 and int8 inputs
    assert c["tf32"]["gflops"] is None and "CUDA" in c["tf32"]["error"]  # not measurable on a CPU: said, not raised
    assert ceiling_key("fp16", "cpu") == "bf16" and ceiling_key("fp16", "cuda") == "fp16"


# -- user errors ----------------------------------------------------------------------------
def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(UsageError) as e:
        select_rows("pytorch-fp32,onnx-fast")
    assert "onnx-fast" in str(e.value)
    assert all(name in str(e.value) for name in ROWS)


def test_bad_options_are_usage_errors(tiny_artifacts, tmp_path):
    from vit_deploy.cli.bench import parse_batch_sizes

    with pytest.raises(UsageError, match="batch"):
        parse_batch_sizes("1,eight")
    with pytest.raises(UsageError, match="batch sizes"):
        check_options(BenchOptions(artifacts=(tiny_artifacts["fp32"],), batch_sizes=(0, 8)))
    with pytest.raises(UsageError, match="does not exist"):
        find_artifacts([tmp_path / "nothing-here"])


def test_cli_commands_refuse_bad_input_before_starting_anything(tiny_artifacts):
    from click.testing import CliRunner

    from vit_deploy.cli.bench import bench, bench_build

    r = CliRunner().invoke(bench, [str(tiny_artifacts["fp32"]), "--backends", "nope"])
    assert isinstance(r.exception, UsageError) and "pytorch-fp32" in str(r.exception)
    r = CliRunner().invoke(bench_build, ["--model", "test", "--res", "32", "--phases", "fp16"])
    assert isinstance(r.exception, UsageError) and "export" in str(r.exception)


def test_artifacts_are_found_through_parent_links_and_siblings(tiny_artifacts):
    found, notes = find_artifacts([tiny_artifacts["int8"]])
    assert found["fp32"] == tiny_artifacts["fp32"].absolute()
    assert found["fp16"] == tiny_artifacts["fp16"].absolute()
    assert any("parent" in n for n in notes)


# -- the run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def result(tiny_artifacts):
    # "broken" is a registry entry whose backend does not exist: adding a row is one entry, and a
    # row that cannot open is reported as failed with the reason, not fatal.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ROWS, "broken", Row("broken", "fp32", {"backend": "no-such-backend"}, "fp32"))
        opts = BenchOptions(artifacts=(tiny_artifacts["fp32"],), backends=BACKENDS, batch_sizes=BATCHES, threads=1,
                            repeats=2, min_time=0.02, warmup=1, settle=0.0, ceiling_shapes=((64, 32, 64),),
                            ceiling_min_time=0.005)
        return run_bench(opts)


def test_result_structure(result):
    rows = {e["name"]: e for e in result["rows"]}
    assert list(rows) == list(BACKENDS)
    assert rows["tensorrt-fp16"]["status"] == "skipped" and "cuda" in rows["tensorrt-fp16"]["reason"]
    assert rows["broken"]["status"] == "failed" and "no-such-backend" in rows["broken"]["reason"]
    assert result["model"]["gflop_per_image"] > 0 and result["model"]["flops"]["total"] > 0
    assert {"fp32", "bf16", "int8"} <= set(result["ceilings"])
    for name in ("pytorch-fp32", "ort-fp32", "ort-int8"):
        e = rows[name]
        assert e["status"] == "ok", e["reason"]
        assert e["ceiling"] == {"ort-int8": "int8"}.get(name, "fp32")
        assert [r["batch"] for r in e["results"]] == list(BATCHES)
        for r in e["results"]:
            assert r["status"] == "ok"
            assert r["img_per_s"] > 0 and r["img_per_s_min"] <= r["img_per_s"] <= r["img_per_s_max"]
            lat = r["latency_ms"]
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
            assert r["blocks"] == 2 and r["calls"] == 2 * r["calls_per_block"]
            assert r["peak_rss_mib"] > 0
            assert r["gflops"] == pytest.approx(r["img_per_s"] * result["model"]["gflop_per_image"], rel=1e-3)
            assert r["ceiling_fraction"] > 0
            assert r["best_peer"] is None  # no peer row in this run
    for batch_index in range(len(BATCHES)):
        base = rows["pytorch-fp32"]["results"][batch_index]
        assert base["vs_baseline"] == 1.0
        other = rows["ort-fp32"]["results"][batch_index]
        assert other["vs_baseline"] == pytest.approx(other["img_per_s"] / base["img_per_s"], rel=1e-2)
    json.dumps(result)  # all of it serialisable


def test_table_json_and_plot(result, tmp_path):
    table = format_table(result)
    for name in BACKENDS:
        assert name in table
    written = write_outputs(result, tmp_path)
    assert json.loads(Path(written["json"]).read_text())["rows"] == result["rows"]
    assert "pytorch-fp32" in Path(written["markdown"]).read_text()
    pytest.importorskip("matplotlib")
    assert written["plot_note"] is None
    assert Path(written["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_is_skipped_with_a_note_without_matplotlib(result, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert plot(result, tmp_path / "x.png") == PLOT_MISSING
    assert not (tmp_path / "x.png").exists()


def test_targets_speak_to_what_was_measured(result):
    t = targets(result)
    assert t[0]["met"] in (True, False) and t[0]["measured"].endswith("x")  # batch 1: both rows ran
    assert t[1]["met"] is None  # batch 8 was not in this run


# -- build cost -----------------------------------------------------------------------------
def test_build_cost_phases(tmp_path):
    summary = run_build_cost(BuildOptions("test", 32, num_classes=5, calib=str(PHOTOS), work_dir=tmp_path / "w"))
    phases = {p["phase"]: p for p in summary["phases"]}
    assert list(phases) == ["export", "fp16", "int8"]
    for p in phases.values():
        assert p["status"] == "ok", p.get("error")
        assert p["wall_s"] > 0 and p["work_s"] > 0 and p["peak_rss_mib"] > 0 and p["validation_passed"]
        assert all(s["s"] >= 0 and s["peak_rss_mib"] > 0 for s in p["steps"])
    steps = [s["step"] for s in phases["export"]["steps"]]
    assert any(s.startswith("Exporting to ONNX") for s in steps) and any(s.startswith("Simplifying") for s in steps)
    assert not any("cached" in s["step"] for s in phases["int8"]["steps"])  # calibration ran, not a cache hit
    assert [t["met"] for t in summary["targets"]] == [True, True]
    assert "Exporting to ONNX" in format_build(summary)


# -- the OpenVINO + NNCF INT8 peer that bench builds itself -----------------------------------
NNCF_ROW = "openvino-nncf-int8"
NNCF_MISSING = next((m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None), None)


def _nncf_opts(fp32: Path, **kw) -> BenchOptions:
    return BenchOptions(artifacts=(fp32,), backends=(NNCF_ROW,), batch_sizes=(2,), threads=1, repeats=1,
                        min_time=0.01, warmup=1, settle=0.0, ceiling=False, **kw)


def test_nncf_peer_is_skipped_with_the_reason_without_calib(tiny_artifacts):
    e = run_bench(_nncf_opts(tiny_artifacts["fp32"]))["rows"][0]
    assert e["name"] == NNCF_ROW and e["status"] == "skipped" and e["peer"]
    if NNCF_MISSING:
        assert f"{NNCF_MISSING} is not installed" in e["reason"]
    else:
        assert "--calib" in e["reason"]
    with pytest.raises(UsageError, match="does not exist"):
        check_options(_nncf_opts(tiny_artifacts["fp32"], calib="no/such/folder"))
    with pytest.raises(UsageError, match="calib-images"):
        check_options(_nncf_opts(tiny_artifacts["fp32"], calib=str(PHOTOS), calib_images=0))


@pytest.mark.skipif(NNCF_MISSING is not None, reason=f"{NNCF_MISSING} is not installed (pip install 'vit-deploy[cpu]')")
def test_nncf_peer_is_built_cached_and_close_to_fp32(tiny_artifacts, private_cache):
    import numpy as np
    import onnxruntime as ort

    from vit_deploy.artifact import read_manifest
    from vit_deploy.bench.workers import OpenVinoIrPeer
    from vit_deploy.images.sets import load_image_set
    from vit_deploy.specs import Preprocessing

    fp32 = tiny_artifacts["fp32"]
    first = run_bench(_nncf_opts(fp32, calib=str(PHOTOS)))
    e = first["rows"][0]
    assert e["status"] == "ok", e["reason"]
    assert e["peer"] and e["compute"] == "int8" and e["ceiling"] == "int8"
    assert e["built"]["cached"] is False and e["built"]["calibration"]["used"] > 0
    assert e["runner"]["backend"] == "openvino" and e["runner"]["model"] == e["built"]["model"]
    assert e["results"][0]["status"] == "ok" and e["results"][0]["img_per_s"] > 0
    assert first["calibration"]["source"] == str(PHOTOS)
    again = run_bench(_nncf_opts(fp32, calib=str(PHOTOS)))["rows"][0]
    assert again["status"] == "ok" and again["built"]["cached"] is True
    assert again["built"]["model"] == e["built"]["model"]

    # the built graph is INT8 and its logits follow the FP32 export's
    manifest = read_manifest(fp32)
    images = load_image_set(PHOTOS, Preprocessing.from_dict(manifest["preprocessing"])).images
    ref = ort.InferenceSession(str(fp32 / manifest["files"][0]["path"]),
                               providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    peer = OpenVinoIrPeer(fp32, 1, e["built"]["model"], None)
    got = np.array(peer.infer(images))
    peer.close()
    cos = np.sum(ref * got, -1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    assert cos.min() > cpu_int8_floor(0.99, 0.95), cos
    assert "FakeQuantize" in Path(e["built"]["model"]).read_text()


@pytest.mark.skipif(NNCF_MISSING is not None, reason=f"{NNCF_MISSING} is not installed (pip install 'vit-deploy[cpu]')")
def test_nncf_peer_rebuilds_a_damaged_cache_entry_and_builds_aside_when_the_cache_is_unwritable(
        tiny_artifacts, tmp_path, monkeypatch):
    """A corrupt model.xml/.bin or build.json failed the row forever ("could not open"); a cache that cannot
    be written failed it with OSError. Now a bad entry is a miss (rebuilt, replaced) and an unwritable
    cache builds in a temporary folder, removed after the run."""
    import shutil

    from vit_deploy.bench.peers import _cached

    monkeypatch.setenv("VIT_DEPLOY_CACHE", str(tmp_path / "cache"))
    fp32 = tiny_artifacts["fp32"]
    opts = _nncf_opts(fp32, calib=str(PHOTOS), calib_images=4)
    first = run_bench(opts)["rows"][0]
    assert first["status"] == "ok" and not first["built"]["cached"], first["reason"]
    folder, key = Path(first["built"]["model"]).parent, first["built"]["key"]
    assert _cached(folder, key) == (json.loads((folder / "build.json").read_text()), None)
    damages = {
        "model.xml": lambda p: p.write_text(p.read_text()[:200]),  # truncated
        "model.bin": lambda p: p.write_bytes(b"\0" * p.stat().st_size),  # same size, other bytes
        "build.json": lambda p: p.write_text("{not json"),
    }
    for name, damage in damages.items():
        copy = tmp_path / f"damaged-{name}" / folder.name
        shutil.copytree(folder, copy)
        damage(copy / name)
        record, why = _cached(copy, key)
        assert record is None and why.startswith(name), why

    (folder / "model.xml").write_text((folder / "model.xml").read_text()[:200])
    result = run_bench(opts)
    row = result["rows"][0]
    assert row["status"] == "ok" and row["built"]["cached"] is False and row["results"][0]["status"] == "ok"
    assert any(f"the cached model in {folder} was unusable (model.xml" in n for n in result["notes"]), result["notes"]
    assert _cached(folder, key)[0] is not None  # replaced whole: the next run reuses it

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("VIT_DEPLOY_CACHE", str(blocker / "cache"))  # nothing can be made under a file
    result = run_bench(opts)
    row = result["rows"][0]
    assert row["status"] == "ok" and row["results"][0]["status"] == "ok", row["reason"]
    assert any("cannot write the cache" in n and "temporary folder" in n for n in result["notes"]), result["notes"]
    assert not Path(row["built"]["temporary"]).exists()  # removed after the run
