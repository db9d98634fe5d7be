"""What a benchmark row is, the registry of rows, and which artifact each row runs.

A row is one way of running the model: a backend (via ``vit_deploy.runtime.open``) with its
options, on one artifact. Adding a backend to the benchmark is one entry in ``ROWS``, e.g.::

    Row("fast-cpu", "fp32", {"backend": "fastcpu"}, compute="bf16", devices=("cpu",)),

Everything else (workers, timing, ceilings, ratios, table, plot) reads the registry.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import artifact as artifact_view
from ..artifact import Artifact
from ..errors import ArtifactError, UsageError

DEVICES = ("cpu", "cuda")
# how to get a row's required module, where "pip install <module>" is not it
INSTALL_HINTS = {"tensorrt": "pip install tensorrt-cu12 on a CUDA GPU host"}


@dataclass(frozen=True)
class Row:
    """One benchmark row.

    ``artifact``: which artifact it runs: "fp32" (the export), "fp16" / "int8" / "fp8" / "int8-cpu" (ONNX
    precision graphs; "int8-cpu" from ``build-engine --int8 --target cpu``), "trt-fp32" / "trt-fp16" /
    "trt-int8" / "trt-fp8" (TensorRT engine folders).
    ``open_kwargs``: passed to ``vit_deploy.runtime.open`` (with ``threads``, ``provider`` and
    ``device`` added by the worker from the run's options).
    ``compute``: the precision its matrix products run in; picks the ceiling it is held to.
    ``peer``: an alternative a user would pick *instead of* vit-deploy's artifacts; the
    "x best peer" column compares every row with the fastest peer of the run.
    ``opener``: "runtime" (vit_deploy.runtime.open) or the name of a function in
    ``workers.OPENERS`` for peers that are not vit-deploy runtimes (OpenVINO).
    ``requires``: a module, or a tuple of modules, that must be importable for the row to run
    (checked without importing).
    ``build``: the row's model is built by ``bench`` itself from the FP32 export and the ``--calib``
    set (``peers.build_peer``; e.g. "nncf-int8"); without ``--calib`` the row is skipped.
    """

    name: str
    artifact: str
    open_kwargs: dict[str, Any] = field(default_factory=dict)
    compute: str = "fp32"
    devices: tuple[str, ...] = DEVICES
    peer: bool = False
    opener: str = "runtime"
    requires: str | tuple[str, ...] | None = None
    description: str = ""
    build: str | None = None


ROWS: dict[str, Row] = {r.name: r for r in (
    Row("pytorch-fp32", "fp32", {"backend": "pytorch"}, "fp32", description="PyTorch eager, FP32 (the reference)"),
    Row("pytorch-bf16", "fp32", {"backend": "pytorch", "autocast": "bfloat16"}, "bf16", peer=True,
        description="PyTorch eager under bfloat16 autocast"),
    Row("pytorch-fp16", "fp32", {"backend": "pytorch", "autocast": "float16"}, "fp16", devices=("cuda",), peer=True,
        description="PyTorch eager under float16 autocast"),
    Row("ort-fp32", "fp32", {"backend": "onnxruntime"}, "fp32", description="ONNX Runtime, FP32 graph"),
    Row("ort-fp16", "fp16", {"backend": "onnxruntime"}, "fp16", description="ONNX Runtime, FP16 graph"),
    Row("ort-int8", "int8", {"backend": "onnxruntime"}, "int8", description="ONNX Runtime, INT8 Q/DQ graph"),
    # ONNX Runtime has no FP8 GEMM on a CPU: it dequantizes to the FP16 float parts (a correctness row)
    Row("ort-fp8", "fp8", {"backend": "onnxruntime"}, "fp16", description="ONNX Runtime, FP8 Q/DQ graph"),
    Row("tensorrt-fp32", "trt-fp32", {"backend": "tensorrt"}, "fp32", devices=("cuda",), requires="tensorrt",
        description="TensorRT engine, FP32"),
    Row("tensorrt-fp16", "trt-fp16", {"backend": "tensorrt"}, "fp16", devices=("cuda",), requires="tensorrt",
        description="TensorRT engine, FP16"),
    Row("tensorrt-int8", "trt-int8", {"backend": "tensorrt"}, "int8", devices=("cuda",), requires="tensorrt",
        description="TensorRT engine, INT8 (FP16 float parts)"),
    Row("tensorrt-fp8", "trt-fp8", {"backend": "tensorrt"}, "fp8", devices=("cuda",), requires="tensorrt",
        description="TensorRT engine, FP8 E4M3 (FP16 float parts; Ada/Hopper and newer)"),
    Row("openvino-int8", "int8-cpu", {"backend": "openvino"}, "int8", devices=("cpu",), requires="openvino",
        description="vit-deploy's fast CPU path: the CPU-target INT8 graph (attention float) on OpenVINO"),
    # compute is what OpenVINO picks by default on AMX/AVX512-BF16 CPUs; the worker reports the
    # precision it actually chose (INFERENCE_PRECISION_HINT) and that decides the ceiling.
    Row("openvino", "fp32", {}, "bf16", devices=("cpu",), peer=True, opener="openvino", requires="openvino",
        description="OpenVINO on the FP32 ONNX graph, default settings"),
    # built by bench from the export and --calib (peers.py): the INT8 a CPU user would pick instead of ours
    Row("openvino-nncf-int8", "fp32", {}, "int8", devices=("cpu",), peer=True, opener="openvino-ir",
        requires=("openvino", "nncf"), build="nncf-int8",
        description="OpenVINO + NNCF post-training INT8 (model_type=TRANSFORMER) of the FP32 export, "
                    "calibrated on --calib"),
)}


def select_rows(backends: str | Sequence[str]) -> list[Row]:
    """The rows named (comma-separated text or a sequence), or every row for "all"."""
    names = [b.strip() for b in (backends.split(",") if isinstance(backends, str) else backends) if b.strip()]
    if not names:
        raise UsageError(f"--backends is empty; give some of: {', '.join(ROWS)} (or all)")
    if names == ["all"]:
        return list(ROWS.values())
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise UsageError(f"unknown backend(s) {', '.join(unknown)}; valid: {', '.join(ROWS)}, or all")
    return [ROWS[n] for n in dict.fromkeys(names)]


def skip_reason(
    row: Row, artifacts: dict[str, Path], device: str, fp32: Path, calib: str | None = None,
) -> str | None:
    """Why ``row`` cannot run in this run (None: it can), with what to do about it."""
    if device not in row.devices:
        return f"runs on {' or '.join(row.devices)} only (this run: --device {device})"
    required = (row.requires,) if isinstance(row.requires, str) else row.requires or ()
    for module in required:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({INSTALL_HINTS.get(module, 'pip install ' + module)})"
    if row.build and not calib:
        return ("bench builds it from the FP32 export and a calibration set: pass --calib with a folder of images "
                "or a definition file (as build-engine --calib takes it)")
    if row.artifact not in artifacts:
        return f"no {row.artifact} artifact; {_how_to_make(row.artifact, fp32)}"
    if row.artifact.startswith("trt-"):
        from ..trt.probe import unavailable_reason

        reason = unavailable_reason()
        if reason:
            return reason
    return None


def _how_to_make(key: str, fp32: Path) -> str:
    if key in ("fp16", "int8", "fp8", "int8-cpu"):
        flags = {"fp16": "--fp16", "int8": "--int8 --calib calibration/photos.txt",
                 "fp8": "--fp8 --calib calibration/photos.txt",
                 "int8-cpu": "--int8 --target cpu --calib calibration/photos.txt"}[key]
        return f"make it with vit-deploy build-engine {fp32} {flags}, or pass its folder"
    precision = key.removeprefix("trt-")
    source = fp32 if precision == "fp32" else f"{fp32}-{precision}"
    return f"build it on a GPU host with vit-deploy build-engine {source}, or pass its folder"


def artifact_key(art: Artifact) -> str:
    """"fp32" / "fp16" / "int8" / "fp8" / "int8-cpu" for ONNX graphs, "trt-<precision>" for engines."""
    if art.kind != "onnx":
        return f"trt-{art.precision}"
    target = art.section("precision_policy").get("target", "tensorrt")
    return art.precision + ("" if target == "tensorrt" else f"-{target}")


def find_artifacts(paths: Sequence[str | Path]) -> tuple[dict[str, Path], list[str]]:
    """``({key: folder}, notes)`` for the given artifact folders and their siblings.

    The FP32 export is required (the PyTorch rows and the FLOP count come from it); when only
    a precision graph or an engine is given, it is found through the manifests' parent links.
    Siblings named as ``build-engine`` names them (``<fp32>-fp16``, ``<fp32>-int8``,
    ``<fp32>-trt``, ``<fp32>-fp16-trt``, ``<fp32>-int8-trt``) are added when not given. Every
    artifact must be of the same model (variant, resolution, classes). An artifact whose manifest
    records a failed validation is benchmarked all the same, with a warning in the notes.
    """
    if not paths:
        raise UsageError("give at least one artifact folder (the FP32 export, e.g. artifacts/b16-224)")
    found: dict[str, tuple[Path, Artifact]] = {}
    for p in paths:
        if not Path(p).exists():
            raise UsageError(f"{p} does not exist; pass artifact folders made by vit-deploy export / build-engine")
        manifest = artifact_view.open(p, verify=False)
        directory = manifest.directory.absolute()
        key = artifact_key(manifest)
        if key in found and found[key][0] != directory:
            raise UsageError(f"two {key} artifacts given ({found[key][0]} and {directory}); give one of each")
        found[key] = (directory, manifest)
    notes: list[str] = []
    if "fp32" not in found:
        fp32 = _fp32_ancestor([d for d, _ in found.values()])
        if fp32 is None:
            raise UsageError(
                "the FP32 export is needed (PyTorch rows, FLOP count) and none was given or found through the "
                "manifests' parent links; pass its folder too, e.g. vit-deploy bench artifacts/b16-224 ..."
            )
        found["fp32"] = (fp32, artifact_view.open(fp32, verify=False))
        notes.append(f"FP32 export found through the parent links: {fp32}")
    fp32 = found["fp32"][0]
    siblings = {
        "fp16": "-fp16", "int8": "-int8", "fp8": "-fp8", "int8-cpu": "-int8-cpu",
        "trt-fp32": "-trt", "trt-fp16": "-fp16-trt", "trt-int8": "-int8-trt", "trt-fp8": "-fp8-trt",
    }
    for key, suffix in siblings.items():
        candidate = fp32.parent / f"{fp32.name}{suffix}"
        if key in found or not candidate.is_dir():
            continue
        try:
            manifest = artifact_view.open(candidate, verify=False)
        except ArtifactError as e:
            notes.append(f"ignored {candidate}: {e}")
            continue
        if artifact_key(manifest) == key:
            found[key] = (candidate, manifest)
            notes.append(f"{key}: found beside the export: {candidate}")
    for key, (_, manifest) in found.items():
        if manifest.failed_note:  # measured all the same (speed is still speed), but never silently
            notes.append(f"warning: {key}: {manifest.failed_note}; its row measures speed only")
    model = _model_identity(found["fp32"][1])
    for directory, manifest in found.values():
        if _model_identity(manifest) != model:
            raise UsageError(
                f"{directory} is {_model_identity(manifest)}, the FP32 export {fp32} is {model}: "
                "benchmark artifacts of one model at a time"
            )
    return {k: d for k, (d, _) in found.items()}, notes


def _model_identity(art: Artifact) -> str:
    return f"{art.variant}@{art.img_size} ({art.num_classes} classes)"


def _fp32_ancestor(directories: list[Path]) -> Path | None:
    for directory in directories:
        seen = set()
        current = directory
        while current not in seen:
            seen.add(current)
            try:
                art = artifact_view.open(current, verify=False)
            except ArtifactError:
                break
            if artifact_key(art) == "fp32":
                return current
            if art.parent_dir is None:
                break
            current = art.parent_dir.absolute()
    return None
