"""INT8 and FP8 on a real trained ViT and real photos: the truth for precision (random weights hid a
3-6 point loss).

Uses ../shared/realdata (a trained ViT-Ti/16 and 500 labelled ImageNet photos) when present and
skips, saying why, when not. Protocol: the rows of labels.csv in file order, even rows calibrate
(250 photos), odd rows score (250 photos no calibration touched), against the PyTorch FP32 model,
with ``build-engine``'s defaults. The export uses the model's own preprocessing (crop_pct 0.9).

The asserted floors are where the recipes stand today (docs/precision.md, measured on 1,252 held-out
photos), not the issue's goals; the old INT8 recipe (ONNX Runtime's quantizer) scored mean cosine
0.93 and agreement 86-90% here and fails every one of them.
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
# where the FP8 recipe stands on these 250 photos (docs/precision.md)
FP8_FLOOR = {"mean_cosine": 0.994, "top1_agreement": 0.94}


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
    export_artifact(ExportOptions("ti16", 224, weights=str(WEIGHTS), out_dir=out, crop_pct=0.9))
    return out


def test_int8_of_a_real_vit_on_held_out_photos(fp32, split, tmp_path):
    calib, val = split
    s = build_precision_artifact(PrecisionOptions("int8", fp32, tmp_path / "int8", calib=str(calib),
                                                  val_images=str(val)))
    m = read_manifest(s["artifact"])
    metrics, policy = s["validation"]["metrics"], m["precision_policy"]
    assert m["calibration"]["images"] == 250 and metrics["reference_accuracy"] > 0.75  # the FP32 model is real
    # at least 90% of the weight layers (patch embedding, qkv, proj, fc1, fc2, head) in INT8
    assert policy["weight_layers_quantized_fraction"] >= 0.9 and len(policy["float_layers"]) <= 5
    # what TensorRT will run: INT8 GEMMs, FP16 everything else but LayerNorm (before issue 18: 242 FP32 ops)
    readiness = m["tensorrt_readiness"]
    assert readiness["fp32_compute_outside_policy"] == 0 and readiness["gemm_precisions"]["int8"] >= 45
    # where the recipe stands (docs/precision.md): far from the old 0.93 / 86-90%
    assert metrics["mean_cosine"] >= 0.996
    assert metrics["top1_agreement"] >= 0.95
    assert metrics["accuracy_drop_points"] <= 3.0
    assert_verdict_is_the_bounds(s, "int8")

    # --target cpu: the same ranges from the cache, FP32 float parts (what OpenVINO runs fastest)
    cpu = build_precision_artifact(PrecisionOptions("int8", fp32, tmp_path / "int8-cpu", calib=str(calib),
                                                    target="cpu"))
    cpu_manifest = read_manifest(cpu["artifact"])
    assert cpu_manifest["precision_policy"]["calibration_cache"]["reused"] is True
    assert cpu_manifest["tensorrt_readiness"]["gated"] is False  # FP32 floats are its purpose, not a failure
    assert set(attention_matmuls(onnx.load(str(fp32 / "model.onnx")))) <= set(policy["excluded_nodes"])


def test_fp8_of_a_real_vit_on_held_out_photos(fp32, split, tmp_path):
    """FP8 end to end on the real model: calibrated, validated on ONNX Runtime (which runs FP8 Q/DQ on the
    CPU) against the PyTorch model, every weight GEMM but the patch embedding (and the fallback's) FP8."""
    calib, val = split
    s = build_precision_artifact(PrecisionOptions("fp8", fp32, tmp_path / "fp8", calib=str(calib),
                                                  val_images=str(val)))
    m = read_manifest(s["artifact"])
    metrics, policy = s["validation"]["metrics"], m["precision_policy"]
    assert policy["format"] == "fp8" and policy["weight_layers_quantized_fraction"] >= 0.9
    graph = onnx.load(s["model_file"]).graph
    assert sum(t.data_type == onnx.TensorProto.FLOAT8E4M3FN for t in graph.initializer) >= 45
    readiness = m["tensorrt_readiness"]
    assert readiness["fp32_compute_outside_policy"] == 0 and readiness["gemm_precisions"]["fp8"] >= 45
    assert metrics["mean_cosine"] >= FP8_FLOOR["mean_cosine"]
    assert metrics["top1_agreement"] >= FP8_FLOOR["top1_agreement"]
    assert metrics["accuracy_drop_points"] <= 3.0
    assert_verdict_is_the_bounds(s, "fp8")


def assert_verdict_is_the_bounds(summary: dict, precision: str) -> None:
    """The verdict is the precision's bounds applied to these numbers, whichever way they fall."""
    from vit_deploy.specs import tolerance

    metrics, tol = summary["validation"]["metrics"], tolerance(precision)
    expected = (metrics["mean_cosine"] >= tol.min_mean_cosine and metrics["top1_agreement"] >= tol.min_top1_agreement
                and metrics["accuracy_drop_points"] <= tol.max_accuracy_drop)
    assert summary["validation"]["passed"] == expected
