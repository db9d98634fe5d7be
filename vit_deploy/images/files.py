"""Opening the files a user names (images, definition files, labels): regular files only, never blocking.

A path in a definition file, a folder or an option can name a device (``/dev/zero`` never ends), a
FIFO (opening it for reading waits for a writer, forever) or a socket. :func:`open_regular` looks
with ``stat`` first, so such a file is refused without being opened (opening some devices has side
effects), then opens with ``O_NONBLOCK`` and checks the opened file again, so a path swapped for a
FIFO in between still cannot block. :func:`read_text` adds a size bound and UTF-8 decoding whose
error names the byte and the line (a NUL byte, valid UTF-8 but never text, counts as an error).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import UsageError

TEXT_LIMIT = 64 << 20  # definition and label files are lists of names: 64 MiB is far beyond any real one

_KINDS = (
    (stat.S_ISDIR, "folder"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
)


def kind_of(mode: int) -> str:
    """'regular file', or what else an ``st_mode`` describes ("character device", "FIFO (named pipe)", ...)."""
    if stat.S_ISREG(mode):
        return "regular file"
    return next((name for test, name in _KINDS if test(mode)), "special file")


def not_regular(path: str | os.PathLike[str], mode: int, what: str) -> UsageError:
    """The refusal for a ``what`` that is a folder, device, FIFO or socket."""
    if stat.S_ISDIR(mode):
        return UsageError(f"{what} {path} is a folder, not a file; name a file")
    return UsageError(f"{what} {path} is a {kind_of(mode)}, not a regular file; "
                      "name regular files only (a device or pipe can block or never end)")


def open_regular(path: str | os.PathLike[str], what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file (symlinks followed).

    Raises ``UsageError`` (naming ``what`` and the kind of file) for anything else, and the
    ``OSError`` of ``stat``/``open`` (missing, no permission) for the caller to judge.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise not_regular(path, mode, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between stat and open
            raise not_regular(path, mode, what)
        os.set_blocking(fd, True)  # no effect on a regular file's reads; a plain file object from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(path: str | os.PathLike[str], what: str, limit: int = TEXT_LIMIT) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes (a leading BOM dropped).

    Every failure is a one-line ``UsageError`` naming ``what`` and ``path``: missing, unreadable,
    not a regular file, too large, or not UTF-8 (with the byte offset and line of the first bad byte).
    """
    try:
        with open_regular(path, what) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise UsageError(f"{what} {path} is {size / 2**20:.0f} MiB; a {what} holds names, at most "
                                 f"{limit >> 20} MiB: check that this is the right file")
            data = f.read()
    except FileNotFoundError as e:
        raise UsageError(f"{what} {path} does not exist; check the path") from e
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}; check the path and its permissions") from e
    nul = data.find(b"\0")  # valid UTF-8, but no text file holds NUL: a binary file
    try:
        text = data.decode("utf-8-sig")
        start = nul
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)  # the BOM-less offset -> the file's
        start = min(start, nul) if nul >= 0 else start
    if start < 0:
        return text
    line = data.count(b"\n", 0, start) + 1
    raise UsageError(f"{what} {Path(path)} is not UTF-8 text: byte {start} (line {line}) is 0x{data[start]:02x}; "
                     "save it as UTF-8 text (is it the right file?)")
