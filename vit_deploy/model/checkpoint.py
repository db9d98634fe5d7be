"""Reading pretrained ViT checkpoints and loading them into the reference model.

This module owns everything between "the user named some weights" and "the reference model
holds them": resolving the spec (a file, a Hugging Face directory, or an ``hf:`` / ``timm:``
hub id), reading the file *safely* (``torch.load(weights_only=True)``, safetensors, or
``np.load`` without pickles), recognising the layout (timm, Hugging Face transformers 4.x or
5.x names, Google's JAX ``.npz``), mapping it onto the reference (timm) parameter names, and
the strict fit check against the model (missing/unexpected keys, shapes, class count), with
position embeddings resampled when only the resolution differs.

Two steps, because the checkpoint decides part of the model config (``layer_norm_eps``, the
preprocessing) before the model can be built::

    ckpt = read_checkpoint(spec)
    cfg = model_config(variant, img_size, num_classes, **ckpt.config_overrides)
    model = create_model(cfg)
    facts = load_into(model, ckpt)  # provenance for the manifest, e.g. {"pos_embed_resampled_from": 14}

Every failure is a ``CheckpointError`` whose one-line message says what is wrong and what to do.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifact import sha256_file
from ..errors import CheckpointError
from ..specs import VARIANTS
from .pos_embed import grid_of, resample_pos_embed
from .vit import VisionTransformer

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SUPPORTED_SUFFIXES = (".safetensors", *TORCH_SUFFIXES, ".npz")

# timm and the JAX checkpoints were trained with eps 1e-6; Hugging Face's ViTConfig default is
# 1e-12 and HF checkpoints converted from JAX keep that, so a missing key in config.json means 1e-12.
TIMM_LAYER_NORM_EPS = 1e-6
HF_DEFAULT_LAYER_NORM_EPS = 1e-12

# What a directory may hold, in order of preference: safetensors cannot run code and load faster.
_DIR_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Containers that training scripts wrap state dicts in, most specific first. The EMA copies come
# last: timm's own loader prefers the plain weights unless asked for the EMA ones.
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_ema", "state_dict_ema")
# PIL's resampling enum, which HF image processors store as an int.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_LIST_LIMIT = 10
# JAX layouts -> torch: conv HWIO -> OIHW, attention out [heads, hd, dim] -> [dim, heads, hd],
# Dense [in, out] -> [out, in] (timm's _n2p).
_JAX_TO_TORCH_AXES = {4: (3, 2, 0, 1), 3: (2, 0, 1), 2: (1, 0)}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk or the hub, already mapped to the reference (timm) names."""

    state_dict: dict[str, torch.Tensor]
    format: str  # "timm", "hf" or "jax"
    source: str  # the path or hub id as the user gave it
    sha256: str | None  # of the weights file read; None when the weights span several files
    config_overrides: dict[str, Any]  # ModelConfig fields the checkpoint implies (layer_norm_eps)
    preprocessing: dict[str, Any] | None  # Preprocessing.to_dict()-shaped keys, from a processor config
    num_classes: int | None  # rows of the checkpoint's head; None if it has none
    grid: int  # position-embedding grid side; 0 if the checkpoint has no position embedding
    # Attention heads, where the checkpoint records them (HF config.json, JAX kernel shapes). No
    # tensor shape reveals a wrong head count, so load_into checks this against the model.
    heads: int | None = None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def read_checkpoint(spec: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint: a weights file, a Hugging Face directory, ``hf:ORG/NAME`` or ``timm:MODEL.TAG``."""
    source = os.fspath(spec)
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    if source.startswith("hf:"):
        return _read_hf_hub(source)
    if source.startswith("timm:"):
        return _read_timm_hub(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_dir(path, source)
    if not path.exists():
        hint = ""
        if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not path.suffix:
            hint = f" (to download it from the Hugging Face Hub, pass hf:{source})"
        raise CheckpointError(
            f"checkpoint {source!r} does not exist{hint}; pass the path of a weights file "
            f"({', '.join(SUPPORTED_SUFFIXES)}) or of a Hugging Face model directory"
        )
    return _read_weights_file(path, source, side_dir=path.parent)


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
    if pos is not None and pos.ndim == 3 and pos.shape[-1] == cfg.dim and pos.shape[1] != cfg.num_tokens:
        try:
            old_grid = grid_of(pos)
        except ValueError as e:
            raise CheckpointError(
                f"checkpoint {ckpt.source}: cannot resample its position embedding to the model's "
                f"{cfg.grid}x{cfg.grid} grid: {e} (is it a model with extra tokens, e.g. DeiT's distillation "
                "token or register tokens? those are not supported)"
            ) from None
        sd["pos_embed"] = resample_pos_embed(pos, cfg.grid)
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


# --------------------------------------------------------------------------------------------
# Resolving the spec
# --------------------------------------------------------------------------------------------


def _read_dir(path: Path, source: str) -> Checkpoint:
    for name in _DIR_WEIGHT_FILES:
        candidate = path / name
        if candidate.is_file():
            if name.endswith(".index.json"):
                return _read_sharded(candidate, source)
            return _read_weights_file(candidate, source, side_dir=path)
    # A folder holding exactly one weights file (e.g. a downloaded .npz) is unambiguous.
    singles = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUPPORTED_SUFFIXES)
    if len(singles) == 1:
        return _read_weights_file(singles[0], source, side_dir=path)
    found = f"; it holds {len(singles)} candidates: {', '.join(p.name for p in singles)}" if singles else ""
    raise CheckpointError(
        f"directory {source} holds no weights: looked for {', '.join(_DIR_WEIGHT_FILES)}{found}; "
        "pass the path of the weights file itself"
    )


def _read_weights_file(path: Path, source: str, side_dir: Path | None) -> Checkpoint:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {suffix or '(no extension)'!r}; supported are "
            f"{', '.join(SUPPORTED_SUFFIXES)} files, a Hugging Face model directory, "
            "hf:ORG/NAME and timm:MODEL.TAG"
        )
    _sniff(path, suffix)
    if suffix == ".npz":
        state_dict, fmt, heads = _jax_to_reference(_load_npz(path), path)
    else:
        raw = _load_safetensors(path) if suffix == ".safetensors" else _load_torch(path)
        state_dict, fmt, heads = _map_tensors(raw, path, _read_json(side_dir, "config.json"))
    return _finish(state_dict, fmt, source, sha256_file(path), side_dir, heads, path)


def _read_sharded(index: Path, source: str) -> Checkpoint:
    """A Hugging Face ``*.index.json`` naming the shards of one state dict."""
    meta = _read_json(index.parent, index.name)
    weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{index}: not a Hugging Face shard index (no weight_map); re-download the model"
        )
    raw: dict[str, torch.Tensor] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard = index.parent / shard_name
        if not shard.is_file():
            raise CheckpointError(
                f"{index} names shard {shard_name}, which is missing; re-download the model"
            )
        _sniff(shard, shard.suffix.lower())
        raw.update(_load_safetensors(shard) if shard.suffix == ".safetensors" else _load_torch(shard))
    state_dict, fmt, heads = _map_tensors(raw, index, _read_json(index.parent, "config.json"))
    return _finish(state_dict, fmt, source, None, index.parent, heads, index)


def _finish(
    state_dict: dict[str, torch.Tensor],
    fmt: str,
    source: str,
    sha256: str | None,
    side_dir: Path | None,
    heads: int | None,
    path: Path,
) -> Checkpoint:
    if fmt == "hf":
        config = _read_json(side_dir, "config.json")
        config = config if config and _is_vit_config(config) else {}
        eps = float(config.get("layer_norm_eps", HF_DEFAULT_LAYER_NORM_EPS))
    else:
        eps = TIMM_LAYER_NORM_EPS
    pos = state_dict.get("pos_embed")
    grid = 0  # no pos_embed: load_into reports it missing together with everything else
    if pos is not None:
        try:
            grid = grid_of(pos) if pos.ndim == 3 else -1
        except ValueError:
            grid = -1
        if grid < 0:
            raise CheckpointError(
                f"{path}: position embedding of shape {list(pos.shape)} is not a class token plus a square "
                "grid of patches (a model with distillation or register tokens, or without a class token?); "
                "only the plain ViT classifier is supported"
            )
    head = state_dict.get("head.weight")
    return Checkpoint(
        state_dict=state_dict,
        format=fmt,
        source=source,
        sha256=sha256,
        config_overrides={"layer_norm_eps": eps},
        preprocessing=_preprocessing(side_dir) if side_dir is not None else None,
        num_classes=int(head.shape[0]) if head is not None and head.ndim == 2 else None,
        grid=grid,
        heads=heads,
    )


# --------------------------------------------------------------------------------------------
# Hub ids (need network, or a populated Hugging Face cache)
# --------------------------------------------------------------------------------------------


def _read_hf_hub(source: str) -> Checkpoint:
    repo_id, revision = _parse_hub_id(source, "hf:", "hf:ORG/NAME")
    weights = _hub_file(source, repo_id, "model.safetensors", revision, required=False)
    if weights is None:  # older repos only carry the pickle; torch.load(weights_only=True) still guards it
        weights = _hub_file(source, repo_id, "pytorch_model.bin", revision, required=False)
    if weights is None:
        if _offline():
            raise CheckpointError(_hub_failure(source, repo_id, "model.safetensors", None, offline=True))
        raise CheckpointError(
            f"{source}: https://huggingface.co/{repo_id} has neither model.safetensors nor "
            "pytorch_model.bin; "
            "check the repo id, or download the weights elsewhere and pass their local path"
        )
    _hub_file(source, repo_id, "config.json", revision, required=False)
    _hub_file(source, repo_id, "preprocessor_config.json", revision, required=False)
    # hf_hub_download places every file of one revision in the same snapshot folder.
    return _read_weights_file(weights, source, side_dir=weights.parent)


def _read_timm_hub(source: str) -> Checkpoint:
    name, revision = _parse_hub_id(source, "timm:", "timm:MODEL.TAG", need_org=False)
    repo_id = f"timm/{name}"
    weights = _hub_file(source, repo_id, "model.safetensors", revision, required=True)
    assert weights is not None  # required=True raises instead of returning None
    _hub_file(source, repo_id, "config.json", revision, required=False)  # timm's pretrained_cfg
    return _read_weights_file(weights, source, side_dir=weights.parent)


def _parse_hub_id(source: str, prefix: str, form: str, need_org: bool = True) -> tuple[str, str | None]:
    rest, _, revision = source[len(prefix) :].partition("@")
    pattern = r"[\w.-]+/[\w.-]+" if need_org else r"[\w.-]+"
    if not re.fullmatch(pattern, rest):
        raise CheckpointError(f"{source!r} is not a valid hub id; write {form} (optionally @REVISION)")
    return rest, revision or None


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_file(source: str, repo_id: str, filename: str, revision: str | None, required: bool) -> Path | None:
    """Download (or find in the HF cache) one file of a hub repo; None if absent and not required."""
    try:
        import huggingface_hub
        from huggingface_hub import constants as hf_constants
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise CheckpointError(
            f"{source}: downloading from the Hugging Face Hub needs the huggingface_hub package, which is "
            f"not installed; pip install huggingface_hub, or download {filename} from "
            f"https://huggingface.co/{repo_id} "
            "elsewhere and pass its local path"
        ) from None
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour it as it is now, so that an
    # offline machine fails at once instead of retrying the network for half a minute.
    offline = _offline() or bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))
    # HTTP and cache errors are OSErrors; httpx's own errors (huggingface_hub >= 1.0) are not;
    # an invalid repo id or revision is a ValueError.
    network_errors = (OSError, ValueError, getattr(hf_errors, "HTTPError", OSError))
    try:
        local = huggingface_hub.hf_hub_download(
            repo_id, filename, revision=revision, local_files_only=offline
        )
    except hf_errors.EntryNotFoundError as e:
        # Remote 404, or (offline) not in the cache: fine for the optional files. The weights are
        # fetched first, so by now the network was shown to work or the cache to be the source.
        if not required and (offline or not isinstance(e, hf_errors.LocalEntryNotFoundError)):
            return None
        raise CheckpointError(_hub_failure(source, repo_id, filename, e, offline)) from None
    except network_errors as e:
        raise CheckpointError(_hub_failure(source, repo_id, filename, e, offline)) from None
    return Path(local)


def _hub_failure(source: str, repo_id: str, filename: str, error: Exception | None, offline: bool) -> str:
    if offline or error is None:
        reason = "offline mode is on (HF_HUB_OFFLINE) and it is not in the local Hugging Face cache"
    else:
        first_line = (str(error).strip().splitlines() or [""])[0]
        reason = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    return (
        f"{source}: could not download {filename} from https://huggingface.co/{repo_id} ({reason}); "
        f"download it on a machine with network access (e.g. `hf download {repo_id} {filename}`) "
        "and pass the local file or directory path instead"
    )


# --------------------------------------------------------------------------------------------
# Reading files safely
# --------------------------------------------------------------------------------------------


def _sniff(path: Path, suffix: str) -> None:
    """Reject files that are plainly not weights before a parser reports something cryptic."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e.strerror}); check its permissions") from None
    if not head:
        raise CheckpointError(f"{path}: the file is empty; re-download or re-save the checkpoint")
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(
            f"{path}: this is a Git LFS pointer, not the weights; run `git lfs pull` in its "
            "repository (or download the file itself) and try again"
        )
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise CheckpointError(
            f"{path}: this is an HTML page, not weights (a failed or login-walled download?); "
            "download the file again"
        )
    is_zip = head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06")
    if suffix == ".npz":
        ok = is_zip
    elif suffix == ".safetensors":
        # 8-byte little-endian header length, then the JSON header itself.
        ok = len(head) > 8 and head[8:9] == b"{"
    else:
        # torch.save writes a zip archive; the pre-1.6 format is a bare pickle (protocol opcode 0x80).
        ok = is_zip or head.startswith(b"\x80")
    if not ok:
        kind = {".npz": "NumPy .npz archive", ".safetensors": "safetensors file"}.get(
            suffix, "PyTorch checkpoint"
        )
        looks = " (it looks like text)" if _looks_like_text(head) else ""
        raise CheckpointError(f"{path}: not a {kind}{looks}; check that this is the weights file you meant")


