"""FP16 and INT8 graphs of a ``--dynamic-res`` export: they keep the range and validate at several sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import PHOTOS

from vit_deploy import runtime
from vit_deploy.artifact import read_manifest
from vit_deploy.images.synthetic import random_images
from vit_deploy.specs import Preprocessing

SIZES = [[32, 32], [16, 16], [64, 64], [16, 64], [40, 32]]


def test_fp16_and_int8_graphs_keep_the_range_and_pass_at_every_size(tiny_dynamic):
    for precision in ("fp16", "int8"):
        m = read_manifest(tiny_dynamic[precision])
        assert m["dynamic_resolution"] == read_manifest(tiny_dynamic["fp32"])["dynamic_resolution"]
        assert m["io"]["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
        v = m["validation"]
        assert v["image_sizes"] == SIZES and v["passed"], (precision, v["failures"])
        assert all(r["passed"] for r in v["rows"]) and len(v["rows"]) == len(SIZES)
    int8 = read_manifest(tiny_dynamic["int8"])
    # calibrated at the native size and both ends of the range, checked on the calibration photos at every size
    assert int8["calibration"]["sizes"] == [[32, 32], [16, 16], [64, 64]]
    inputs = int8["validation"]["inputs"]
    assert "calibration images at 32x32" in inputs and "images from" in inputs and "16x16" in inputs
    assert "(resized whole) at 16x64" in inputs  # real photos at the non-square sizes too


def test_the_graphs_run_at_sizes_they_were_not_checked_at(tiny_dynamic):
    images = random_images(4, 24, Preprocessing(32, 32), seed=5, width=56)
    with runtime.open(tiny_dynamic["fp32"], "pytorch") as ref:
        expected = ref.infer(images)
    for precision, bound in (("fp16", 0.9999), ("int8", 0.99)):
        with runtime.open(tiny_dynamic[precision]) as runner:
            out = runner.infer(images)
        cosine = np.sum(out * expected, -1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(expected, axis=-1)
        assert cosine.min() >= bound, (precision, cosine)


def test_int8_attention_rule_sees_the_largest_size(tiny_dynamic, tmp_path, monkeypatch, private_cache):
    """The TensorRT INT8 attention limit (512 tokens) must hold at the range's largest size, not the native one."""
    from vit_deploy.onnx import quantize
    from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

    seen = {}
    original = quantize.quantize

    def spy(*args, **kwargs):
        seen["num_tokens"] = kwargs["num_tokens"]
        return original(*args, **kwargs)

    monkeypatch.setattr(quantize, "quantize", spy)
    build_precision_artifact(PrecisionOptions("int8", tiny_dynamic["fp32"], tmp_path / "int8", calib=str(PHOTOS),
                                              calib_images=8, calib_batch=4))
    assert seen["num_tokens"] == (64 // 8) ** 2 + 1  # 65 at 64x64, not 17 at the native 32x32


def test_calibration_photos_score_no_accuracy_at_any_size(tiny_dynamic, tmp_path, private_cache):
    """A quantized graph checked on its own calibration photos: cosine and agreement at every size, accuracy at
    none (it was fitted to them), though the folder has labels; --val with the same labels scores it everywhere."""
    from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

    digits = Path(__file__).resolve().parents[2] / "assets" / "digits" / "heldout"
    labelled = tmp_path / "labelled"  # digits 0-4: the tiny model has 5 classes
    labelled.mkdir()
    rows = [line.split(",") for line in (digits / "labels.csv").read_text().splitlines()[1:]]
    kept = [(name, label) for name, label in rows if int(label) < 5][:16]
    for name, _ in kept:
        (labelled / name).symlink_to(digits / name)
    (labelled / "labels.csv").write_text("file,label\n" + "".join(f"{n},{label}\n" for n, label in kept))
    for val, scored in ((None, False), (str(labelled), True)):
        s = build_precision_artifact(PrecisionOptions("int8", tiny_dynamic["fp32"], tmp_path / f"int8-{scored}",
                                                      calib=str(labelled), calib_images=16, calib_batch=4,
                                                      val_images=val, max_float_layers=0))
        rows = s["validation"]["rows"]
        assert len(rows) == len(SIZES)
        assert all(("accuracy_drop_points" in r["metrics"]) is scored for r in rows), (val, rows)
