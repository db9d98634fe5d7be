"""Reading checkpoint files safely: ``torch.load(weights_only=True)`` (a pickle that would run code is
refused), safetensors, ``np.load`` without pickles; corrupt files, wrapper dicts and tensors holding
NaN or infinite values named clearly."""


from __future__ import annotations

import json
import pickle
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CheckpointError

# Containers that training scripts wrap state dicts in, most specific first. The EMA copies come
# last: timm's own loader prefers the plain weights unless asked for the EMA ones.
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_ema", "state_dict_ema")
_LIST_LIMIT = 10
# Every tensor is cast to float32 at load (fit.load_into): a float64 value beyond this becomes inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _load_tensors(path: Path) -> dict[str, torch.Tensor] | dict[str, np.ndarray]:
    """Every tensor of one weights file (arrays for ``.npz``), after the checks all formats share."""
    suffix = path.suffix.lower()
    _sniff(path, suffix)
    if suffix == ".npz":
        tensors: Mapping[str, Any] = _load_npz(path)
    elif suffix == ".safetensors":
        tensors = _load_safetensors(path)
    else:
        tensors = _load_torch(path)
    _refuse_non_finite(tensors, path)
    return dict(tensors)


def _refuse_non_finite(tensors: Mapping[str, Any], path: Path) -> None:
    """CheckpointError naming the first tensors that hold NaN or Inf (or float64 beyond float32's range).

    Such weights export and "validate" (NaN compares as nothing) into an artifact that answers NaN.
    One elementwise pass per float tensor; the boolean mask is the only temporary.
    """
    bad: list[str] = []
    for name, t in tensors.items():
        if isinstance(t, np.ndarray):
            if t.dtype.kind not in "fc":  # ints cannot hold NaN; ml_dtypes' bfloat16 is refused at conversion
                continue
            ok = np.abs(t) <= _FLOAT32_MAX if t.dtype == np.float64 else np.isfinite(t)
            count = int(t.size - np.count_nonzero(ok))
        else:
            if not (t.is_floating_point() or t.is_complex()):
                continue
            ok = t.abs() <= _FLOAT32_MAX if t.dtype == torch.float64 else torch.isfinite(t)
            count = int(t.numel() - ok.sum())
        if count:
            bad.append(f"{name} ({count} of {t.size if isinstance(t, np.ndarray) else t.numel()} values)")
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinite values: {_fmt_list(bad, limit=3)}; the weights "
            "are broken (a diverged training run or a failed conversion?): use an earlier checkpoint, or repair "
            "those tensors and save the file again"
        )


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
    except (OSError, ValueError) as e:  # ValueError: bad UTF-8, bad JSON, an int of over 4300 digits
        raise CheckpointError(f"{path}: cannot read it as JSON ({e}); fix or remove the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object, found {type(data).__name__}; fix or remove it"
        )
    return data


def _fmt_list(items: list[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... and {len(items) - limit} more"