def _looks_like_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only=True: the unpickler only builds tensors and plain containers, so a file
        # carrying code is refused instead of executed. Never weaken this.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "Weights only load failed" in message:
            detail = next((ln.strip() for ln in message.splitlines() if "GLOBAL" in ln or "global" in ln), "")
            detail = f" ({detail})" if detail else ""
            raise CheckpointError(
                f"{path}: the file contains code or Python objects that are not plain tensors{detail}; "
                "it was NOT executed. If you trust its source, load it once yourself with torch.load(..., "
                "weights_only=False), save the state dict with safetensors.torch.save_file and pass the "
                ".safetensors file"
            ) from None
        raise CheckpointError(_corrupt(path, e)) from None
    except (
        RuntimeError,
        EOFError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        struct.error,
        zipfile.BadZipFile,
        OSError,
    ) as e:
        raise CheckpointError(_corrupt(path, e)) from None
    return _unwrap(obj, path)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(_corrupt(path, e)) from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        # allow_pickle=False: object arrays would be unpickled, i.e. could run code.
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}  # read every member now, so corruption surfaces here
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CheckpointError(
                f"{path}: the archive holds pickled Python objects, which are not loaded "
                "(they could run code); pass an .npz of plain numeric arrays"
            ) from None
        raise CheckpointError(_corrupt(path, e)) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as e:
        raise CheckpointError(_corrupt(path, e)) from None


