"""Crash-safe writes: atomic files, and artifact folders that are published whole or not at all.

A finished-looking artifact must never be the product of an interrupted run, and no write may
lose what is already on disk. Files are written to a temporary name in the target folder and
renamed. Whole artifacts (and Triton model repositories) are built in a hidden staging folder
beside the target, with the manifest written last, and published by one rename.

Every writer of a folder goes through :func:`staged_directory`, which enforces:

- **What may be replaced.** A folder is replaced only with ``force``, and only when vit-deploy
  wrote it (its marker file: our manifest, or the repository marker) and holds nothing else at
  its top level; an empty folder needs no ``force``. Never ``/``, the home folder, the working
  directory or an ancestor of either, however the path is spelled (``..``, symlinks, a trailing
  slash): publishing renames a folder over the target, which would replace the whole of it.
- **One writer at a time.** An exclusive ``flock`` on a hidden ``.NAME.lock`` beside the target
  is held from the check to the publish; a second writer fails at once, before any slow step.
- **Publishing cannot replace what it did not check.** Linux ``renameat2``: ``RENAME_NOREPLACE``
  for a new folder, ``RENAME_EXCHANGE`` to swap in a replacement (the old one is whole until the
  swap, which is atomic). Where the kernel or filesystem lacks it, ``rename`` (which can replace
  only an empty folder) and a two-rename swap that is undone if its second half fails.
- **Nothing writes inside what vit-deploy wrote.** No folder is staged, and no output file
  (report, results, log, timing cache) is written, inside an artifact or a model repository; an
  output file replaces an existing file only when its command wrote it, or with ``force``
  (:func:`check_output_file`).
- **Failures are one line.** Any OSError while staging, writing or publishing (disk full, file
  size limit, read-only or immutable target) becomes an ArtifactError naming the folder, the
  cause and what to do; the staging folder is removed and the old artifact, if any, is untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import ArtifactError

# What a writer makes, and so what its --force may replace.
ARTIFACT = "artifact"
REPOSITORY = "repository"
MANIFESTS = "manifests"  # vit-deploy k8s: a folder of Kubernetes manifests
REPOSITORY_MARKER = ".vit-deploy-repository.json"  # Triton loads only sub-folders, so it ignores this file
REPOSITORY_SCHEMA = "vit-deploy/triton-repository"
MANIFEST_NAME = "manifest.json"  # an artifact's marker: artifact.py reads and writes it
SCHEMA = "vit-deploy/manifest"
_NOUNS = {ARTIFACT: "a vit-deploy artifact", REPOSITORY: "a vit-deploy model repository",
          MANIFESTS: "a folder of vit-deploy Kubernetes manifests"}
_MARKERS = {ARTIFACT: (MANIFEST_NAME, SCHEMA), REPOSITORY: (REPOSITORY_MARKER, REPOSITORY_SCHEMA),
            MANIFESTS: (".vit-deploy-manifests.json", "vit-deploy/k8s-manifests")}

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

# What to do about a failed write, by errno; anything else gets the last line.
_ADVICE = {
    errno.ENOSPC: "free some space on that disk, or choose another output folder",
    errno.EDQUOT: "free some space (your disk quota is used up), or choose another output folder",
    errno.EFBIG: "raise the file size limit (ulimit -f), or choose another output folder",
    errno.EROFS: "that filesystem is read-only: choose another output folder",
    errno.EACCES: "make it writable, or choose another output folder",
    errno.EPERM: "it may be immutable (lsattr) or owned by someone else: make it writable, or choose another "
                 "output folder",
}


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give: mkstemp/mkdtemp use 0600/0700 instead."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (OSError on failure, with no temporary file left)."""
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


