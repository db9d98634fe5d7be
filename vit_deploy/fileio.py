"""Crash-safe writes: atomic files and staged artifact directories.

A finished-looking artifact must never be the product of an interrupted run. Files are written
to a temporary name in the target folder and renamed; whole artifacts are built in a hidden
staging directory beside the target and renamed into place only when complete, after which the
manifest (written last inside the staging directory) marks them finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ArtifactError


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give: mkstemp/mkdtemp use 0600/0700 instead."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode(directory=False))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_can_write(out_dir: Path, force: bool) -> Path:
    """Refuse to clobber an existing artifact (or any non-empty folder) without ``force``; returns ``out_dir``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"{out_dir} exists and is not a folder; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        what = "an artifact" if (out_dir / "manifest.json").exists() else "files"
        raise ArtifactError(f"{out_dir} already holds {what}; pass --force to overwrite, or choose another --out")
    return out_dir


@contextlib.contextmanager
def staged_directory(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out_dir``, on any failure it is removed.

    The staging folder is a hidden sibling of ``out_dir`` (same filesystem, so the final rename
    is atomic) whose name says it is partial. KeyboardInterrupt is handled like any failure.
    """
    out_dir = Path(out_dir).absolute()
    check_can_write(out_dir, force)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
        staging.chmod(_default_mode(directory=True))
    except OSError as e:
        raise ArtifactError(
            f"cannot write to {out_dir.parent} ({e.strerror or e}); choose a writable --out"
        ) from e
    try:
        yield staging
        _replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_directory(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    # Two renames leave a window with no target, but never a mixed or half-written one.
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
