"""Resampling learned position embeddings to another patch grid (class token kept as is).

Two uses, two rules:

* At load time (``resample_pos_embed``): a checkpoint trained at 224 (14x14 grid for /16)
  exported at 384 (24x24) needs its patch position embeddings interpolated, bicubic, as in the
  ViT paper's fine-tuning recipe. Upsampling uses plain bicubic (``align_corners=False``), which
  is what timm and Hugging Face (``interpolate_pos_encoding``) both compute; downsampling adds
  antialiasing as timm does, since plain bicubic would alias when the grid shrinks.
* Inside a dynamic-resolution graph (``interpolate_pos_embed``): from the checkpoint's own grid
  (kept as it is: ``ModelConfig.pos_grid``) to the input's, height and width independent, bicubic
  with ``align_corners=False`` and **no antialias** in either direction: TensorRT's ONNX parser
  rejects an antialiased Resize. This is exactly Hugging Face's ``interpolate_pos_encoding``;
  timm's ``dynamic_img_size`` antialiases when the grid shrinks, so below the checkpoint's size
  its numbers differ (docs/dynamic-resolution.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def grid_of(pos_embed: torch.Tensor, num_prefix_tokens: int = 1) -> int:
    """The square grid side of a [1, prefix + g*g, dim] position embedding (ValueError if not square)."""
    n = pos_embed.shape[1] - num_prefix_tokens
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"position embedding has {n} patch positions, not a square grid")
    return g


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resize ``pos_embed`` [1, prefix + g*g, dim] to [1, prefix + new_grid**2, dim]."""
    old_grid = grid_of(pos_embed, num_prefix_tokens)
    if old_grid == new_grid:
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    orig_dtype = patches.dtype
    grid = patches.float().reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=new_grid < old_grid
    )
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(orig_dtype)
    return torch.cat([prefix, patches], dim=1)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: int, grid_h: Any, grid_w: Any, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """``pos_embed`` [1, prefix + grid*grid, dim] resampled to a ``grid_h`` x ``grid_w`` grid, in a traceable form.

    No Python casts of the target sizes: under ``torch.onnx.export`` they are traced values, and the
    Resize they feed takes the input's grid at run time (transformers #33226 removed the casts that
    froze it). ``grid`` is the model's own (a plain int, so nothing about it is traced). Bicubic,
    ``align_corners=False``, no antialias: see the module docstring.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = patches.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
