"""Rebuild an artifact's PyTorch FP32 reference model from its manifest.

The manifest records the variant, resolution, classes and the checkpoint (path or hub id and
its sha256, or the seed of a random init), which is all it takes to rebuild the exact model
that the artifact was exported from, and to refuse a checkpoint that changed since.
"""

from __future__ import annotations

from typing import Any

from .errors import ArtifactError, VitDeployError


def reference_model(manifest: dict[str, Any]):  # -> VisionTransformer (torch imported lazily)
    from .model.factory import build_model

    ckpt, m = manifest["checkpoint"], manifest["model"]
    weights = ckpt.get("source") if ckpt.get("pretrained") else None
    try:
        model, provenance = build_model(m["variant"], m["img_size"], m["num_classes"], weights, ckpt.get("seed", 0))
    except VitDeployError as e:
        raise ArtifactError(f"cannot rebuild the PyTorch reference from {weights}: {e}") from e
    recorded = ckpt.get("sha256")
    if weights and recorded and provenance.get("sha256") != recorded:
        raise ArtifactError(
            f"the checkpoint {weights} changed since the export: sha256 {str(provenance.get('sha256'))[:12]}... now, "
            f"{recorded[:12]}... recorded; re-export, or restore the original checkpoint"
        )
    return model
