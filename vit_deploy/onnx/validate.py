"""Export-time validation: the ONNX graph on ONNX Runtime (CPU) against the PyTorch model.

Runs at several batch sizes other than the traced one, which proves the batch dimension is
really dynamic, and records every number so the manifest shows what was checked.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..images.synthetic import random_images
from ..parity.metrics import compare_logits, failures, worst
from ..specs import ModelConfig, Tolerance
from .export import INPUT_NAME, OUTPUT_NAME


def check_graph(path: Path) -> str | None:
    """onnx.checker's full check (with strict shape inference); None when it passes."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return str(e).strip().splitlines()[0][:500]
    return None


def validate_against_torch(
    model: torch.nn.Module, cfg: ModelConfig, onnx_path: Path, batches: tuple[int, ...], tol: Tolerance,
    seed: int = 0,
) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    runs = []
    for i, batch in enumerate(batches):
        images = random_images(batch, cfg.img_size, cfg.preprocessing, seed=seed + i, channels=cfg.in_chans)
        with torch.no_grad():
            reference = model(torch.from_numpy(images)).numpy()
        candidate = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        runs.append({"batch": batch, **compare_logits(reference, np.asarray(candidate))})
    summary = worst(runs)
    return {
        "backend": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "reference": "pytorch fp32",
        "inputs": f"seeded uniform pixels through the preprocessing (seed {seed})",
        "tolerance": asdict(tol),
        "runs": runs,
        "worst": summary,
        "failures": failures(summary, tol),
    }