def _corrupt(path: Path, error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    detail = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    return (
        f"{path}: the file is truncated or corrupt and cannot be read ({detail}); download or save it again"
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside what torch.load returned: bare, or in a training script's container."""
    sd = _find_state_dict(obj, depth=0)
    if sd is None:
        if isinstance(obj, Mapping):
            keys = sorted(str(k) for k in obj)
            what = f"a dict with keys {_fmt_list(keys)}"
        else:
            what = f"a {type(obj).__name__}"
        raise CheckpointError(
            f"{path}: holds {what}, not a state dict of tensors (looked inside {', '.join(_WRAPPER_KEYS)}); "
            "save model.state_dict() and pass that file"
        )
    # DistributedDataParallel prefixes every name with "module.".
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def _find_state_dict(obj: Any, depth: int) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, Mapping) or not obj:
        return None
    if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    if depth < 2:  # e.g. {"model": {"state_dict": ...}}; deeper nesting is not a convention
        for key in _WRAPPER_KEYS:
            if key in obj:
                found = _find_state_dict(obj[key], depth + 1)
                if found is not None:
                    return found
    return None


def _read_json(directory: Path | None, name: str) -> dict[str, Any] | None:
    if directory is None:
        return None
    path = directory / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e}); fix or remove the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object, found {type(data).__name__}; fix or remove it"
        )
    return data


