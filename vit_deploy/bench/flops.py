"""The model's FLOPs per image, counted from its config.

Only the matrix products are counted (patch-embedding conv, the four linear layers of each
block, the two attention matmuls, the head), at 2 FLOP per multiply-accumulate: the convention
of the published ViT figures (fvcore/timm count MACs, e.g. 17.6 GMAC for B/16 at 224, i.e.
35.2 GFLOP) and of ``torch.utils.flop_counter``. LayerNorm, GELU, softmax and the residual adds
are left out: together they are well under 1% of the total and no matrix unit runs them.

Checked against the published figures for ViT-B/16 (35.2 GFLOP at 224, 111.1 at 384) and
against ``FlopCounterMode`` on the reference model (tests/bench/test_bench.py).
"""

from __future__ import annotations

from typing import Any

from ..specs import ModelConfig

# ViT-B/16 per image, as published (timm / fvcore: 17.58 and 55.54 GMAC); what the tests check against.
PUBLISHED_GFLOP = {("b16", 224): 35.2, ("b16", 384): 111.1}


def model_flops(cfg: ModelConfig) -> dict[str, Any]:
    """FLOPs per image: ``{"total", "gflop", "breakdown": {part: flops}, "per_block": {...}}``.

    ``breakdown`` sums the blocks; ``per_block`` is one encoder block. Integers, so two counts
    of the same model compare exactly.
    """
    n, d, m = cfg.num_tokens, cfg.dim, cfg.mlp_dim
    patches = cfg.grid * cfg.grid
    per_block = {
        "qkv": 2 * n * d * 3 * d,
        # q @ k^T and attn @ v: heads x [n, d/heads] x [d/heads, n] and back; the head split
        # does not change the product count, so both are 2 * n * n * d.
        "attn_scores": 2 * n * n * d,
        "attn_values": 2 * n * n * d,
        "proj": 2 * n * d * d,
        "mlp": 2 * n * d * m * 2,  # fc1 [n, d] x [d, m] and fc2 [n, m] x [m, d]
    }
    breakdown = {
        "patch_embed": 2 * patches * cfg.in_chans * cfg.patch_size**2 * d,  # a strided conv = one GEMM per patch
        **{part: flops * cfg.depth for part, flops in per_block.items()},
        "head": 2 * d * cfg.num_classes,  # the class token only
    }
    total = sum(breakdown.values())
    return {"total": total, "gflop": total / 1e9, "breakdown": breakdown, "per_block": per_block}


def counted_flops(model: Any, img_size: int, in_chans: int = 3) -> int:
    """The independent count: ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass.

    It counts the FLOPs of matmul/addmm/bmm/convolution as torch dispatches them, so it checks
    ``model_flops`` against the model as written, not against the same formula. Runs on the
    ``meta`` device when the model is there (no memory, no time), else on a real zero image.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, in_chans, img_size, img_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())
