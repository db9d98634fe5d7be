"""INT8 on a real trained ViT and real photos: the truth for precision (random weights hid a 3-6 point loss).

Uses ../shared/realdata (a trained ViT-Ti/16 and 500 labelled ImageNet photos) when present and
skips, saying why, when not. Protocol (the same as docs/quantizers.md and docs/precision.md): the
rows of labels.csv in file order, even rows calibrate (250 photos), odd rows score (250 photos
no calibration touched), against the PyTorch FP32 model, with ``build-engine``'s defaults; and the
halves swapped.

The asserted floors are where the recipe stands today (docs/precision.md), not the goal (issue:
drop <= 0.5 point, agreement >= 97%, mean cosine >= 0.995); the old recipe (ONNX Runtime's
quantizer) scored mean cosine 0.93 and agreement 86-90% here and fails every one of them.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import onnx
import pytest

from vit_deploy.artifact import read_manifest
from vit_deploy.onnx.quantize import attention_matmuls
from vit_deploy.steps.export import ExportOptions, export_artifact
from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
WEIGHTS = REALDATA / "vit-ti16-augreg" / "model.safetensors"
PHOTOS = REALDATA / "imagenet-dev-500"

pytestmark = [
    pytest.mark.skipif(not (WEIGHTS.is_file() and (PHOTOS / "labels.csv").is_file()),
                       reason=f"real weights and photos not found at {REALDATA} (see ../shared/realdata/README.md)"),
    pytest.mark.usefixtures("private_cache"),
    pytest.mark.slow,  # about 3 minutes on 2 cores: CI runs it in its slow pass
]


@pytest.fixture(scope="module")
def halves(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """For the even and the odd rows: (a calibration definition file, a labelled folder to score on)."""
    root = tmp_path_factory.mktemp("realdata")
    with (PHOTOS / "labels.csv").open(newline="") as f:
        rows = [r for r in csv.reader(f)][1:]
    out = {}
    for parity, start in (("even", 0), ("odd", 1)):
        half = rows[start::2]
        calib = root / f"{parity}.txt"
        calib.write_text("".join(
            f"{hashlib.sha256((PHOTOS / name).read_bytes()).hexdigest()}  {PHOTOS / name}\n" for name, _ in half
        ))
        val = root / parity
        val.mkdir()
        for name, _ in half:
            (val / name).symlink_to(PHOTOS / name)
        (val / "labels.csv").write_text("file,label\n" + "".join(f"{n},{label}\n" for n, label in half))
        out[parity] = calib, val
    return out


@pytest.fixture(scope="module")
def split(halves) -> tuple[Path, Path]:
    """The protocol's split: calibrate on the even rows, score on the odd rows."""
    return halves["even"][0], halves["odd"][1]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ti16") / "ti16-224"
    export_artifact(ExportOptions("ti16", 224, weights=str(WEIGHTS), out_dir=out))
    return out


def test_int8_of_a_real_vit_on_held_out_photos(fp32, split, tmp_path):
    calib, val = split
    s = build_precision_artifact(PrecisionOptions("int8", fp32, tmp_path / "int8", calib=str(calib),
                                                  val_images=str(val)))
    m = read_manifest(s["artifact"])
    metrics, policy = s["validation"]["metrics"], m["precision_policy"]
    assert m["calibration"]["images"] == 250 and metrics["reference_accuracy"] > 0.75  # the FP32 model is real
    # at least 90% of the weight layers (patch embedding, qkv, proj, fc1, fc2, head) in INT8
    assert policy["weight_layers_int8_fraction"] >= 0.9 and len(policy["float_layers"]) <= 5
    graph = onnx.load(s["model_file"]).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 45
    # where the recipe stands (docs/precision.md): far from the old 0.93 / 86-90%
    assert metrics["mean_cosine"] >= 0.996
    assert metrics["top1_agreement"] >= 0.95
    assert metrics["accuracy_drop_points"] <= 3.0
    # the verdict is the INT8 bounds applied to these numbers, whichever way they fall
    from vit_deploy.specs import tolerance

    tol = tolerance("int8")
    expected = (metrics["mean_cosine"] >= tol.min_mean_cosine and metrics["top1_agreement"] >= tol.min_top1_agreement
                and metrics["accuracy_drop_points"] <= tol.max_accuracy_drop)
    assert s["validation"]["passed"] == expected

    # --target cpu: attention is float in both graphs, so it is the same graph, from the same cached ranges
    cpu = build_precision_artifact(PrecisionOptions("int8", fp32, tmp_path / "int8-cpu", calib=str(calib),
                                                    target="cpu"))
    cpu_manifest = read_manifest(cpu["artifact"])
    assert cpu_manifest["precision_policy"]["calibration_cache"]["reused"] is True
    assert cpu_manifest["files"][0]["sha256"] == m["files"][0]["sha256"]
    assert set(attention_matmuls(onnx.load(str(fp32 / "model.onnx")))) <= set(policy["excluded_nodes"])


def test_int8_defaults_on_the_other_half(fp32, halves, tmp_path):
    """Calibrate on the odd rows and score on the even ones: the defaults must not depend on which half
    a user happens to have (an agreement gate on the calibration images once refused this half outright)."""
    s = build_precision_artifact(PrecisionOptions("int8", fp32, tmp_path / "int8", calib=str(halves["odd"][0]),
                                                  val_images=str(halves["even"][1])))
    metrics, policy = s["validation"]["metrics"], read_manifest(s["artifact"])["precision_policy"]
    assert policy["weight_layers_int8_fraction"] >= 0.9
    assert metrics["mean_cosine"] >= 0.996 and metrics["top1_agreement"] >= 0.95
    assert metrics["accuracy_drop_points"] <= 3.0
