"""Variants: published parameter counts, and user-input checks on names and resolutions."""

from __future__ import annotations

import pytest
import torch

from vit_deploy.errors import UsageError
from vit_deploy.model.vit import VisionTransformer
from vit_deploy.specs import PAPER_VARIANTS, VARIANTS, model_config


def n_params(cfg) -> int:
    with torch.device("meta"):  # no memory, even for h14
        return sum(p.numel() for p in VisionTransformer(cfg).parameters())


@pytest.mark.parametrize(("res", "expected"), [(224, 86_567_656), (384, 86_859_496)])
def test_b16_parameter_count_matches_published(res, expected):
    assert n_params(model_config("b16", res)) == expected


# Published counts (timm's model cards, 1000 classes, 224): an independent source of truth.
PUBLISHED_M = {"ti16": 5.72, "s16": 22.05, "b16": 86.57, "b32": 88.22, "l16": 304.33, "l32": 306.54, "h14": 632.05}


@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_every_paper_variant_matches_hugging_face_and_published_size(variant):
    from transformers import ViTConfig, ViTForImageClassification

    shape = VARIANTS[variant]
    hf_cfg = ViTConfig(
        hidden_size=shape.dim, num_hidden_layers=shape.depth, num_attention_heads=shape.heads,
        intermediate_size=shape.mlp_dim, patch_size=shape.patch_size, image_size=224, num_labels=1000,
    )
    with torch.device("meta"):
        hf = ViTForImageClassification(hf_cfg)
    ours = n_params(model_config(variant, 224))
    assert ours == sum(p.numel() for p in hf.parameters())
    assert ours / 1e6 == pytest.approx(PUBLISHED_M[variant], abs=0.01)


def test_any_resolution_and_class_count():
    cfg = model_config("b32", 512, 10)
    assert (cfg.grid, cfg.num_tokens, cfg.num_classes) == (16, 257, 10)
    assert model_config("h14", 518).grid == 37


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(UsageError, match="unknown model 'vit_b16'.*ti16, s16, b16, b32, l16, l32, h14"):
        model_config("vit_b16")


@pytest.mark.parametrize(
    ("variant", "res", "hint"), [("b16", 380, "--res 368 or --res 384"), ("h14", 224 + 1, "--res 224")]
)
def test_resolution_must_be_a_multiple_of_the_patch(variant, res, hint):
    with pytest.raises(UsageError, match=hint):
        model_config(variant, res)
