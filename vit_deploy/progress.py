"""Progress for long steps, on stderr so ``--json`` output on stdout stays clean.

Each step is one line, ``[i/n] label ... 1.2s``. Bars (tqdm) are drawn only on a terminal: into
a log file or a pipe their carriage-return frames would be hundreds of lines of noise, so there
a bar inside a step writes nothing (the step's line says it all) and one outside a step writes
one line when it ends, ``  label: N in 1.2s``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """Prints ``[i/n] label ...`` when a step starts and its duration when it ends; bars on a terminal only."""

    def __init__(self, total: int = 0, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bars = enabled and _is_terminal(self.stream)
        self._in_step = False  # a step's line is open (its duration not yet printed)
        self.timings: dict[str, float] = {}
        self._counter: Any = None

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.done += 1
        if self.enabled:
            where = f"{self.done}/{self.total}" if self.total else f"{self.done}"  # a caller may not count its steps
            print(f"[{where}] {label} ...", end="", file=self.stream, flush=True)
        start = time.perf_counter()
        self._in_step = True
        try:
            yield
        except BaseException:
            if self.enabled:
                print(" failed", file=self.stream, flush=True)
            raise
        finally:
            self._in_step = False
        elapsed = time.perf_counter() - start
        self.timings[label] = round(elapsed, 2)
        if self.enabled:
            print(f" {elapsed:.1f}s", file=self.stream, flush=True)

    def bar(self, items: Iterable[T], label: str) -> Iterable[T]:
        """A progress bar over ``items`` (tqdm on stderr), silent when progress is disabled or not on a terminal."""
        if not self.bars:
            return items if self._in_step or not self.enabled else self._counted(items, label)
        from tqdm import tqdm

        return tqdm(items, desc=f"  {label}", file=self.stream, leave=False, dynamic_ncols=True)

    def _counted(self, items: Iterable[T], label: str) -> Iterator[T]:
        start, n = time.perf_counter(), 0
        for n, item in enumerate(items, 1):  # noqa: B007 - n is the count after the loop
            yield item
        self.note(f"  {label}: {n} in {time.perf_counter() - start:.1f}s")

    def tick(self, n: int = 1) -> None:
        """Advance the bar opened by ``counter``, if any."""
        if self._counter is not None:
            self._counter.update(n)

    @contextlib.contextmanager
    def counter(self, total: int, label: str) -> Iterator[None]:
        """A bar advanced by ``tick()`` from code that owns no loop (e.g. a library callback); terminal only."""
        if not self.bars:
            yield
            return
        from tqdm import tqdm

        self._counter = tqdm(total=total, desc=f"  {label}", file=self.stream, leave=False, dynamic_ncols=True)
        try:
            yield
        finally:
            self._counter.close()
            self._counter = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
