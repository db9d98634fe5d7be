"""Rebuild an artifact's PyTorch FP32 reference model from its manifest.

The manifest records the variant, resolution, classes and the checkpoint (the spec as given, its
absolute path, and the sha256 of every weights file read; or the seed of a random init), which is
all it takes to rebuild the exact model that the artifact was exported from, from any working
directory, and to refuse a checkpoint that moved or changed since. A checkpoint that moved can be
named again (``weights``: ``compare --weights``); it must still be the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact import Artifact
from ..errors import ArtifactError, UsageError, VitDeployError
from ..specs import HUB_PREFIXES

# Images per forward pass of the reference: bounds its activation memory (B/16@384 at batch 8
# is about 1 GB in FP32) without changing its numbers.
REFERENCE_BATCH = 8


def reference_model(artifact: Artifact, weights: str | None = None):  # -> VisionTransformer (torch imported lazily)
    """The PyTorch model ``artifact`` was exported from; ArtifactError when its checkpoint is gone or changed.

    Args:
        artifact: any artifact; its manifest's ``checkpoint`` section says how to rebuild the model.
        weights: where the checkpoint is now, when it moved since the export (None: where the manifest says).
    """
    from ..model.factory import build_model

    ckpt = artifact.checkpoint
    if not artifact.pretrained:
        if weights is not None:
            raise UsageError(
                f"{artifact.directory} was exported from a random init (seed {ckpt.get('seed', 0)}), not a checkpoint; "
                "drop --weights"
            )
        spec = None
    else:
        # Manifests before the absolute path recorded only the spec as given (relative to where export ran).
        spec = weights or ckpt.get("path") or ckpt.get("source")
        _check_present(spec, ckpt, given=weights is not None)
    try:
        model, provenance = build_model(
            artifact.variant, artifact.img_size, artifact.num_classes, spec, ckpt.get("seed", 0),
            keep_checkpoint_grid="pos_grid" in artifact.model,  # the same checkpoint (its sha256 is checked below)
        )
    except VitDeployError as e:
        raise ArtifactError(f"cannot rebuild the PyTorch reference from {spec}: {e}") from e
    if spec is not None:
        _check_unchanged(spec, ckpt, provenance)
    return model


def _check_present(spec: str, ckpt: dict[str, Any], given: bool) -> None:
    """Name the recorded file that is missing, before a rebuild reports it less directly."""
    if spec.startswith(HUB_PREFIXES):
        return
    recorded = [] if given else [entry.get("path") for entry in _recorded_files(ckpt)]
    missing = next((p for p in [spec, *recorded] if p and not Path(p).exists()), None)
    if missing is not None:
        where = "given with --weights" if given else "recorded in the manifest"
        raise ArtifactError(
            f"cannot rebuild the PyTorch reference: the checkpoint {missing} ({where}) is missing; pass --weights "
            "with its new location, or re-export"
        )


def _check_unchanged(spec: str, ckpt: dict[str, Any], provenance: dict[str, Any]) -> None:
    """The weights files read now must be the ones the export read (same count, same sha256 in order)."""
    recorded = [entry.get("sha256") for entry in _recorded_files(ckpt)]
    if not recorded and ckpt.get("sha256"):  # a manifest from before the per-file list
        recorded = [ckpt["sha256"]]
    if not recorded:
        return  # an old sharded checkpoint recorded no hash: nothing to hold it to
    now = [(entry["path"], entry["sha256"]) for entry in provenance.get("files", [])]
    if len(now) != len(recorded):
        raise ArtifactError(
            f"the checkpoint {spec} has {len(now)} weights file(s), the export read {len(recorded)}; pass --weights "
            "with the original checkpoint, or re-export"
        )
    for (path, digest), expected in zip(now, recorded, strict=True):
        if digest != expected:
            raise ArtifactError(
                f"the checkpoint file {path} changed since the export: sha256 {digest[:12]}... now, "
                f"{str(expected)[:12]}... recorded; pass --weights with the original checkpoint, or re-export"
            )


def _recorded_files(ckpt: dict[str, Any]) -> list[dict[str, Any]]:
    files = ckpt.get("files")
    return [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []
