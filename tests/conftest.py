"""Shared test helpers: run the CLI in-process, tiny Hugging Face reference models."""

from __future__ import annotations

import pytest
import torch

from vit_deploy.cli import main


@pytest.fixture
def run_cli(capsys):
    """Run ``vit-deploy ARGS`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def hf_vit(image_size: int = 32, num_labels: int = 5, seed: int = 0, **shape):
    """A randomly initialised Hugging Face ViTForImageClassification: the independent reference.

    Default shape = vit-deploy's ``test`` variant (patch 8, dim 32, depth 2, heads 2, mlp 64).
    """
    from transformers import ViTConfig, ViTForImageClassification

    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8)
    cfg.update(shape)
    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(image_size=image_size, num_labels=num_labels, hidden_act="gelu", **cfg))
    return model.eval()


def hf_logits(model, images, interpolate: bool = False):
    with torch.no_grad():
        return model(pixel_values=torch.as_tensor(images), interpolate_pos_encoding=interpolate).logits.numpy()
