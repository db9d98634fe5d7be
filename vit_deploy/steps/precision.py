"""The precision step: an exported FP32 artifact -> a validated FP16 or INT8 graph artifact.

One library call behind ``vit-deploy build-engine --fp16 / --int8``. TensorRT 11 builds
strongly typed networks only, so precision is decided here, in the ONNX graph, on the CPU:
``model.fp16.onnx`` (mixed precision, FP32 I/O) or ``model.int8.onnx`` (explicit Q/DQ from
calibration on real images). Each lands in its own artifact folder whose manifest names its
parent (path and sha256), the precision policy, the calibration set and the validation numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import (
    file_entry,
    model_file,
    new_manifest,
    package_versions,
    read_manifest,
    verify_files,
    write_manifest,
)
from ..errors import ArtifactError, UsageError
from ..fileio import check_can_write, staged_directory
from ..progress import Progress
from ..specs import INT8_TARGETS, TOLERANCES, ModelConfig

PRECISIONS = ("fp16", "int8")
DEFAULT_CALIB_IMAGES = 256
DEFAULT_CALIB_BATCH = 8
RANDOM_VALIDATION_IMAGES = 16


@dataclass(frozen=True)
class PrecisionOptions:
    precision: str
    artifact: Path | None = None  # the FP32 export; None: the newest under ./artifacts
    out_dir: Path | None = None
    force: bool = False
    calib: str | None = None
    calib_method: str = "entropy"
    calib_images: int | None = DEFAULT_CALIB_IMAGES
    calib_batch: int = DEFAULT_CALIB_BATCH
    val_images: str | None = None
    seed: int = 0
    target: str = "tensorrt"  # INT8 only: "cpu" keeps attention float for the OpenVINO CPU path


def find_latest_export(root: Path = Path("artifacts")) -> Path:
    """The newest FP32 ONNX artifact under ``root`` (by the manifest's creation time)."""
    found = []
    for manifest_path in root.glob("*/manifest.json"):
        with contextlib.suppress(ArtifactError):
            m = read_manifest(manifest_path.parent)
            if m["kind"] == "onnx" and m["precision"] == "fp32":
                found.append((m.get("created_at", ""), manifest_path.stat().st_mtime, manifest_path.parent))
    if not found:
        raise ArtifactError(
            f"no exported model under {root.absolute()}; "
            "run `vit-deploy export --model ...` first or pass --artifact DIR"
        )
    return max(found)[2]


def open_parent(artifact: Path | None) -> tuple[Path, dict[str, Any]]:
    """The FP32 artifact to convert, checked against its manifest's hashes."""
    parent_dir = Path(artifact) if artifact else find_latest_export()
    manifest = read_manifest(parent_dir)
    verify_files(parent_dir, manifest)
    return parent_dir.absolute(), manifest


def model_config_of(manifest: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_dict({**manifest["model"], "preprocessing": manifest["preprocessing"]})


def default_out_dir(parent_dir: Path, precision: str, target: str = "tensorrt") -> Path:
    suffix = "" if target == "tensorrt" else f"-{target}"
    return parent_dir.parent / f"{parent_dir.name}-{precision}{suffix}"


def preflight(opts: PrecisionOptions, parent_dir: Path, parent: dict[str, Any]) -> Path:
    if opts.precision not in PRECISIONS:
        raise UsageError(f"unknown precision {opts.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if parent["kind"] != "onnx" or parent["precision"] != "fp32":
        raise UsageError(
            f"{parent_dir} is a {parent['precision']} {parent['kind']} artifact; "
            "a precision graph is made from an FP32 ONNX export"
        )
    if not parent.get("validation", {}).get("passed", False):
        raise ArtifactError(f"{parent_dir} failed its export validation; fix and re-export it first")
    if opts.precision == "int8" and not opts.calib:
        raise UsageError(
            "--int8 needs calibration images: pass --calib FOLDER or a definition file "
            "(calibration/README.md; calibration/photos.txt lists photographs shipped with scikit-image)"
        )
    if opts.calib_batch < 1 or (opts.calib_images is not None and opts.calib_images < 1):
        raise UsageError("--calib-batch and --calib-images must be positive")
    if opts.target not in INT8_TARGETS:
        raise UsageError(f"--target {opts.target!r} is unknown; choose one of {', '.join(INT8_TARGETS)}")
    if opts.target != "tensorrt" and opts.precision != "int8":
        raise UsageError("--target cpu applies to --int8 (the FP16 graph is the same for every target)")
    out_dir = (opts.out_dir or default_out_dir(parent_dir, opts.precision, opts.target)).absolute()
    check_can_write(out_dir, opts.force)
    return out_dir


def build_precision_artifact(opts: PrecisionOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Make, check, validate and write the precision artifact; returns its summary."""
    import onnx

    from ..images.sets import cache_dir, load_image_set
    from ..onnx.fp16 import DEFAULT_KEEP_FP32, convert_fp16, fp16_policy
    from ..onnx.graph import io_signature, op_histogram, save_model
    from ..onnx.int8 import quantize_int8
    from ..onnx.validate import check_graph

    progress = progress or Progress(enabled=False)
    parent_dir, parent = open_parent(opts.artifact)
    out_dir = preflight(opts, parent_dir, parent)
    cfg = model_config_of(parent)
    parent_file = model_file(parent_dir, parent)
    progress.total = 4 + (opts.precision == "int8")

    calib = None
    if opts.precision == "int8":
        with progress.step(f"Loading calibration images from {opts.calib}"):
            calib = load_image_set(
                opts.calib, cfg.preprocessing, opts.calib_images, opts.calib_batch, opts.seed, progress
            )
        if calib.skipped:
            progress.note(f"  warning: skipped {len(calib.skipped)} unusable file(s), e.g. {calib.skipped[0][0]}")

    name = f"model.{opts.precision}.onnx"
    with staged_directory(out_dir, opts.force) as stage:
        if opts.precision == "fp16":
            with progress.step("Converting to FP16 mixed precision"):
                names = save_model(convert_fp16(onnx.load(str(parent_file))), stage / name)
            policy = fp16_policy(DEFAULT_KEEP_FP32)
        else:
            assert calib is not None
            cache = cache_dir() / "calibration" / (
                f"{parent['files'][0]['sha256'][:16]}-{calib.digest[:16]}-{opts.calib_method}-b{opts.calib_batch}"
                f"{'' if opts.target == 'tensorrt' else '-' + opts.target}.json"
            )
            cached = cache.is_file()
            label = f"Calibrating ({opts.calib_method}, {len(calib.files)} images) and quantizing"
            with progress.step(label + (" [cached ranges]" if cached else "")), \
                    progress.counter(0 if cached else -(-len(calib.files) // opts.calib_batch), "calibration batches"):
                policy = quantize_int8(
                    parent_file, stage / name, calib.images, method=opts.calib_method, num_tokens=cfg.num_tokens,
                    batch=opts.calib_batch, cache_path=cache, progress=progress, target=opts.target,
                )
            policy["calibration_cache"] = {"path": str(cache), "reused": cached}
            names = [p.name for p in sorted(stage.iterdir())]
        with progress.step("Checking the graph"):
            checker_error = check_graph(stage / name)
            graph = onnx.load(str(stage / name), load_external_data=False)
        with progress.step("Validating on ONNX Runtime against the FP32 reference"):
            validation = validate_precision(opts, parent, parent_file, cfg, stage / name, calib, progress)
        if checker_error:
            validation["failures"].append(f"onnx.checker: {checker_error}")
        validation["onnx_checker"] = checker_error or "passed"
        validation["passed"] = not validation["failures"]

        with progress.step("Writing the manifest"):
            files = [file_entry(stage, name, "model")]
            files += [file_entry(stage, n, "external_data") for n in names if n != name]
            manifest = new_manifest(
                "onnx", opts.precision,
                model=parent["model"],
                preprocessing=parent["preprocessing"],
                io=io_signature(graph),
                files=files,
                parent={"path": str(parent_dir), "file": parent["files"][0]["path"],
                        "sha256": parent["files"][0]["sha256"], "precision": parent["precision"]},
                onnx={**parent["onnx"], "nodes": len(graph.graph.node), "ops": op_histogram(graph)},
                precision_policy=policy,
                calibration=calib and calib.summary() | {"method": opts.calib_method, "batch": opts.calib_batch},
                checkpoint=parent["checkpoint"],
                versions=package_versions("torch", "onnx", "onnxruntime", "onnxsim", "numpy"),
                validation=validation,
            )
            write_manifest(stage, manifest)

    return {
        "artifact": str(out_dir),
        "model_file": str(out_dir / name),
        "bytes": sum(f["bytes"] for f in files),
        "parent": str(parent_dir),
        "validation": validation,
        "manifest": manifest,
    }


def validate_precision(
    opts: PrecisionOptions, parent: dict[str, Any], parent_file: Path, cfg: ModelConfig, candidate: Path,
    calib: Any, progress: Progress,
) -> dict[str, Any]:
    """Candidate graph on ONNX Runtime vs the PyTorch FP32 model, on real images where given.

    Inputs: ``--val-images`` (with accuracy when the folder has labels.csv), else the
    ``--calib`` images, else seeded random images. The reference is the PyTorch model rebuilt
    from the manifest; if its checkpoint is gone, the parent FP32 graph (validated against
    PyTorch at export) stands in, and the manifest says so.
    """
    import onnxruntime as ort

    from ..images.sets import load_image_set
    from ..images.synthetic import random_images
    from ..parity.metrics import evaluate
    from ..parity.reference import reference_logits

    labels = None
    if opts.val_images or (opts.calib and calib is None):
        source = opts.val_images or opts.calib
        data = load_image_set(source, cfg.preprocessing, None, 1, opts.seed, progress,
                              role="validation" if opts.val_images else "calibration")
        images, labels, inputs = data.images, data.labels, f"{len(data.files)} images from {source}"
    elif calib is not None:
        images, inputs = calib.images, f"the {len(calib.files)} calibration images"
    else:
        images = random_images(RANDOM_VALIDATION_IMAGES, cfg.img_size, cfg.preprocessing, seed=opts.seed)
        inputs = f"{RANDOM_VALIDATION_IMAGES} seeded random images (seed {opts.seed}); pass --val-images for real ones"

    reference, reference_name = reference_logits(parent, images, fallback_graph=parent_file)

    session = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
    candidate_logits = np.concatenate([session.run(None, {"images": b})[0] for b in _batches(images)])
    pretrained = bool(parent["checkpoint"].get("pretrained"))
    tol = TOLERANCES[opts.precision]
    metrics, found = evaluate(reference, candidate_logits, labels, tol, pretrained)
    return {
        "backend": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "reference": reference_name,
        "inputs": inputs,
        "tolerance": {k: v for k, v in vars(tol).items() if v is not None},
        "top1_agreement_gated": pretrained,
        "metrics": metrics,
        "failures": found,
    }


def _batches(images: np.ndarray, size: int = 8):
    return (images[i : i + size] for i in range(0, len(images), size))
