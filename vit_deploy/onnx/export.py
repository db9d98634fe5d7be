"""Trace the reference ViT to an ONNX graph with a named, dynamic batch dimension.

Uses the TorchScript exporter (``dynamo=False``): on b16@384 it takes ~7 s where the dynamo
exporter takes several times longer, and its opset-17 output is the plain op set TensorRT,
ONNX Runtime and the quantizers all understand (one ``LayerNormalization`` per norm, GELU as
Erf, attention as MatMul-Softmax-MatMul). The trace uses batch 2 so that the validation
batches (1, 3, 8) prove that nothing was specialised to the traced size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from ..errors import UsageError
from ..specs import TRACE_BATCH, ModelConfig

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
MIN_OPSET = 17  # first opset with LayerNormalization as a single op
MAX_OPSET = 20  # highest the TorchScript exporter emits


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(
            f"--opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} "
            f"({MIN_OPSET} is the first with a single LayerNormalization op)"
        )


def export_onnx(model: torch.nn.Module, cfg: ModelConfig, path: Path, opset: int) -> onnx.ModelProto:
    """Export ``model`` to ``path`` and return the loaded graph (with external data, if any)."""
    check_opset(opset)
    dummy = torch.zeros(TRACE_BATCH, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.no_grad(), warnings.catch_warnings():
        # The exporter warns that TorchScript export is legacy; we chose it on purpose (see above).
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=True,
        )
    return onnx.load(str(path))
