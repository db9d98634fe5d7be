"""Rebuild an artifact's PyTorch FP32 reference model from its manifest.

The manifest records the variant, resolution, classes and the checkpoint (path or hub id and
its sha256, or the seed of a random init), which is all it takes to rebuild the exact model
that the artifact was exported from, and to refuse a checkpoint that changed since.
"""

from __future__ import annotations

from ..artifact import Artifact
from ..errors import ArtifactError, VitDeployError

# Images per forward pass of the reference: bounds its activation memory (B/16@384 at batch 8
# is about 1 GB in FP32) without changing its numbers.
REFERENCE_BATCH = 8


def reference_model(artifact: Artifact):  # -> VisionTransformer (torch imported lazily)
    """The PyTorch model ``artifact`` was exported from; ArtifactError when its checkpoint is gone or changed."""
    from ..model.factory import build_model

    ckpt = artifact.checkpoint
    weights = ckpt.get("source") if artifact.pretrained else None
    try:
        model, provenance = build_model(
            artifact.variant, artifact.img_size, artifact.num_classes, weights, ckpt.get("seed", 0)
        )
    except VitDeployError as e:
        raise ArtifactError(f"cannot rebuild the PyTorch reference from {weights}: {e}") from e
    recorded = ckpt.get("sha256")
    if weights and recorded and provenance.get("sha256") != recorded:
        raise ArtifactError(
            f"the checkpoint {weights} changed since the export: sha256 {str(provenance.get('sha256'))[:12]}... now, "
            f"{recorded[:12]}... recorded; re-export, or restore the original checkpoint"
        )
    return model
