"""The config files beside a checkpoint, read and checked before anything is built.

Hugging Face's ``config.json`` (architecture numbers, ``layer_norm_eps``) and
``preprocessor_config.json``, and timm's hub ``config.json`` with its ``pretrained_cfg``. JSON
happily holds strings, null, booleans or ``1e400`` (infinity) where a number belongs; each such
value is one ``CheckpointError`` naming the file and the field, through the same checks the
export options use (``specs.check_number``, ``specs.check_preprocessing``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...errors import CheckpointError
from ...specs import Where, check_number, check_preprocessing, resize_for_crop_pct
from .readers import _read_json

CONFIG = "config.json"
PROCESSOR_CONFIG = "preprocessor_config.json"
_FIX = "fix or remove the file"

# PIL's resampling enum, which HF image processors store as an int.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# The whole-number fields of a ViT config.json (a Hugging Face ViTConfig): the tensors decide the
# architecture, but a config whose numbers are not numbers is corrupt, and is refused as such.
_CONFIG_SIZES = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
    "patch_size", "num_channels",
)
_MAX_CONFIG_SIZE = 1 << 20
# The preprocessing fields as each config spells them, for the one-line refusal.
_HF_NAMES = {"resize": "size", "crop": "crop_size", "interpolation": "resample", "mean": "image_mean",
             "std": "image_std"}
_TIMM_NAMES = {"resize": "pretrained_cfg.crop_pct", "crop": "pretrained_cfg.input_size",
               "interpolation": "pretrained_cfg.interpolation", "mean": "pretrained_cfg.mean",
               "std": "pretrained_cfg.std", "crop_pct": "pretrained_cfg.crop_pct"}


def read_config(side_dir: Path | None) -> dict[str, Any] | None:
    """``side_dir/config.json`` with its numeric fields checked; None when there is none.

    Only a ViT config (``model_type`` "vit" or absent, as in timm's) is checked: a config.json that
    describes something else is ignored by the loader, so its values do not matter.
    """
    config = _read_json(side_dir, CONFIG)
    if config is None or config.get("model_type", "vit") != "vit":
        return config
    assert side_dir is not None  # _read_json found the file
    where = Where(str(side_dir / CONFIG), _FIX, error=CheckpointError)
    for name in _CONFIG_SIZES:
        if name in config:
            check_number(config[name], name, where, integer=True, low=1, high=_MAX_CONFIG_SIZE)
    if "layer_norm_eps" in config:
        check_number(config["layer_norm_eps"], "layer_norm_eps", where, low=0, low_open=True, high=1)
    if "qkv_bias" in config and not isinstance(config["qkv_bias"], bool):
        where.fail("qkv_bias", config["qkv_bias"], "is not true or false")
    return config


def read_preprocessing(side_dir: Path | None, config: dict[str, Any] | None) -> dict[str, Any] | None:
    """Preprocessing fields from ``preprocessor_config.json`` (HF) or ``config``'s ``pretrained_cfg`` (timm)."""
    hf = _read_json(side_dir, PROCESSOR_CONFIG)
    if hf is not None:
        assert side_dir is not None  # _read_json found the file
        return _hf_preprocessing(hf, side_dir / PROCESSOR_CONFIG)
    if config and "pretrained_cfg" in config:
        assert side_dir is not None
        return _timm_preprocessing(config["pretrained_cfg"], side_dir / CONFIG)
    return None


def _hf_preprocessing(p: dict[str, Any], path: Path) -> dict[str, Any]:
    """Map an HF image processor config onto Preprocessing fields (ViTImageProcessor defaults)."""
    where = Where(str(path), _FIX, _HF_NAMES, CheckpointError)
    raw: dict[str, Any] = {}
    if _flag(p, "do_resize", True, where):
        resample = p.get("resample", 2)  # ViTImageProcessor default: PIL bilinear
        is_enum = isinstance(resample, int) and not isinstance(resample, bool)
        side = _square_side(p.get("size", {"height": 224, "width": 224}), where, "size")
        raw.update(resize=side, crop=side, interpolation=_PIL_RESAMPLE.get(resample, resample) if is_enum else resample)
    if _flag(p, "do_center_crop", False, where) and p.get("crop_size") is not None:
        raw["crop"] = _square_side(p["crop_size"], where, "crop_size")
    if _flag(p, "do_normalize", True, where):
        raw.update(mean=p.get("image_mean", [0.5] * 3), std=p.get("image_std", [0.5] * 3))
    out = check_preprocessing(raw, where)
    # HF computes (pixel * rescale_factor - mean) / std on 0..255 pixels; Preprocessing computes
    # (x - mean) / std on x = pixel / 255. Equal when mean and std are divided by 255 * factor.
    factor = 1 / 255
    if _flag(p, "do_rescale", True, where):
        factor = check_number(p.get("rescale_factor", factor), "rescale_factor", where, low=0, low_open=True)
    else:
        factor = 1.0
    scale = 255.0 * factor
    mean, std = out.get("mean", (0.0,) * 3), out.get("std", (1.0,) * 3)
    out["mean"], out["std"] = [m / scale for m in mean], [s / scale for s in std]
    if not all(math.isfinite(v) and v != 0 for v in out["std"]) or not all(map(math.isfinite, out["mean"])):
        where.fail("rescale_factor", factor, "scales image_mean/image_std out of range (they are divided by "
                   "255 * rescale_factor)")
    return out


def _flag(p: dict[str, Any], name: str, default: bool, where: Where) -> bool:
    value = p.get(name, default)
    if not isinstance(value, bool):
        where.fail(name, value, "is not true or false")
    return value


def _square_side(size: Any, where: Where, name: str) -> Any:
    """The side of a square size (int, {"shortest_edge": n} or {"height": n, "width": n}); checked later."""
    if isinstance(size, dict):
        if "shortest_edge" in size:
            return size["shortest_edge"]
        if "height" in size and size["height"] == size.get("width"):
            return size["height"]
    elif not isinstance(size, list | tuple):
        return size  # a number, or a non-number check_preprocessing names
    where.fail(name, size, "is not a square size; only square inputs are supported, so make it square")


def _timm_preprocessing(cfg: Any, path: Path) -> dict[str, Any] | None:
    """timm's pretrained_cfg (eval transform: resize to floor(size / crop_pct), center crop)."""
    where = Where(str(path), _FIX, _TIMM_NAMES, CheckpointError)
    if not isinstance(cfg, dict):
        where.fail("pretrained_cfg", cfg, "is not a JSON object")
    input_size = cfg.get("input_size")
    if not isinstance(input_size, list) or len(input_size) != 3:
        where.fail("crop", input_size, "is not [channels, height, width]")
    if cfg.get("crop_mode", "center") != "center" or input_size[-1] != input_size[-2]:
        return None  # squash/border crops have no Preprocessing equivalent; keep the defaults
    crop = check_number(input_size[-1], "crop", where, integer=True, low=1)
    crop_pct = check_number(cfg.get("crop_pct", 0.875), "crop_pct", where, low=0, low_open=True, high=1)
    raw: dict[str, Any] = {"crop": crop, "resize": resize_for_crop_pct(crop, crop_pct)}
    raw.update({k: cfg[k] for k in ("interpolation", "mean", "std") if k in cfg})
    out = check_preprocessing(raw, where)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}  # Preprocessing.to_dict()'s shape
