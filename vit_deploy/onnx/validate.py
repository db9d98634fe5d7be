"""The structural check of a saved ONNX graph: onnx.checker's full check with strict shape inference.

Numeric validation (the graph against PyTorch) is not here: every step runs it through the one
driver, ``vit_deploy.steps.validate``.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def check_graph(path: Path) -> str | None:
    """onnx.checker's full check (with strict shape inference); None when it passes."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return str(e).strip().splitlines()[0][:500]
    return None