# --------------------------------------------------------------------------------------------
# Layouts -> reference (timm) names
# --------------------------------------------------------------------------------------------


def _map_tensors(
    raw: dict[str, torch.Tensor], path: Path, config: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], str, int | None]:
    if not raw:
        raise CheckpointError(
            f"{path}: the checkpoint holds no tensors; pass the file with the model weights"
        )
    if any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in raw):
        return _hf_to_reference(raw, path, config if _is_vit_config(config) else None)
    if any(k.endswith("embedding/kernel") for k in raw):  # a JAX layout re-saved as torch/safetensors
        return _jax_to_reference({k: v.numpy() for k, v in raw.items()}, path)
    return raw, "timm", None


def _is_vit_config(config: dict[str, Any] | None) -> bool:
    # A config.json that happens to sit beside the file but describes something else is ignored.
    return bool(config) and config.get("model_type", "vit") == "vit"


# transformers 4.x (and save_pretrained's on-disk names) | 5.x in-memory names -> reference names.
_HF_LAYER_MODULES = {
    "attention.attention.query": "q",
    "attention.q_proj": "q",
    "attention.attention.key": "k",
    "attention.k_proj": "k",
    "attention.attention.value": "v",
    "attention.v_proj": "v",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)")


def _hf_to_reference(
    raw: dict[str, torch.Tensor], path: Path, config: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], str, int | None]:
    config = config or {}
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(
            f"{path}: the Hugging Face config uses hidden_act={act!r}; the reference model "
            "implements the exact (erf) GELU only, as all ViT checkpoints do"
        )
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[int, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in raw.items():
        # ViTForImageClassification nests the encoder under "vit."; a bare ViTModel does not.
        name = key.removeprefix("vit.")
        if name == "embeddings.mask_token":
            continue  # only used for masked-image pre-training; never part of the classifier
        if name in _HF_TOP:
            out[_HF_TOP[name]] = tensor
        elif key in ("classifier.weight", "classifier.bias"):
            out["head." + key.rsplit(".", 1)[1]] = tensor
        elif (m := _HF_LAYER.fullmatch(name)) and m.group(2) in _HF_LAYER_MODULES:
            layer, target, param = int(m.group(1)), _HF_LAYER_MODULES[m.group(2)], m.group(3)
            if target in ("q", "k", "v"):
                qkv_parts.setdefault((layer, param), {})[target] = (key, tensor)
            else:
                out[f"blocks.{layer}.{target}.{param}"] = tensor
        else:
            out[key] = tensor  # kept under its own name, so the fit check lists it as unexpected
    for (layer, param), parts in qkv_parts.items():
        if set(parts) == {"q", "k", "v"} and len({t.shape for _, t in parts.values()}) == 1:
            # The reference's fused projection is [q; k; v] along the output dim, like timm's.
            out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts[n][1] for n in ("q", "k", "v")], dim=0)
        else:  # incomplete or inconsistent: report the pieces (unexpected) and the fused key (missing)
            out.update(dict(parts.values()))
    if config.get("qkv_bias") is False:
        # HF can drop the q/k/v biases; the reference always has one, and zero is the same function.
        for layer in {layer for layer, _ in qkv_parts}:
            weight = out.get(f"blocks.{layer}.attn.qkv.weight")
            if weight is not None:
                out.setdefault(f"blocks.{layer}.attn.qkv.bias", weight.new_zeros(weight.shape[0]))
    heads = config.get("num_attention_heads")
    return out, "hf", int(heads) if isinstance(heads, int) else None


