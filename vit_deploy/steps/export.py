"""The export step: checkpoint -> validated, simplified FP32 ONNX artifact directory.

One library call behind ``vit-deploy export``. The artifact is built in a staging folder and
moved into place only when complete (see ``fileio``), with ``manifest.json`` written last.
A numeric validation failure still lands the artifact (for inspection; its manifest says
``"passed": false``) and then raises ``ValidationFailed`` naming where it is.

``--dynamic-res MIN:MAX`` makes one graph for every size in the range (height and width symbolic,
the position embeddings resampled inside the graph); the range goes into the manifest's
``dynamic_resolution`` section, and the check runs at sizes across it (``ResolutionRange.check_sizes``:
both ends, non-square ones and the native size) against the PyTorch model at each size.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..artifact import Artifact, file_entry, new_manifest, package_versions, write_manifest
from ..errors import UsageError
from ..fileio import check_can_write, staged_directory
from ..progress import Progress
from ..specs import (
    DEFAULT_NUM_CLASSES,
    MAX_SEED,
    VALIDATION_BATCHES,
    ModelConfig,
    ResolutionRange,
    model_config,
    parse_dynamic_res,
    preprocessing_options,
    tolerance,
)

MODEL_FILE = "model.onnx"
ATTENTION_FORM = "MatMul(Q*scale, K^T) -> Softmax -> MatMul(., V)"
POS_EMBED_RESAMPLING = ("in the graph, from the checkpoint's grid (model.pos_grid when it differs from the native "
                        "one) to the input's: bicubic, align_corners=False, no antialias (TensorRT's parser rejects "
                        "it); class token unchanged")
# A dynamic export is checked at every size of ResolutionRange.check_sizes: the native size at the
# batches above (they prove the batch dynamic), each other size on this many images at one batch
# that leaves a remainder (3 + 1), so two batch shapes run at every size.
OTHER_SIZE_IMAGES, OTHER_SIZE_BATCH = 4, 3


@dataclass(frozen=True)
class ExportOptions:
    """What to export.

    Args:
        variant: the ViT variant (``specs.VARIANTS``: ti16, s16, b16, ...).
        img_size: input resolution (square), a multiple of the patch size.
        num_classes: classes of the head (None: 1000, or the checkpoint's).
        weights: a checkpoint file or folder, or a hub id (``hf:ORG/NAME``, ``timm:NAME``); None: random init.
        opset: ONNX opset, 17-20.
        out_dir: the artifact folder (None: ``artifacts/<variant>-<img_size>``).
        simplify: run onnxsim.
        force: replace an existing artifact.
        seed: seeds the random init and the validation images.
        resize, crop_pct, mean, std: preprocessing that overrides the checkpoint's (or the default):
            the shorter side to resize to, or the crop fraction that implies it (``floor(img_size / crop_pct)``,
            timm's rule; both only when they agree), and per-channel mean and std (1 or 3 values, on 0..1 pixels).
        dynamic_res: ``"MIN:MAX"`` (or ``(MIN, MAX)``): one graph for every image height and width that is a
            multiple of the patch size in the range (``img_size`` is the native size, inside it); None: fixed.
    """

    variant: str
    img_size: int
    num_classes: int | None = None
    weights: str | None = None
    opset: int = 17
    out_dir: Path | None = None
    simplify: bool = True
    force: bool = False
    seed: int = 0
    resize: int | None = None
    crop_pct: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dynamic_res: str | tuple[int, int] | None = None  # last: callers pass the fields above by position


def default_out_dir(variant: str, img_size: int, sizes: ResolutionRange | None = None) -> Path:
    suffix = f"-dyn{sizes.min}-{sizes.max}" if sizes else ""
    return Path("artifacts") / f"{variant}-{img_size}{suffix}"


def out_dir_of(opts: ExportOptions) -> Path:
    return (opts.out_dir or default_out_dir(opts.variant, opts.img_size, resolution_range(opts))).absolute()


def resolution_range(opts: ExportOptions) -> ResolutionRange | None:
    """The checked ``--dynamic-res`` range (UsageError names the problem), or None for a fixed export."""
    if opts.dynamic_res is None:
        return None
    text = opts.dynamic_res if isinstance(opts.dynamic_res, str) else ":".join(map(str, opts.dynamic_res))
    return parse_dynamic_res(text, opts.variant, opts.img_size)


def preflight(opts: ExportOptions) -> None:
    """The cheap checks of the user's options, so bad input fails before any slow step."""
    from ..onnx.export import check_opset

    model_config(opts.variant, opts.img_size, opts.num_classes or DEFAULT_NUM_CLASSES)
    if isinstance(opts.seed, bool) or not isinstance(opts.seed, int) or not 0 <= opts.seed <= MAX_SEED:
        raise UsageError(f"seed must be an integer from 0 to {MAX_SEED}, got {opts.seed!r}")
    check_opset(opts.opset)
    option_preprocessing(opts)
    resolution_range(opts)
    check_can_write(out_dir_of(opts), opts.force)


def option_preprocessing(opts: ExportOptions) -> dict[str, Any]:
    """The preprocessing fields the options set, checked (UsageError names the option)."""
    return preprocessing_options(opts.img_size, opts.resize, opts.crop_pct, opts.mean, opts.std)


def export_artifact(opts: ExportOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Export, simplify, check and validate; returns the summary (paths, sizes, node counts, validation, manifest).

    Args:
        opts: the :class:`ExportOptions`.
        progress: where step progress goes (None: silent).

    A failing validation still lands the artifact (``"passed": false``); :func:`raise_if_failed` turns that into exit 2.
    """
    # Heavy imports here, not at module level, so `vit-deploy --help` stays fast.
    from .. import runtime
    from ..model.factory import build_model
    from ..onnx.export import export_onnx
    from ..onnx.graph import io_signature, save_model
    from ..onnx.simplify import SimplifyResult, simplify
    from ..onnx.validate import check_graph
    from .validate import checked, fp32_reference, image_sources, validate

    preflight(opts)
    progress = progress or Progress(enabled=False)
    progress.total = 6 if opts.simplify else 5
    out_dir = out_dir_of(opts)
    sizes = resolution_range(opts)

    with staged_directory(out_dir, opts.force) as stage:  # takes the writer's lock: before any slow step
        with progress.step("Building the model"):
            model, provenance = build_model(opts.variant, opts.img_size, opts.num_classes, opts.weights, opts.seed,
                                            keep_checkpoint_grid=sizes is not None)
        cfg: ModelConfig = model.cfg
        if overrides := option_preprocessing(opts):  # the options win over the checkpoint's configs
            cfg = cfg.with_(preprocessing=replace(cfg.preprocessing, **overrides))
        with progress.step(f"Exporting to ONNX (opset {opts.opset})"):
            raw_dir = stage / "raw"
            raw_dir.mkdir()
            graph = export_onnx(model, cfg, raw_dir / MODEL_FILE, opts.opset, dynamic_size=sizes is not None)
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
            **({"dynamic_resolution": {**sizes.to_dict(), "pos_embed_grid": cfg.pos_embed_grid,
                                       "pos_embed": POS_EMBED_RESAMPLING}} if sizes else {}),
        )
        batches = ", ".join(map(str, VALIDATION_BATCHES))
        staged = Artifact(stage, manifest)  # the draft: validated before its manifest is written
        check_at = sizes.check_sizes() if sizes else [(cfg.img_size, cfg.img_size)]
        at = f" at {len(check_at)} sizes" if sizes else ""
        with progress.step(f"Validating on ONNX Runtime vs PyTorch (batches {batches}){at}"):
            images = image_sources(None, staged, check_at, max(VALIDATION_BATCHES), OTHER_SIZE_IMAGES,
                                   other_batches=(OTHER_SIZE_BATCH,), seed=opts.seed, option="")
            reference = fp32_reference(staged, model)
            with runtime.open(staged, "onnxruntime", verify=False) as runner, reference.runner:
                verdict = validate(runner, reference, images, VALIDATION_BATCHES, tolerance("fp32"))
        validation = checked(verdict.to_dict(), checker_error)
        manifest.update(validation=validation)

        with progress.step("Writing the manifest"):
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
