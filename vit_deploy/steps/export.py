"""The export step: checkpoint -> validated, simplified FP32 ONNX artifact directory.

One library call behind ``vit-deploy export``. The artifact is built in a staging folder and
moved into place only when complete (see ``fileio``), with ``manifest.json`` written last.
A numeric validation failure still lands the artifact (for inspection; its manifest says
``"passed": false``) and then raises ``ValidationFailed`` naming where it is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import file_entry, new_manifest, package_versions, write_manifest
from ..errors import ValidationFailed
from ..fileio import check_can_write, staged_directory
from ..progress import Progress
from ..specs import DEFAULT_NUM_CLASSES, TOLERANCES, VALIDATION_BATCHES, ModelConfig, model_config

MODEL_FILE = "model.onnx"
ATTENTION_FORM = "MatMul(Q*scale, K^T) -> Softmax -> MatMul(., V)"


@dataclass(frozen=True)
class ExportOptions:
    variant: str
    img_size: int
    num_classes: int | None = None
    weights: str | None = None
    opset: int = 17
    out_dir: Path | None = None
    simplify: bool = True
    force: bool = False
    seed: int = 0


def default_out_dir(variant: str, img_size: int) -> Path:
    return Path("artifacts") / f"{variant}-{img_size}"


def out_dir_of(opts: ExportOptions) -> Path:
    return (opts.out_dir or default_out_dir(opts.variant, opts.img_size)).absolute()


def preflight(opts: ExportOptions) -> None:
    """The cheap checks of the user's options, so bad input fails before any slow step."""
    from ..onnx.export import check_opset

    model_config(opts.variant, opts.img_size, opts.num_classes or DEFAULT_NUM_CLASSES)
    check_opset(opts.opset)
    check_can_write(out_dir_of(opts), opts.force)


def export_artifact(opts: ExportOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the export; returns the summary (paths, sizes, node counts, validation, manifest)."""
    # Heavy imports here, not at module level, so `vit-deploy --help` stays fast.
    from ..model.factory import build_model
    from ..onnx.export import export_onnx
    from ..onnx.graph import io_signature, save_model
    from ..onnx.simplify import SimplifyResult, simplify
    from ..onnx.validate import check_graph, validate_against_torch

    preflight(opts)
    progress = progress or Progress(enabled=False)
    progress.total = 6 if opts.simplify else 5
    out_dir = out_dir_of(opts)
    tol = TOLERANCES["fp32"]

    with progress.step("Building the model"):
        model, provenance = build_model(opts.variant, opts.img_size, opts.num_classes, opts.weights, opts.seed)
    cfg: ModelConfig = model.cfg

    with staged_directory(out_dir, opts.force) as stage:
        with progress.step(f"Exporting to ONNX (opset {opts.opset})"):
            raw_dir = stage / "raw"
            raw_dir.mkdir()
            graph = export_onnx(model, cfg, raw_dir / MODEL_FILE, opts.opset)
        if opts.simplify:
            with progress.step("Simplifying with onnxsim"):
                result = simplify(graph)
            if not result.simplified:
                progress.note(f"  warning: keeping the unsimplified graph: {result.error}")
        else:
            n = len(graph.graph.node)
            result = SimplifyResult(graph, False, n, n, "skipped (--no-simplify)")
        with progress.step("Saving and checking the graph"):
            names = save_model(result.model, stage / MODEL_FILE)
            shutil.rmtree(raw_dir)
            checker_error = check_graph(stage / MODEL_FILE)
        batches = ", ".join(map(str, VALIDATION_BATCHES))
        with progress.step(f"Validating on ONNX Runtime vs PyTorch (batches {batches})"):
            validation = validate_against_torch(model, cfg, stage / MODEL_FILE, VALIDATION_BATCHES, tol, opts.seed)
        validation["onnx_checker"] = checker_error or "passed"
        if checker_error:
            validation["failures"].append(f"onnx.checker: {checker_error}")
        validation["passed"] = not validation["failures"]

        with progress.step("Writing the manifest"):
            model_section = cfg.to_dict()
            preprocessing = model_section.pop("preprocessing")
            files = [file_entry(stage, names[0], "model")] + [file_entry(stage, n, "external_data") for n in names[1:]]
            manifest = new_manifest(
                "onnx", "fp32",
                model=model_section,
                preprocessing=preprocessing,
                io=io_signature(result.model),
                files=files,
                parent=None,
                onnx={
                    "opset": opts.opset,
                    "exporter": "torch.onnx TorchScript (dynamo=False)",
                    "attention": ATTENTION_FORM,
                    "nodes_exported": result.nodes_before,
                    "nodes": result.nodes_after,
                    "simplified": result.simplified,
                    "simplify_note": result.error,
                },
                checkpoint=provenance,
                versions=package_versions("torch", "onnx", "onnxruntime", "onnxsim", "numpy"),
                validation=validation,
            )
            write_manifest(stage, manifest)

    summary = {
        "artifact": str(out_dir),
        "model_file": str(out_dir / MODEL_FILE),
        "bytes": sum(f["bytes"] for f in files),
        "files": [f["path"] for f in files],
        "nodes_exported": result.nodes_before,
        "nodes": result.nodes_after,
        "simplified": result.simplified,
        "validation": validation,
        "manifest": manifest,
    }
    return summary


def raise_if_failed(summary: dict[str, Any]) -> None:
    """ValidationFailed (exit 2) naming every failed bound and where the kept artifact is."""
    v = summary["validation"]
    if v["passed"]:
        return
    raise ValidationFailed(
        f"validation failed: {'; '.join(v['failures'])}. The artifact is kept for inspection at "
        f"{summary['artifact']} (its manifest records \"passed\": false)"
    )
