"""The one batch splitter: consecutive slices of at most ``size`` along the first axis.

Standard library only, so every layer can use it (the runtime's ``Runner.infer``, the validation
driver, calibration, benchmarks); it slices numpy arrays, torch tensors and lists alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T", bound=Sequence[Any])


def batches(items: T, size: int) -> Iterator[T]:
    """``items[0:size]``, ``items[size:2*size]``, ...: the last slice takes the remainder."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]  # type: ignore[misc]
