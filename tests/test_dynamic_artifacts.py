"""compare, predict and inspect on a ``--dynamic-res`` artifact: several sizes from one artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vit_deploy import runtime
from vit_deploy.images.decode import load_rgb, resize_to
from vit_deploy.images.sizes import fit_size


def _photos():
    skimage = pytest.importorskip("skimage", reason="the photos come with scikit-image")
    return [f"{skimage.data_dir}/chelsea.png", f"{skimage.data_dir}/rocket.jpg", f"{skimage.data_dir}/coffee.png"]


def test_compare_runs_at_the_sizes_asked_and_a_row_per_size(tiny_dynamic, run_cli):
    code, out, err = run_cli("compare", str(tiny_dynamic["fp16"]), "--sizes", "16,24x56,64", "--batch-sizes", "1,3",
                             "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["image_sizes"] == [[16, 16], [24, 56], [64, 64]]
    assert [(tuple(r["size"]), r["batch"]) for r in summary["rows"]] == [
        ((16, 16), 1), ((16, 16), 3), ((24, 56), 1), ((24, 56), 3), ((64, 64), 1), ((64, 64), 3)]
    assert summary["passed"]
    code, out, err = run_cli("compare", str(tiny_dynamic["fp16"]), "--sizes", "16,24x56")
    assert code == 0 and "  size  batch" in out and "24x56" in out, err


@pytest.mark.parametrize(("sizes", "needle"), [("36", "height 36 -> 32 or 40"), ("16x72", "width 72 -> 64"),
                                               ("0", "is not N or HxW")])
def test_compare_refuses_a_size_outside_the_range(tiny_dynamic, run_cli, sizes, needle):
    code, _, err = run_cli("compare", str(tiny_dynamic["fp16"]), "--sizes", sizes)
    assert code == 1 and needle in err, err


def test_compare_on_a_fixed_artifact_takes_its_size_only(tiny_artifacts, run_cli):
    code, _, err = run_cli("compare", str(tiny_artifacts["fp32"]), "--sizes", "16")
    assert code == 1 and "takes 32x32 images only" in err and "--dynamic-res" in err


def test_predict_keeps_each_photos_aspect_and_says_what_it_did(tiny_dynamic, run_cli):
    photos = _photos()
    code, out, err = run_cli("predict", str(tiny_dynamic["fp32"]), *photos, "--short-side", "24", "--json")
    assert code == 0, err
    results = json.loads(out)
    with runtime.open(tiny_dynamic["fp32"]) as runner:
        for path, r in zip(photos, results, strict=True):
            rgb = load_rgb(path)
            h, w, said = fit_size(rgb.shape[0], rgb.shape[1], 24, runner.size_range)
            assert r["input_size"] == [h, w] and r["resize"] == said and "shorter side to 24" in said
            logits = runner.infer(resize_to(rgb, h, w, runner.preprocessing)[None])[0]
            assert r["top"][0]["class"] == int(np.argmax(logits))
    assert results[0]["input_size"] != results[1]["input_size"]  # a 451x300 cat and a 427x640 rocket: two sizes
    code, out, err = run_cli("predict", str(tiny_dynamic["fp32"]), photos[0])
    assert code == 0 and "resized" in out and "shorter side to 32" in out, err


def test_predict_short_side_needs_a_dynamic_artifact_and_a_size_in_range(tiny_dynamic, tiny_artifacts, run_cli):
    photo = _photos()[0]
    code, _, err = run_cli("predict", str(tiny_artifacts["fp32"]), photo, "--short-side", "24")
    assert code == 1 and "a --dynamic-res export (this one is fixed)" in err
    code, _, err = run_cli("predict", str(tiny_dynamic["fp32"]), photo, "--short-side", "100")
    assert code == 1 and "its range 16 to 64" in err


def test_inspect_shows_the_symbolic_input(tiny_dynamic, run_cli):
    code, out, err = run_cli("inspect", str(tiny_dynamic["int8"]))
    assert code == 0, err
    assert "images [batch, 3, height, width]" in out
    assert "sizes     height and width each a multiple of 8 from 16 to 64 (native 32)" in out
