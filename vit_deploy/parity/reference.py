"""Rebuild an artifact's PyTorch FP32 reference model from its manifest.

The manifest records the variant, resolution, classes and the checkpoint (path or hub id and
its sha256, or the seed of a random init), which is all it takes to rebuild the exact model
that the artifact was exported from, and to refuse a checkpoint that changed since.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, VitDeployError

REFERENCE_BATCH = 8


def reference_model(manifest: dict[str, Any]):  # -> VisionTransformer (torch imported lazily)
    from ..model.factory import build_model

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


def reference_logits(
    manifest: dict[str, Any], images: np.ndarray, fallback_graph: Path | None = None,
) -> tuple[np.ndarray, str]:
    """FP32 reference logits for ``images`` on the CPU, and what produced them.

    The PyTorch model rebuilt from the manifest; when its checkpoint is gone, ``fallback_graph``
    (the FP32 ONNX export, itself validated against PyTorch at export) on ONNX Runtime stands in,
    and the name says so. Without a fallback the ArtifactError says what to restore.
    """
    batches = [images[i : i + REFERENCE_BATCH] for i in range(0, len(images), REFERENCE_BATCH)]
    try:
        import torch

        model = reference_model(manifest)
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(b)).numpy() for b in batches]), "pytorch fp32"
    except ArtifactError as e:
        if fallback_graph is None:
            raise ArtifactError(
                f"no FP32 reference: {e}; the FP32 export is missing too. Restore the checkpoint or the export"
            ) from e
        import onnxruntime as ort

        session = ort.InferenceSession(str(fallback_graph), providers=["CPUExecutionProvider"])
        name = manifest["io"]["inputs"][0]["name"]
        logits = np.concatenate([session.run(None, {name: b})[0] for b in batches])
        return logits, f"fp32 ONNX graph {fallback_graph} (PyTorch reference unavailable: {e})"