def _jax_to_reference(
    arrays: dict[str, np.ndarray], path: Path
) -> tuple[dict[str, torch.Tensor], str, int | None]:
    """Google's JAX ViT (.npz) -> reference names. Follows timm's ``_load_weights``.

    JAX stores Dense kernels as [in, out] and attention kernels per head: query/key/value
    [dim, heads, head_dim] with bias [heads, head_dim], out [heads, head_dim, dim]; the patch
    embedding conv is HWIO [ph, pw, C, dim]. big_vision checkpoints nest everything under
    "params/" with other module indices, and may stack ("scan") the blocks along a leading axis.
    """
    prefix = next(
        (p for p in ("opt/target/", "params/img/", "params/") if f"{p}embedding/kernel" in arrays), ""
    )
    if f"{prefix}embedding/kernel" not in arrays:
        raise CheckpointError(
            f"{path}: not a Google ViT JAX checkpoint (no 'embedding/kernel' array); "
            "pass a timm/Hugging Face state dict or an official ViT .npz"
        )
    big_vision = prefix.startswith("params/")
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def take(key: str, transpose: bool = True, idx: int | None = None) -> torch.Tensor | None:
        full = prefix + key
        if full not in arrays:
            return None
        used.add(full)
        w = arrays[full] if idx is None else arrays[full][idx]
        if w.ndim == 4 and w.shape[0] == w.shape[1] == w.shape[2] == 1:
            w = w.reshape(-1)  # a [1, 1, 1, D] scale/bias saved with its broadcast dims
        if transpose and w.ndim in _JAX_TO_TORCH_AXES:
            w = np.transpose(w, _JAX_TO_TORCH_AXES[w.ndim])
        try:
            return torch.from_numpy(np.ascontiguousarray(w))
        except TypeError:
            raise CheckpointError(
                f"{path}: array {full!r} has dtype {w.dtype}, which torch cannot read "
                "(bfloat16 saved without ml_dtypes?); re-save it as float32"
            ) from None

    def put(name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            out[name] = tensor

    put("patch_embed.proj.weight", take("embedding/kernel"))
    put("patch_embed.proj.bias", take("embedding/bias"))
    put("cls_token", take("cls", transpose=False))
    put(
        "pos_embed",
        take("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding", transpose=False),
    )
    put("norm.weight", take("Transformer/encoder_norm/scale"))
    put("norm.bias", take("Transformer/encoder_norm/bias"))
    put("head.weight", take("head/kernel"))
    put("head.bias", take("head/bias"))

    mha, mlp, ln2 = (
        ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
        if big_vision
        else ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    )
    scanned = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in arrays
    if scanned:
        depth = arrays[f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
    else:
        block_re = re.compile(re.escape(prefix) + r"Transformer/encoderblock_(\d+)/")
        depth = 1 + max((int(m.group(1)) for k in arrays if (m := block_re.match(k))), default=-1)
    heads: int | None = None
    for i in range(depth):
        bp, idx = ("Transformer/encoderblock/", i) if scanned else (f"Transformer/encoderblock_{i}/", None)
        b = f"blocks.{i}."
        put(b + "norm1.weight", take(bp + "LayerNorm_0/scale", idx=idx))
        put(b + "norm1.bias", take(bp + "LayerNorm_0/bias", idx=idx))
        kernels = [take(f"{bp}{mha}/{n}/kernel", transpose=False, idx=idx) for n in ("query", "key", "value")]
        if all(k is not None and k.ndim == 3 for k in kernels):
            heads = heads or int(kernels[0].shape[1])
            # [dim, heads, head_dim] -> [dim, dim] (in, out) -> [out, in], stacked q, k, v.
            out[b + "attn.qkv.weight"] = torch.cat([k.flatten(1).T for k in kernels])
        biases = [take(f"{bp}{mha}/{n}/bias", transpose=False, idx=idx) for n in ("query", "key", "value")]
        if all(x is not None for x in biases):
            out[b + "attn.qkv.bias"] = torch.cat([x.reshape(-1) for x in biases])
        proj = take(f"{bp}{mha}/out/kernel", idx=idx)  # -> [dim, heads, head_dim]
        put(b + "attn.proj.weight", proj.flatten(1) if proj is not None else None)
        put(b + "attn.proj.bias", take(f"{bp}{mha}/out/bias", idx=idx))
        put(b + "norm2.weight", take(f"{bp}{ln2}/scale", idx=idx))
        put(b + "norm2.bias", take(f"{bp}{ln2}/bias", idx=idx))
        for r in range(2):
            put(f"{b}mlp.fc{r + 1}.weight", take(f"{bp}{mlp}/Dense_{r}/kernel", idx=idx))
            put(f"{b}mlp.fc{r + 1}.bias", take(f"{bp}{mlp}/Dense_{r}/bias", idx=idx))
    # Arrays nothing above consumed (pre_logits, a MAP head, ...) stay under their own names, so
    # the fit check reports them as unexpected instead of silently dropping them.
    for key in arrays.keys() - used:
        try:
            out[key] = torch.from_numpy(np.ascontiguousarray(arrays[key]))
        except TypeError:
            out[key] = torch.empty(0)
    return out, "jax", heads


# --------------------------------------------------------------------------------------------
# Preprocessing from a processor config
# --------------------------------------------------------------------------------------------


def _preprocessing(side_dir: Path) -> dict[str, Any] | None:
    hf = _read_json(side_dir, "preprocessor_config.json")
    if hf is not None:
        return _hf_preprocessing(hf, side_dir / "preprocessor_config.json")
    timm_cfg = _read_json(side_dir, "config.json")
    if timm_cfg and isinstance(timm_cfg.get("pretrained_cfg"), dict):
        return _timm_preprocessing(timm_cfg["pretrained_cfg"])
    return None


def _hf_preprocessing(p: dict[str, Any], path: Path) -> dict[str, Any]:
    """Map an HF image processor config onto Preprocessing fields (ViTImageProcessor defaults)."""
    out: dict[str, Any] = {}
    resample = p.get("resample", 2)  # ViTImageProcessor default: PIL bilinear
    interpolation = (
        _PIL_RESAMPLE.get(resample, resample) if isinstance(resample, int) else str(resample).lower()
    )
    if interpolation not in _PIL_RESAMPLE.values():
        raise CheckpointError(f"{path}: unknown resample value {resample!r}; fix or remove the file")
    if p.get("do_resize", True):
        side = _square_side(p.get("size", {"height": 224, "width": 224}), path, "size")
        out.update(resize=side, crop=side, interpolation=interpolation)
    if p.get("do_center_crop", False) and p.get("crop_size") is not None:
        out["crop"] = _square_side(p["crop_size"], path, "crop_size")
    # HF computes (pixel * rescale_factor - mean) / std on 0..255 pixels; Preprocessing computes
    # (x - mean) / std on x = pixel / 255. Equal when mean and std are divided by 255 * factor.
    factor = float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0
    scale = 255.0 * factor
    if p.get("do_normalize", True):
        mean = [float(v) for v in p.get("image_mean", (0.5, 0.5, 0.5))]
        std = [float(v) for v in p.get("image_std", (0.5, 0.5, 0.5))]
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError(
            f"{path}: image_mean/image_std must have 3 values (RGB); fix or remove the file"
        )
    out["mean"] = [m / scale for m in mean]
    out["std"] = [s / scale for s in std]
    return out


def _square_side(size: Any, path: Path, field: str) -> int:
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
        if "height" in size and size["height"] == size.get("width"):
            return int(size["height"])
    raise CheckpointError(
        f"{path}: {field}={size!r} is not square; only square inputs are supported, "
        "so remove the file or make the size square"
    )


def _timm_preprocessing(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """timm's pretrained_cfg (eval transform: resize to floor(size / crop_pct), center crop)."""
    input_size = cfg.get("input_size")
    if cfg.get("crop_mode", "center") != "center" or not input_size or input_size[-1] != input_size[-2]:
        return None  # squash/border crops have no Preprocessing equivalent; keep the defaults
    crop = int(input_size[-1])
    out: dict[str, Any] = {"crop": crop, "resize": math.floor(crop / float(cfg.get("crop_pct", 0.875)))}
    if "interpolation" in cfg:
        out["interpolation"] = str(cfg["interpolation"])
    for key in ("mean", "std"):
        if key in cfg:
            out[key] = [float(v) for v in cfg[key]]
    return out


# --------------------------------------------------------------------------------------------
# Fit-check helpers
# --------------------------------------------------------------------------------------------


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


def _fmt_list(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown if len(items) <= _LIST_LIMIT else f"{shown}, ... and {len(items) - _LIST_LIMIT} more"
