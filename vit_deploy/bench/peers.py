"""Peers that ``bench`` builds itself: OpenVINO + NNCF INT8 from the FP32 export and a calibration set.

The ``openvino-nncf-int8`` row is what a CPU user would pick instead of vit-deploy's INT8 CPU
path: the FP32 ONNX export read by OpenVINO, quantized with NNCF's post-training quantization
(``nncf.quantize(model, dataset, model_type=TRANSFORMER)``, its defaults otherwise, as NNCF's
docs show for transformers), run on OpenVINO's CPU plugin. ``bench`` builds it from the export
and the images given with ``--calib`` (a folder or a definition file, as ``build-engine`` takes
it; a seeded sample of ``--calib-images``, default 256, preprocessed as the export's manifest
says), one image per calibration item as NNCF's examples do.

The quantized IR is cached in the vit-deploy cache (``$VIT_DEPLOY_CACHE``, else
~/.cache/vit-deploy), under ``bench/openvino-nncf-int8-<key>``, the key a sha256 over the FP32
model file, the calibration set's digest (its files' contents and the preprocessing), the sample
size and seed, the settings and the NNCF and OpenVINO versions: a repeated run reuses it, any
change builds anew. An entry is used only when whole and intact (build.json lists the sha256 of
model.xml and model.bin); a damaged one is a miss, rebuilt and replaced. When the cache cannot be
written (read-only, full), the model is built in a temporary folder that ``bench`` removes after
the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NNCF_INT8 = "nncf-int8"
MODEL_FILES = ("model.xml", "model.bin")  # the OpenVINO IR; build.json records their sha256
DEFAULT_CALIB_IMAGES = 256  # as build-engine's --calib-images
CALIB_SEED = 0  # as build-engine's sample
SETTINGS = {"model_type": "TRANSFORMER", "preset": "default", "items": "one image per item",
            "backend": "openvino"}


@dataclass(frozen=True)
class CalibrationSpec:
    """The calibration set ``bench`` builds its quantized peers from."""

    source: str
    count: int | None = DEFAULT_CALIB_IMAGES
    seed: int = CALIB_SEED


def build_peer(kind: str, fp32_dir: str, calib: CalibrationSpec, threads: int | None = None) -> dict[str, Any]:
    """Build (or find in the cache) the model of a built peer row; returns its record.

    Runs in a fresh process (``run.py`` starts it), so NNCF's imports and the calibration
    inference leave nothing behind in the benchmark's parent. Record: ``model`` (the file the
    row opens), ``cached``, ``seconds``, ``calibration`` (images, skipped, digest) and versions.
    """
    if kind != NNCF_INT8:
        raise ValueError(f"unknown built peer {kind!r}")
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    # NNCF draws its progress bars on stdout; this process is ours alone, and bench's stdout is for
    # the table or --json, so the bars go to stderr with bench's own progress
    sys.stdout.flush()
    os.dup2(2, 1)
    import nncf
    import openvino as ov

    from .. import artifact as artifact_view
    from ..artifact import sha256_file
    from ..batching import batches
    from ..images.sets import cache_dir, load_image_set

    export = artifact_view.open(fp32_dir, verify=False)
    onnx_path = export.model_file
    prep = export.preprocessing
    images = load_image_set(calib.source, prep, count=calib.count, batch=1, seed=calib.seed, role="calibration")
    facts = {"fp32_sha256": sha256_file(onnx_path), "calibration_digest": images.digest, "count": calib.count,
             "seed": calib.seed, "settings": SETTINGS, "nncf": nncf.__version__, "openvino": ov.__version__}
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    folder = cache_dir() / "bench" / f"openvino-{kind}-{key[:20]}"
    record, damage = _cached(folder, key)
    if record is not None:
        return {**record, "model": str(folder / "model.xml"), "cached": True}

    core = ov.Core()
    if threads:
        core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
    model = core.read_model(str(onnx_path))
    dataset = nncf.Dataset(list(batches(images.images, 1)))
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(images.images))
    seconds = time.perf_counter() - t0
    record = {
        "kind": kind, "key": key, **facts, "seconds": round(seconds, 2),
        "quantizer": f"nncf.quantize (NNCF {nncf.__version__}), model_type=TRANSFORMER, OpenVINO {ov.__version__} IR",
        "calibration": {"source": str(calib.source), **images.summary(), "used": len(images.images)},
        "source_model": str(onnx_path),
    }
    notes = [f"the cached model in {folder} was unusable ({damage}): rebuilt"] if damage else []
    try:
        staging = _staging(folder)
        _save(quantized, staging, record, ov)
        _publish(staging, folder, key)
        return {**record, "model": str(folder / "model.xml"), "cached": False, "notes": notes}
    except OSError as e:  # a read-only or full cache costs a rebuild next time, not this run
        notes.append(f"cannot write the cache {folder.parent} ({e.strerror or e}): built in a temporary folder, "
                     "removed after the run")
    temporary = Path(tempfile.mkdtemp(prefix=f"vit-deploy-{kind}-"))
    _save(quantized, temporary, record, ov)
    return {**record, "model": str(temporary / "model.xml"), "cached": False, "temporary": str(temporary),
            "notes": notes}


def _cached(folder: Path, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the cached record, None) when ``folder`` holds a whole, intact entry for ``key``; else (None, what is wrong).

    build.json lists the sha256 of model.xml and model.bin: a truncated or altered file (or an
    entry written before it listed them) is a miss, rebuilt and replaced, never a row that fails
    to open on every run.
    """
    if not folder.exists():
        return None, None
    try:
        record = json.loads((folder / "build.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"build.json unreadable ({type(e).__name__})"
    if not isinstance(record, dict) or record.get("key") != key or not isinstance(record.get("files"), dict):
        return None, "build.json is not this build's record"
    from ..artifact import sha256_file

    for name in MODEL_FILES:
        path = folder / name
        try:
            if sha256_file(path) != record["files"].get(name):
                return None, f"{name} differs from the sha256 its record lists"
        except OSError as e:
            return None, f"{name} unreadable ({e.strerror or e})"
    return record, None


def _staging(folder: Path) -> Path:
    """A fresh staging folder beside ``folder`` in the cache (OSError when the cache cannot be written)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))


def _save(quantized: Any, staging: Path, record: dict[str, Any], ov: Any) -> None:
    """The IR and its record (with the files' sha256, written last) into ``staging``; removed if that fails."""
    from ..artifact import sha256_file

    try:
        ov.save_model(quantized, str(staging / "model.xml"), compress_to_fp16=False)
        record["files"] = {name: sha256_file(staging / name) for name in MODEL_FILES}
        (staging / "build.json").write_text(json.dumps(record, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, folder: Path, key: str) -> None:
    """Move ``staging`` into place; an unusable entry there is replaced, an intact one (a concurrent run's) kept."""
    try:
        staging.rename(folder)
        return
    except OSError:
        pass
    if _cached(folder, key)[0] is not None:  # another run built it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
    os.rename(folder, old / folder.name)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
