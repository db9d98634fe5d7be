"""Graph simplification with onnxsim that never costs the user a working model.

If onnxsim raises, reports its own check failed, or loses the symbolic batch dimension (or a
dynamic-resolution graph's symbolic height or width), the unsimplified graph is kept and the
reason is recorded instead of crashing the export.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .graph import has_symbolic_batch, io_signature

# onnxsim's default passes rewrite every 3-D MatMul+Add into Reshape->Gemm->Reshape. TensorRT
# fuses the bias itself, and ModelOpt / ONNX Runtime quantizers and attention-fusion matchers
# look for plain MatMuls, so we keep them: 322 nodes instead of 379 on b16, all MatMuls intact.
SKIPPED_PASSES = ["fuse_matmul_add_bias_into_gemm", "fuse_matmul_add_bias_into_gemm_batched"]


@dataclass(frozen=True)
class SimplifyResult:
    model: onnx.ModelProto
    simplified: bool
    nodes_before: int
    nodes_after: int
    error: str | None = None


def simplify(model: onnx.ModelProto) -> SimplifyResult:
    before = len(model.graph.node)

    def kept(reason: str) -> SimplifyResult:
        return SimplifyResult(model, False, before, before, reason)

    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model, skipped_optimizers=SKIPPED_PASSES)
    except ImportError:
        return kept("onnxsim is not installed (pip install onnxsim)")
    except Exception as e:  # noqa: BLE001 - any onnxsim failure must fall back, whatever its type
        return kept(f"onnxsim failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
    if not ok:
        return kept("onnxsim's own output check failed")
    if not has_symbolic_batch(simplified):
        return kept("onnxsim fixed the batch dimension")
    if io_signature(simplified)["inputs"] != io_signature(model)["inputs"]:
        return kept("onnxsim fixed the image height or width")  # a --dynamic-res graph must stay dynamic
    return SimplifyResult(simplified, True, before, len(simplified.graph.node))
