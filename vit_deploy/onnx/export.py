"""Trace the reference ViT to an ONNX graph with a named, dynamic batch dimension (and, for a
``--dynamic-res`` export, named dynamic height and width).

Uses the TorchScript exporter (``dynamo=False``): on b16@384 it takes ~7 s where the dynamo
exporter takes several times longer, and its opset-17 output is the plain op set TensorRT,
ONNX Runtime and the quantizers all understand (one ``LayerNormalization`` per norm, GELU as
Erf, attention as MatMul-Softmax-MatMul). The trace uses batch 2 so that the validation
batches (1, 3, 8) prove that nothing was specialised to the traced size. A dynamic-resolution
graph is traced at the native size with the position-embedding resampling recorded
(``VisionTransformer.dynamic_img_size``): one bicubic ``Resize`` (no antialias, which TensorRT's
parser rejects) from the position embeddings' grid (the checkpoint's) to the input's, whose sizes
come from the patch embedding's output shape; the export check then runs it at sizes across the range.
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
HEIGHT_DIM, WIDTH_DIM = "height", "width"
MIN_OPSET = 17  # first opset with LayerNormalization as a single op
MAX_OPSET = 20  # highest the TorchScript exporter emits


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(
            f"--opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} "
            f"({MIN_OPSET} is the first with a single LayerNormalization op)"
        )


def export_onnx(
    model: torch.nn.Module, cfg: ModelConfig, path: Path, opset: int, dynamic_size: bool = False
) -> onnx.ModelProto:
    """Export ``model`` to ``path`` and return the loaded graph (with external data, if any).

    ``dynamic_size``: the image height and width are symbolic (``height``, ``width``) too.
    """
    check_opset(opset)
    dummy = torch.zeros(TRACE_BATCH, cfg.in_chans, cfg.img_size, cfg.img_size)
    input_axes = {0: BATCH_DIM, 2: HEIGHT_DIM, 3: WIDTH_DIM} if dynamic_size else {0: BATCH_DIM}
    traced_dynamic = getattr(model, "dynamic_img_size", False)
    model.dynamic_img_size = dynamic_size  # the trace records the pos-embed resampling only when asked
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
            dynamic_axes={INPUT_NAME: input_axes, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=True,
        )
    model.dynamic_img_size = traced_dynamic
    return onnx.load(str(path))
