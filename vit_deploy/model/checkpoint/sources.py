"""Where a checkpoint comes from: a file, a Hugging Face folder, sharded weights or a hub id -> a
:class:`Checkpoint` already mapped to the reference (timm) names."""


from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...artifact import sha256_file
from ...errors import CheckpointError
from ...specs import HUB_PREFIXES
from ..pos_embed import grid_of
from .configs import read_config, read_preprocessing
from .layouts import _is_vit_config, _jax_to_reference, _map_tensors
from .readers import _load_tensors, _read_json

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
    # (absolute path, sha256) of every weights file read (one, or each shard): what a later
    # rebuild of the reference must find unchanged, from any working directory.
    files: tuple[tuple[str, str], ...] = ()
    path: str | None = None  # the local file or folder as an absolute path; None for a hub id

    def provenance(self) -> dict[str, Any]:
        """Where the weights came from, for the manifest's ``checkpoint`` section."""
        located = {"path": self.path} if self.path else {}
        return {"source": self.source, **located, "format": self.format, "sha256": self.sha256,
                "files": [{"path": p, "sha256": h} for p, h in self.files]}


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
    config = read_config(side_dir)  # checked first: a corrupt config fails before the weights are read
    raw = _load_tensors(path)
    if suffix == ".npz":
        state_dict, fmt, heads = _jax_to_reference(raw, path)
    else:
        state_dict, fmt, heads = _map_tensors(raw, path, config)
    digest = sha256_file(path)
    return _finish(state_dict, fmt, source, ((path, digest),), config, side_dir, heads, path)


def _read_sharded(index: Path, source: str) -> Checkpoint:
    """A Hugging Face ``*.index.json`` naming the shards of one state dict."""
    meta = _read_json(index.parent, index.name)
    weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{index}: not a Hugging Face shard index (no weight_map); re-download the model"
        )
    config = read_config(index.parent)
    raw: dict[str, torch.Tensor] = {}
    files = []
    for shard_name in sorted(set(weight_map.values())):
        shard = index.parent / str(shard_name)
        if not isinstance(shard_name, str) or Path(shard_name).name != shard_name:  # "../x", "/etc/x"
            raise CheckpointError(
                f"{index} names shard {shard_name!r}, which is not a file name in its folder; re-download the model"
            )
        if not shard.is_file() or shard.suffix.lower() not in (".safetensors", *TORCH_SUFFIXES):
            raise CheckpointError(
                f"{index} names shard {shard_name}, which is missing or not a weights file; re-download the model"
            )
        raw.update(_load_tensors(shard))
        files.append((shard, sha256_file(shard)))
    state_dict, fmt, heads = _map_tensors(raw, index, config)
    return _finish(state_dict, fmt, source, tuple(files), config, index.parent, heads, index)


def _finish(
    state_dict: dict[str, torch.Tensor],
    fmt: str,
    source: str,
    files: tuple[tuple[Path, str], ...],
    config: dict[str, Any] | None,
    side_dir: Path | None,
    heads: int | None,
    path: Path,
) -> Checkpoint:
    if fmt == "hf":
        vit_config = config if config and _is_vit_config(config) else {}
        eps = float(vit_config.get("layer_norm_eps", HF_DEFAULT_LAYER_NORM_EPS))
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
        sha256=files[0][1] if len(files) == 1 else None,
        config_overrides={"layer_norm_eps": eps},
        preprocessing=read_preprocessing(side_dir, config),
        num_classes=int(head.shape[0]) if head is not None and head.ndim == 2 else None,
        grid=grid,
        heads=heads,
        files=tuple((str(p.absolute()), digest) for p, digest in files),
        path=None if source.startswith(HUB_PREFIXES) else str(Path(source).expanduser().absolute()),
    )


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
