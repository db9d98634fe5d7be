"""The INT8 commands a user meets: ``inspect --sensitivity`` and ``build-engine --int8``'s accuracy budget,
including the bad inputs that must end in one clear line and exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import PHOTOS

pytestmark = pytest.mark.usefixtures("private_cache")


def one_error_line(err: str) -> bool:
    """Progress lines may precede it; the failure itself is one ``error:`` line and no traceback."""
    return "Traceback" not in err and sum(line.startswith("error:") for line in err.splitlines()) == 1


def labelled_folder(tmp_path: Path, labels: bool) -> Path:
    from vit_deploy.images.sets import list_sources

    folder = tmp_path / ("labelled" if labels else "unlabelled")
    folder.mkdir()
    rows = []
    for i, (path, _) in enumerate(list_sources(PHOTOS)[:6]):
        shutil.copy(path, folder / path.name)
        rows.append(f"{path.name},{i % 5}\n")
    if labels:
        (folder / "labels.csv").write_text("file,label\n" + "".join(rows))
    return folder


def test_sensitivity_report_table_and_json(tiny_artifacts, run_cli, tmp_path):
    report = tmp_path / "sens.json"
    code, out, err = run_cli("inspect", str(tiny_artifacts["int8"]), "--sensitivity", "--calib", str(PHOTOS),
                             "--val", str(labelled_folder(tmp_path, True)), "--report", str(report))
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["artifact"] == str(tiny_artifacts["fp32"])  # an INT8 graph is measured from its export
    layers = {row["layer"] for row in data["layers"]}
    per_block = {f"blocks.{b}.{k}" for b in (0, 1) for k in ("qkv", "proj", "fc1", "fc2")}
    assert layers == {"patch_embed", "head"} | per_block
    for row in data["layers"]:
        for side in ("only", "all_but"):
            assert 0 <= row[side]["top1_agreement"] <= 1 and -1 <= row[side]["mean_cosine"] <= 1
            assert "accuracy" in row[side]
    # leaving a layer out can only help as much as the whole INT8 error: all-but is at least as close as
    # the full graph for the layer that matters most
    best = max(data["layers"], key=lambda row: row["all_but"]["mean_cosine"])
    assert best["all_but"]["mean_cosine"] >= data["quantized"]["mean_cosine"] - 1e-6
    tensors = data["tensors"]
    assert len(tensors) == 10 and all(0 <= t["clipped_fraction"] <= 1 and t["clip"] > 0 for t in tensors)
    assert "only this layer INT8" in out and "blocks.1.fc2" in out and "outliers" in out


def test_sensitivity_bad_inputs_are_one_line(tiny_artifacts, run_cli, tmp_path):
    code, _, err = run_cli("inspect", str(tiny_artifacts["fp32"]), "--sensitivity")
    assert code == 1 and "--sensitivity needs calibration images" in err and one_error_line(err)
    code, _, err = run_cli("inspect", str(tiny_artifacts["fp32"]), "--sensitivity", "--calib", str(PHOTOS),
                           "--val", str(labelled_folder(tmp_path, False)))
    assert code == 1 and "has no labels.csv" in err and one_error_line(err)
    code, _, err = run_cli("inspect", str(tiny_artifacts["fp16"]), "--sensitivity", "--calib", str(PHOTOS))
    assert code == 1 and "reads an FP32 export or an INT8/FP8 graph" in err


def test_calibration_set_smaller_than_a_batch_or_all_skipped(tiny_artifacts, run_cli, tmp_path):
    folder = labelled_folder(tmp_path, False)
    code, _, err = run_cli("build-engine", str(tiny_artifacts["fp32"]), "--int8", "--calib", str(folder),
                           "--calib-batch", "8", "--out", str(tmp_path / "a"))
    assert code == 1 and "fewer than the batch size 8" in err and one_error_line(err)
    for image in folder.iterdir():
        image.write_bytes(b"not an image")
    code, _, err = run_cli("build-engine", str(tiny_artifacts["fp32"]), "--int8", "--calib", str(folder),
                           "--out", str(tmp_path / "b"))
    assert code == 1 and "only 0 of 6 images are usable" in err and one_error_line(err)


def test_an_accuracy_budget_that_cannot_be_met(tiny_artifacts, run_cli, tmp_path, monkeypatch):
    out = tmp_path / "int8"
    code, _, err = run_cli("build-engine", str(tiny_artifacts["fp32"]), "--int8", "--calib", str(PHOTOS),
                           "--budget-cosine", "1", "--max-float-layers", "2", "--out", str(out))  # only FP32 meets it
    assert code == 1 and one_error_line(err)
    assert "misses the accuracy budget" in err and "2 layer(s) in float" in err and "blocks." in err
    # the hint names what governs a cosine miss, and the way to let validation alone decide
    assert "--budget-cosine (now 1.0; validation asks for 0.995)" in err and "--max-float-layers 0" in err
    assert "--accuracy-budget" not in err
    assert not out.exists()  # nothing that looks finished is left
    # --max-float-layers 0: no fallback; the all-INT8 graph is built and validation judges it (it passes here)
    code, _, err = run_cli("build-engine", str(tiny_artifacts["fp32"]), "--int8", "--calib", str(PHOTOS),
                           "--budget-cosine", "1", "--max-float-layers", "0", "--out", str(out))
    assert code == 3, err  # the graph is made and valid; no TensorRT here
    policy = json.loads((out / "manifest.json").read_text())["precision_policy"]
    assert policy["budget_check"] is None and policy["float_layers"] == []
    code, _, err = run_cli("build-engine", str(tiny_artifacts["fp32"]), "--int8", "--calib", str(PHOTOS),
                           "--max-float-layers", "-1", "--out", str(out))
    assert code == 1 and "'--max-float-layers': -1 is not in the range x>=0" in err
    code, _, err = run_cli("build-engine", str(tiny_artifacts["fp32"]), "--int8", "--calib", str(PHOTOS),
                           "--accuracy-budget", "150", "--out", str(out))
    assert code == 1 and "'--accuracy-budget': 150.0 is not in the range 0<=x<=100" in err


def test_labelled_validation_prints_and_records_the_intervals(tiny_artifacts, run_cli, tmp_path):
    out_dir = tmp_path / "int8"
    code, out, err = run_cli("build-engine", str(tiny_artifacts["fp32"]), "--int8", "--target", "cpu", "--calib",
                             str(PHOTOS), "--val", str(labelled_folder(tmp_path, True)), "--out", str(out_dir))
    assert code in (0, 2), err  # random weights: the verdict is not the point here, the report is
    line = next(line for line in out.splitlines() if line.strip().startswith("accuracy"))
    assert "limit 1.0; 95% intervals: drop " in line and ", agreement " in line
    metrics = json.loads((out_dir / "manifest.json").read_text())["validation"]["metrics"]
    low, high = metrics["accuracy_drop_ci95_low"], metrics["accuracy_drop_ci95_high"]
    assert low <= metrics["accuracy_drop_points"] <= high
    assert metrics["top1_agreement_ci95_low"] <= metrics["top1_agreement"] <= metrics["top1_agreement_ci95_high"]
