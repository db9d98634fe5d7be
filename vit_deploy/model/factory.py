"""Build the reference model for a variant, with weights from a checkpoint or seeded random init."""

from __future__ import annotations

from typing import Any

from ..specs import DEFAULT_NUM_CLASSES, ModelConfig, Preprocessing, model_config
from .vit import VisionTransformer, create_model


def build_model(
    variant: str,
    img_size: int,
    num_classes: int | None = None,
    weights: str | None = None,
    seed: int = 0,
    keep_checkpoint_grid: bool = False,
) -> tuple[VisionTransformer, dict[str, Any]]:
    """Return ``(model in eval mode, checkpoint provenance for the manifest)``.

    The class count is never guessed from the checkpoint: a head that differs from
    ``num_classes`` (default 1000) is an error telling the user which ``--num-classes`` to pass.
    ``keep_checkpoint_grid`` (a --dynamic-res export): the position embeddings stay at the checkpoint's
    own grid (``ModelConfig.pos_grid``), resampled per input in the graph, instead of moved to
    ``img_size``'s grid at load time; a random init holds them at ``img_size``'s grid either way.
    """
    classes = DEFAULT_NUM_CLASSES if num_classes is None else num_classes
    if weights is None:
        cfg = model_config(variant, img_size, classes)
        return create_model(cfg, seed), {"pretrained": False, "init": "random", "seed": seed}

    from .checkpoint import load_into, preprocessing_overrides, read_checkpoint

    ckpt = read_checkpoint(weights)
    cfg = model_config(variant, img_size, classes, **ckpt.config_overrides)
    if keep_checkpoint_grid and ckpt.grid > 0 and ckpt.grid != cfg.grid:
        cfg = cfg.with_(pos_grid=ckpt.grid)
    # the checkpoint's processor config describes its own resolution: adapt it to img_size
    if prep := preprocessing_overrides(ckpt, img_size):
        cfg = _with_preprocessing(cfg, prep)
    model = create_model(cfg, seed)
    facts = load_into(model, ckpt)
    return model, {"pretrained": True, **ckpt.provenance(), **facts}


def _with_preprocessing(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    return cfg.with_(preprocessing=Preprocessing.from_dict({**cfg.preprocessing.to_dict(), **overrides}))