def write_output(path: Path, text: str) -> None:
    """``atomic_write_text`` for a file the user asked for (a report, a summary): the folder is made
    when missing, and a refused write (disk full, read-only, ...) is one ArtifactError line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as e:
        raise _write_failed(path, e) from e


def managed_folder(path: Path) -> tuple[Path, str] | None:
    """The folder at or above ``path`` that vit-deploy wrote (an artifact or a model repository) and its noun.

    Such a folder is whole as written: a file added to it breaks an artifact's hashes or a
    repository's model list, and --force would no longer replace it. So nothing else writes there.
    """
    real = _real(path)
    for folder in (real, *real.parents):
        for kind in (ARTIFACT, REPOSITORY):
            if _read_marker(folder, kind) is not None:
                return folder, _NOUNS[kind]
    return None


def check_output_file(path: Path, force: bool, written_by: Callable[[Path], bool], option: str, what: str) -> Path:
    """Refuse (ArtifactError) an output file that would land inside an artifact or model repository, or
    replace a file that ``what`` did not write (``written_by(path)`` says whether it did) without ``force``.

    Checked before the command's work starts, so a refused path costs nothing; returns ``path``.
    """
    path = Path(path)
    inside = managed_folder(path.parent)
    if inside is not None:
        folder, noun = inside
        raise ArtifactError(f"{option} {path} is inside {folder}, {noun}: a file written there changes it; "
                            "choose a path outside it")
    if path.is_file() and not force and not written_by(path):  # a folder there: the write itself says so
        raise ArtifactError(f"{option} {path} exists and is not a file {what} wrote; pass --force to replace it, "
                            "or choose another file")
    return path


def check_output_folder(folder: Path, option: str) -> Path:
    """Refuse (ArtifactError) an output folder that is, or is inside, an artifact or a model repository."""
    inside = managed_folder(folder)
    if inside is not None:
        where, noun = inside
        at = "is" if where == _real(folder) else f"is inside {where},"
        raise ArtifactError(f"{option} {folder} {at} {noun}: files written there change it; choose a folder "
                            "outside it")
    return Path(folder)


def check_output_set(folder: Path, stem: str, suffixes: tuple[str, ...], schema: str, force: bool,
                     what: str) -> Path:
    """:func:`check_output_folder`, then :func:`check_output_file` for ``stem`` + each suffix in ``folder``.

    The first suffix is JSON naming ``schema``; the others are written with it in the same run, so
    they count as ours when that JSON is ours.
    """
    check_output_folder(folder, "--out")
    main = Path(folder) / f"{stem}{suffixes[0]}"
    ours = written_json(schema)
    check_output_file(main, force, ours, "--out", what)
    for suffix in suffixes[1:]:
        check_output_file(Path(folder) / f"{stem}{suffix}", force, lambda _: ours(main), "--out", what)
    return Path(folder)


def written_json(schema: str) -> Callable[[Path], bool]:
    """``written_by`` for :func:`check_output_file`: the file is JSON naming ``schema`` (what we write)."""

    def check(path: Path) -> bool:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        return isinstance(doc, dict) and doc.get("schema") == schema

    return check


def mark_repository(folder: Path, models: list[str]) -> None:
    """Mark ``folder`` as a model repository vit-deploy wrote, listing its models (all --force may delete)."""
    mark_folder(folder, REPOSITORY, models)


def mark_folder(folder: Path, kind: str, entries: list[str]) -> None:
    """Mark ``folder`` as one of ``kind`` that vit-deploy wrote, listing its top-level ``entries`` (what --force
    may delete)."""
    name, schema = _marker(kind)
    marker = {"schema": schema, "files": [{"path": entry} for entry in entries]}
    atomic_write_text(folder / name, json.dumps(marker, indent=2) + "\n")


def _write_failed(target: Path, e: OSError) -> ArtifactError:
    """The one line for a write that the system refused: which folder, why, and what to do."""
    where = f" ({Path(e.filename).name})" if e.filename else ""
    advice = _ADVICE.get(e.errno, "fix that and run again, or choose another output folder")
    return ArtifactError(f"cannot write to {target}: {e.strerror or e}{where}; nothing there was changed; {advice}")


def check_can_write(out_dir: Path, force: bool, kind: str = ARTIFACT) -> Path:
    """The cheap early check (no lock taken): raise ArtifactError if ``out_dir`` may not be written; returns it.

    :func:`staged_directory` checks again under its lock; this one lets a command fail before its slow steps.
    """
    real = _real(out_dir)
    _refuse_protected(out_dir, real)
    _refuse_nested(out_dir, real)
    try:
        fd = os.open(_lock_path(real), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        fd = None  # no writer has it (or it is not ours to open): staged_directory decides under the lock
    if fd is not None:
        try:
            _try_lock(fd, out_dir)
        finally:
            os.close(fd)  # closing releases the probe's lock, if it got one
    try:
        _refuse_existing(out_dir, real, force, kind)
    except OSError as e:
        raise _write_failed(out_dir, e) from e
    return out_dir


@contextlib.contextmanager
def staged_directory(out_dir: Path, force: bool, kind: str = ARTIFACT) -> Iterator[Path]:
    """Yield an empty staging folder; on success it is published as ``out_dir``, on any failure it is removed.

    ``kind`` is what is written (:data:`ARTIFACT` or :data:`REPOSITORY`): with ``force`` only a folder
    of the same kind is replaced. The staging folder is a hidden sibling of ``out_dir`` (same
    filesystem, so publishing is one rename) whose name says it is partial. KeyboardInterrupt is
    handled like any failure. Enter this before a command's slow steps: it takes the writer's lock.
    """
    out_dir = Path(out_dir).absolute()
    real = _real(out_dir)
    _refuse_protected(out_dir, real)
    _refuse_nested(out_dir, real)
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        lock = _locked(real, out_dir)
    except OSError as e:
        raise _write_failed(out_dir, e) from e
    staging = None
    try:
        _refuse_existing(out_dir, real, force, kind)
        staging = Path(tempfile.mkdtemp(dir=real.parent, prefix=f".{real.name}.partial-"))
        staging.chmod(_default_mode(directory=True))
        yield staging
        _publish(staging, real, out_dir, force, kind)
    except OSError as e:
        raise _write_failed(out_dir, e) from e
    finally:
        # after a failure: the partial new folder; after a publish: nothing, or the folder it replaced
        left = _remove(staging) if staging is not None else None
        _unlock(lock, real)
    if left is not None:
        raise ArtifactError(
            f"{out_dir} is written, but the folder it replaced could not be removed entirely ({left.strerror or left}"
            f"{f': {left.filename}' if left.filename else ''}); delete {staging} yourself (lsattr shows immutable "
            "files; chattr -i clears them)"
        )


def _remove(folder: Path) -> OSError | None:
    """Delete ``folder``; returns the first error if some of it could not be deleted."""
    errors: list[OSError] = []
    if folder.exists():
        shutil.rmtree(folder, onerror=lambda func, path, exc_info: errors.append(exc_info[1]))  # onexc: 3.12+
    return errors[0] if errors and folder.exists() else None


def _real(out_dir: Path) -> Path:
    """The folder ``out_dir`` names, with ``..``, symlinks and trailing slashes resolved."""
    return Path(os.path.realpath(Path(out_dir).absolute()))


def _refuse_protected(out_dir: Path, real: Path) -> None:
    """Never write over /, home, the working directory or an ancestor: the new folder would replace it whole."""
    for label, where in {"the working directory": Path.cwd, "your home folder": Path.home}.items():
        with contextlib.suppress(OSError, RuntimeError):  # a deleted working directory, no known home: no danger
            here = _real(where())
            if here.is_relative_to(real):
                what = label if here == real else f"an ancestor of {label} ({here})"
                raise ArtifactError(
                    f"{out_dir} is {what}; vit-deploy writes a folder by replacing all of it, so it never writes "
                    f"there: choose a new folder inside it, e.g. --out {Path(out_dir) / 'my-artifact'}"
                )


def _refuse_nested(out_dir: Path, real: Path) -> None:
    """Never stage or publish inside an artifact or a model repository: that would change the one around it."""
    inside = managed_folder(real.parent)
    if inside is not None:
        folder, noun = inside
        raise ArtifactError(f"{out_dir} is inside {folder}, {noun}: a folder written there changes it; "
                            f"choose a folder outside it, e.g. --out {folder.parent / real.name}")


def _refuse_existing(out_dir: Path, real: Path, force: bool, kind: str) -> None:
    """Refuse unless ``real`` is absent, an empty folder, or (with ``force``) a folder of ``kind`` we wrote."""
    if not real.exists():
        return
    if not real.is_dir():
        raise ArtifactError(f"{out_dir} exists and is not a folder; choose another output folder")
    entries = sorted(p.name for p in real.iterdir())
    if not entries:
        return
    foreign = _foreign_entries(real, kind, entries)
    if foreign is None:
        raise ArtifactError(
            f"{out_dir} is not {_NOUNS[kind]} (it holds {_some(entries)}); vit-deploy replaces only what it wrote, "
            "even with --force: choose another output folder, or move those files away yourself"
        )
    if foreign:
        raise ArtifactError(
            f"{out_dir} is {_NOUNS[kind]} but also holds files vit-deploy did not write ({_some(foreign)}), which "
            "replacing it would delete: move them out (then --force replaces it), or choose another output folder"
        )
    if not force:
        raise ArtifactError(
            f"{out_dir} already holds {_NOUNS[kind]}; pass --force to replace it, or choose another output folder"
        )


def _read_marker(folder: Path, kind: str) -> dict | None:
    """The marker of ``kind`` in ``folder`` (our manifest, or the repository marker), or None if it has none."""
    marker, schema = _marker(kind)
    try:
        doc = json.loads((folder / marker).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == schema else None


def _foreign_entries(folder: Path, kind: str, entries: list[str]) -> list[str] | None:
    """None if ``folder`` has no valid marker of ``kind``; else its top-level entries the marker does not list."""
    marker, _ = _marker(kind)
    doc = _read_marker(folder, kind)
    if doc is None:
        return None
    files = doc.get("files")
    listed = {marker}
    for entry in files if isinstance(files, list) else []:
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str) and path:
            listed.add(Path(path).parts[0])
    return [name for name in entries if name not in listed]


def _marker(kind: str) -> tuple[str, str]:
    """The file that says vit-deploy wrote a folder of ``kind``, and the schema it names."""
    return _MARKERS[kind]


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _lock_path(real: Path) -> Path:
    return real.parent / f".{real.name}.lock"


def _try_lock(fd: int, out_dir: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ArtifactError(
            f"another vit-deploy is writing {out_dir} right now; wait for it to finish, or choose another folder"
        ) from None
    except OSError as e:
        # a filesystem without locks (e.g. NFS mounted with nolock): go on unlocked; publishing still
        # never replaces a folder it did not check
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
            raise


def _locked(real: Path, out_dir: Path) -> int:
    """Take the writer's lock on ``real`` (or fail at once); returns the lock file's descriptor."""
    path = _lock_path(real)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _default_mode(directory=False))
        try:
            _try_lock(fd, out_dir)
            held = os.fstat(fd)
            now = os.stat(path)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, FileNotFoundError):
                continue
            raise
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)  # the writer before us removed this file as it finished: lock the new one


def _unlock(fd: int, real: Path) -> None:
    # removed while still held, so a writer that opened this file meanwhile sees it is stale and retries
    with contextlib.suppress(OSError):
        os.unlink(_lock_path(real))
    os.close(fd)


def _rename(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the kernel or filesystem does not offer ``flags``."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _publish(staging: Path, target: Path, out_dir: Path, force: bool, kind: str) -> None:
    """Rename ``staging`` to ``target``, replacing only what :func:`_refuse_existing` allows (checked again now).

    On return ``staging`` is gone or holds the replaced folder, for the caller to remove.
    """
    _refuse_existing(out_dir, target, force, kind)
    if not target.exists():
        if not _rename(staging, target, _RENAME_NOREPLACE):
            os.rename(staging, target)  # replaces at most an empty folder that appeared meanwhile
        return
    was_empty = not any(target.iterdir())
    if _rename(staging, target, _RENAME_EXCHANGE):
        if was_empty:
            try:
                os.rmdir(staging)  # what was swapped out: still empty, or someone wrote into it meanwhile
            except OSError:
                _rename(staging, target, _RENAME_EXCHANGE)  # give it back as it is now
                raise ArtifactError(f"{out_dir} was written to by another program meanwhile; it is left as it "
                                    "was: run again, or choose another output folder") from None
        return
    # Two renames: a crash between them leaves no target (the old one is in .NAME.old-*), never a mixed one.
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    try:
        os.rename(target, old / target.name)
        try:
            os.rename(staging, target)
        except OSError:
            os.rename(old / target.name, target)
            raise
        os.rename(old / target.name, staging)  # the caller removes it with the rest of the staging
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(old)  # empty unless the old folder could not be put back: then it is kept, in there
