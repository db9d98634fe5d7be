"""The reference Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words").

Patch embedding by a strided conv, a class token, learned position embeddings, pre-LayerNorm
encoder blocks (multi-head self-attention, GELU MLP), a final LayerNorm and a linear head on
the class token. Parameter names follow timm's ``VisionTransformer`` so timm state dicts load
as they are; the other formats are mapped onto these names in ``checkpoint.py``.

Attention is written out as ``softmax((q * scale) @ k^T) @ v`` rather than calling
``F.scaled_dot_product_attention``: it exports to a plain MatMul-Softmax-MatMul chain with the
scale applied to Q *before* the first MatMul, the form TensorRT's attention fusion requires
("TensorRT requires Q or K to be multiplied with attention scale ... before going into the
first BMM", TensorRT docs, Working with Transformers > Fused Attention). ONNX Runtime's CPU
attention fusion and ModelOpt's quantizer also recognise this chain; the opset-23 ``Attention``
op would need opset 23, which the TorchScript exporter cannot emit and older runtimes lack.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..specs import ModelConfig
from .pos_embed import interpolate_pos_embed


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any, Any]:
        """(tokens [B, grid_h*grid_w, dim], grid_h, grid_w): the grid sizes are traced values under export."""
        x = self.proj(x)
        grid_h, grid_w = x.shape[-2], x.shape[-1]
        return x.flatten(2).transpose(1, 2), grid_h, grid_w


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The shapes come from qkv's output, not from x: in a graph with dynamic tokens (--dynamic-res) a
        # Shape op reading the LayerNorm output would be a second consumer of it, and the INT8 recipe
        # folds SmoothQuant scales into a LayerNorm only when its GEMMs are its only readers.
        qkv = self.qkv(x)
        b, n, c3 = qkv.shape
        qkv = qkv.reshape(b, n, 3, self.heads, c3 // (3 * self.heads)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c3 // 3))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as in the paper's JAX code, timm and HF
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.dim, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifier: ``forward(images [B, 3, H, W]) -> logits [B, num_classes]``; ``features`` -> [B, dim].

    The position embeddings are held at ``cfg.pos_embed_grid`` (the ``img_size`` grid, or for a
    --dynamic-res export the checkpoint's own). For an input of another grid (H x W multiples of the
    patch size) they are resampled to it on every call (``pos_embed.interpolate_pos_embed``: bicubic,
    no antialias, class token as is); on their own grid they are used as they are.
    ``dynamic_img_size`` makes an ONNX trace keep that resampling in the graph even where the traced
    (native) size needs none, so the graph takes any size; without it the trace is fixed to
    ``cfg.img_size``, as before.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dynamic_img_size = False  # set by the export step for a --dynamic-res graph
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_embed_grid**2 + 1, cfg.dim))
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """timm's default init (truncated normal, std 0.02). Seed torch first for determinism."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pre-head embedding [B, dim]: the class token after the final LayerNorm, what ``head`` reads.

        (The same ops in the same order as before this was split out of ``forward``: the exported graph is unchanged.)
        """
        x, grid_h, grid_w = self.patch_embed(images)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self._pos_embed(grid_h, grid_w)
        x = self.norm(self.blocks(x))
        return x[:, 0]

    def _pos_embed(self, grid_h: Any, grid_w: Any) -> torch.Tensor:
        if torch.jit.is_tracing():
            # A trace records one path (the export traces at the native size): a dynamic graph must record
            # the resampling even where the native grid is the embeddings' own, where bicubic at scale 1
            # samples every value at its own centre (weights 0, 1, 0, 0): the identity. A fixed graph
            # (embeddings at img_size) records none.
            if self.dynamic_img_size:
                return interpolate_pos_embed(self.pos_embed, self.cfg.pos_embed_grid, grid_h, grid_w)
            return self.pos_embed
        if grid_h == grid_w == self.cfg.pos_embed_grid:
            return self.pos_embed
        return interpolate_pos_embed(self.pos_embed, self.cfg.pos_embed_grid, grid_h, grid_w)


def create_model(cfg: ModelConfig, seed: int = 0) -> VisionTransformer:
    """A seeded, randomly initialised model in eval mode (load weights into it afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(cfg)
    return model.eval()
