"""Loading a :class:`Checkpoint` into the reference model: the strict fit check (keys, shapes, classes,
heads), position embeddings resampled when only the resolution differs."""


from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ...errors import CheckpointError
from ...specs import VARIANTS
from ..pos_embed import grid_of, resample_pos_embed
from ..vit import VisionTransformer
from .readers import _fmt_list
from .sources import Checkpoint


def load_into(model: VisionTransformer, ckpt: Checkpoint) -> dict[str, Any]:
    """Copy ``ckpt``'s weights into ``model`` as float32, resampling ``pos_embed`` to the model's grid.

    Strict: any missing, unexpected or mis-shaped tensor, a different class count, or a model built
    without ``ckpt.config_overrides`` is one ``CheckpointError`` listing every problem. Returns
    provenance facts for the manifest: ``{"pos_embed_resampled_from": old_grid}`` when resampled,
    ``{"cast_to_float32_from": [...]}`` when the checkpoint stored another float type, else ``{}``.
    """
    cfg = model.cfg
    _check_config(cfg, ckpt)
    facts: dict[str, Any] = {}

    # Cast first: resampling a half-precision pos_embed would round the interpolated values too.
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in ckpt.state_dict.values()} - {"float32"})
    if stored:
        facts["cast_to_float32_from"] = stored
    sd = {k: t.to(torch.float32) for k, t in ckpt.state_dict.items()}

    pos = sd.get("pos_embed")
    grid = cfg.pos_embed_grid
    if pos is not None and pos.ndim == 3 and pos.shape[-1] == cfg.dim and pos.shape[1] != grid * grid + 1:
        try:
            old_grid = grid_of(pos)
        except ValueError as e:
            raise CheckpointError(
                f"checkpoint {ckpt.source}: cannot resample its position embedding to the model's "
                f"{grid}x{grid} grid: {e} (is it a model with extra tokens, e.g. DeiT's distillation "
                "token or register tokens? those are not supported)"
            ) from None
        sd["pos_embed"] = resample_pos_embed(pos, grid)
        facts["pos_embed_resampled_from"] = old_grid

    expected = model.state_dict()
    problems: list[str] = []
    head_w, model_head = sd.get("head.weight"), expected["head.weight"]
    explained: set[str] = set()
    if head_w is not None and head_w.ndim == 2 and head_w.shape[0] != model_head.shape[0]:
        k = head_w.shape[0]
        problems.append(
            f"the checkpoint has {k} classes but the model was built for {model_head.shape[0]}: "
            f"pass --num-classes {k}"
        )
        if head_w.shape[1] == model_head.shape[1]:  # only the class count differs: the list adds nothing
            explained = {"head.weight", "head.bias"}
    if "head.weight" not in sd and "head.bias" not in sd:
        problems.append(
            "the checkpoint has no classification head (head.weight, head.bias), so it cannot "
            "produce class logits; use a checkpoint fine-tuned for classification"
        )
        explained = {"head.weight", "head.bias"}

    missing = sorted(set(expected) - set(sd) - explained, key=_natural)
    unexpected = sorted(set(sd) - set(expected), key=_natural)
    mismatched = sorted(
        (k for k in (set(sd) & set(expected)) - explained if sd[k].shape != expected[k].shape), key=_natural
    )
    if missing:
        problems.append(
            f"{len(missing)} missing keys (in the model, not the checkpoint): {_fmt_list(missing)}"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected keys (in the checkpoint, not the model): {_fmt_list(unexpected)}"
        )
    if mismatched:
        shapes = [f"{k} {list(sd[k].shape)} vs {list(expected[k].shape)}" for k in mismatched]
        problems.append(f"{len(mismatched)} shape mismatches (checkpoint vs model): {_fmt_list(shapes)}")
    if problems:
        what_to_do = ""
        if missing or unexpected or mismatched:
            what_to_do = " " + _architecture_hint(sd, ckpt, cfg.variant)
        raise CheckpointError(
            f"checkpoint {ckpt.source} ({ckpt.format}) does not fit the {cfg.variant} model "
            f"(dim {cfg.dim}, depth {cfg.depth}, patch {cfg.patch_size}, {cfg.num_classes} classes): "
            + "; ".join(problems)
            + "."
            + what_to_do
        )

    with torch.no_grad():
        model.load_state_dict(sd, strict=True)
    return facts


def preprocessing_overrides(ckpt: Checkpoint, img_size: int) -> dict[str, Any] | None:
    """``ckpt.preprocessing`` adapted to an export at ``img_size``.

    A processor config describes the checkpoint's own resolution; exported at another one, the
    crop must be ``img_size`` and the resize keeps the checkpoint's resize/crop ratio.
    """
    if ckpt.preprocessing is None:
        return None
    pre = dict(ckpt.preprocessing)
    crop = pre.get("crop")
    if crop and crop != img_size:
        pre["resize"] = round(pre.get("resize", crop) * img_size / crop)
        pre["crop"] = img_size
    return pre


def _check_config(cfg: Any, ckpt: Checkpoint) -> None:
    wrong = [
        f"{k}={v!r} (model: {getattr(cfg, k)!r})"
        for k, v in sorted(ckpt.config_overrides.items())
        if hasattr(cfg, k) and getattr(cfg, k) != v
    ]
    if ckpt.heads is not None and ckpt.heads != cfg.heads:
        wrong.append(f"heads={ckpt.heads} (model: {cfg.heads})")
    if wrong:
        raise CheckpointError(
            f"checkpoint {ckpt.source} implies {', '.join(wrong)}; build the model from "
            "model_config(..., **ckpt.config_overrides) with a variant of the checkpoint's head count"
        )


def _architecture_hint(sd: Mapping[str, torch.Tensor], ckpt: Checkpoint, variant: str) -> str:
    """Name the variant the checkpoint looks like, so the user knows which --model to pass."""
    patch = sd.get("patch_embed.proj.weight")
    cls = sd.get("cls_token")
    dim = int(cls.shape[-1]) if cls is not None else int(patch.shape[0]) if patch is not None else None
    blocks = [int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))]
    depth = max(blocks) + 1 if blocks else None
    size = int(patch.shape[-1]) if patch is not None and patch.ndim == 4 else None
    if dim is None or depth is None or size is None:
        return "Check that the file is a plain ViT classifier checkpoint for this model."
    match = [
        name
        for name, v in VARIANTS.items()
        if (v.patch_size, v.dim, v.depth) == (size, dim, depth)
        and (ckpt.heads is None or ckpt.heads == v.heads)
    ]
    shape = f"patch {size}, dim {dim}, depth {depth}"
    if variant in match:
        return (
            f"The checkpoint has the {variant} shape ({shape}) but not its exact set of tensors: re-save it "
            "from the complete classifier (model.state_dict())."
        )
    if match:
        return f"The checkpoint looks like {match[0]} ({shape}): pass --model {match[0]}."
    return f"The checkpoint has {shape}, which matches no supported variant."


def _natural(key: str) -> list[Any]:
    # blocks.2 before blocks.10, as people read them.
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]
