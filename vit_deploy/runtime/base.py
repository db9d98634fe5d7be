"""What every runner shares: the artifact's metadata, input checks, batch splitting, closing.

A backend implements only ``_run(batch)`` for one batch that is already checked and within its
limits; :meth:`Runner.infer` does the rest, the same way for every backend, so a TensorRT
engine, an ONNX graph and the PyTorch reference accept and refuse exactly the same inputs.
A backend that can also give the pre-head embedding (``infer(images, outputs=("logits",
"embedding"))``, ``embed(images)``; see embedding.py) implements ``_run_outputs`` and
``_prepare_embedding``; the others refuse it in one line.
A dynamic-resolution artifact takes any size in its range (``Runner.size_range``); one array is
one size, and a list of images of several sizes is split by size and answered in input order.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..artifact import Artifact
from ..batching import batches
from ..errors import UsageError
from ..specs import ResolutionRange
from .embedding import EMBEDDING, LOGITS, OUTPUTS


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


TENSOR_DEVICES = ("cpu", "cuda")  # where a torch input may live: the others (meta, mps, ...) hold no readable data


def check_images(
    images: Any, chw: tuple[int, int, int], what: str = "images", sizes: ResolutionRange | None = None
) -> None:
    """Refuse anything the model cannot take, naming what was expected.

    ``images`` is a numpy array or a torch tensor (CPU or CUDA), float32 [batch, C, H, W],
    non-empty and finite (preprocessed pixels are never NaN or Inf; one that is would turn the
    whole batch's logits into garbage without an error). H x W is ``chw``'s, or with ``sizes``
    (a dynamic-resolution artifact) any size in that range.
    """
    c, h, w = chw
    hw = f"{h}, {w}" if sizes is None else "H, W"
    expected = f"float32 [batch, {c}, {hw}] (preprocessed as the manifest says)"
    if _is_torch(images):
        device = getattr(images, "device", None)
        if getattr(device, "type", None) not in TENSOR_DEVICES or getattr(images, "layout", None) != _strided():
            raise UsageError(
                f"{what} are a torch tensor on {device} with layout {getattr(images, 'layout', '?')}; "
                f"expected a dense tensor on {' or '.join(TENSOR_DEVICES)}, {expected}"
            )
        dtype, shape = str(images.dtype).removeprefix("torch."), tuple(images.shape)
    elif isinstance(images, np.ndarray):
        dtype, shape = str(images.dtype), images.shape
    else:
        raise UsageError(f"{what} must be a numpy array or a torch tensor, {expected}; got {type(images).__name__}")
    if dtype != "float32":
        raise UsageError(f"{what} have dtype {dtype}; expected {expected}")
    if len(shape) != 4:
        raise UsageError(f"{what} have shape {list(shape)} (rank {len(shape)}); expected {expected}")
    if shape[1] != c:
        raise UsageError(f"{what} have {shape[1]} channels; expected {expected}")
    if sizes is not None and (problem := sizes.problem(int(shape[2]), int(shape[3]))):
        raise UsageError(f"{what} are {problem}")
    if sizes is None and shape[2:] != (h, w):
        raise UsageError(f"{what} are {shape[2]}x{shape[3]}; this model takes {h}x{w}: expected {expected}")
    if shape[0] == 0:
        raise UsageError(f"{what} are an empty batch; expected {expected} with batch >= 1")
    finite = bool(images.isfinite().all()) if _is_torch(images) else bool(np.isfinite(images).all())
    if not finite:
        raise UsageError(f"{what} contain NaN or Inf; expected finite values, {expected}")


def _strided() -> Any:
    import torch

    return torch.strided


def _torch_cat(tensors: list[Any]) -> Any:
    import torch

    return torch.cat(tensors)


class Runner(ABC):
    """``infer(images) -> logits`` for one artifact; use as a context manager or call close().

    Made by :func:`vit_deploy.runtime.open`, never directly. Attributes: ``artifact`` (the
    :class:`~vit_deploy.artifact.Artifact` it runs), ``backend``, ``precision``, ``num_classes``,
    ``chw`` (the native size of a dynamic-resolution artifact), ``size_range`` (the sizes it takes;
    None: ``chw`` only), ``preprocessing``, ``input_name``, ``output_name``, ``min_batch`` and
    ``max_batch`` (None: a whole batch at once), ``embedding_dim`` (the model's width).

    Thread safety: ``infer`` may be called from several threads at once and gives the same
    results as sequential calls; each backend documents how (a thread-safe session, or a lock).
    ``close`` waits for the calls already running, then frees the backend; any ``infer`` after it
    raises UsageError, whichever thread gets there first.
    """

    backend: str = "?"

    def __init__(self, artifact: Artifact, max_batch: int | None = None) -> None:
        self.artifact = artifact
        self.directory = artifact.directory
        self.precision: str = artifact.precision
        self.num_classes: int = artifact.num_classes
        self.chw: tuple[int, int, int] = artifact.chw  # [batch, C, H, W]: the graph's own contract
        self.size_range: ResolutionRange | None = artifact.resolution_range
        self.preprocessing = artifact.preprocessing
        self.input_name: str = artifact.input_name
        self.output_name: str = artifact.output_name
        self.min_batch = 1
        self.max_batch = max_batch  # None: whole batches go through at once
        self.embedding_dim: int = int(artifact.model["dim"])
        self._closed = False
        self._running = 0  # infer calls in flight: close() frees the backend only when none is
        self._state = threading.Condition()

    # -- the interface ---------------------------------------------------------------------
    def infer(self, images: Any, outputs: Sequence[str] | None = None) -> Any:
        """Logits for ``images`` (or, with ``outputs``, the named outputs of one pass).

        Args:
            images: float32 [batch, C, H, W] (numpy or torch, CPU or CUDA), preprocessed as
                ``input_metadata`` says; checked first (UsageError names what was expected). For a
                dynamic-resolution artifact also a list of images ([C, H, W]) or batches of several
                sizes: each size runs as its own batch, and the rows come back in input order.
            outputs: None for the logits alone; else names from ``("logits", "embedding")``, answered
                as a dict from one pass over the model. ``embedding`` is the pre-head embedding,
                float32 [batch, embedding_dim]: the class token after the final LayerNorm, what the
                classifier head reads (refused in one line where the backend cannot give it).

        Returns:
            float32 [batch, classes]: numpy for numpy input, torch on the input's device for torch input
            (with ``outputs``: ``{name: such an array}``). Batches above ``max_batch`` are split and the results joined.
        """
        names = self._output_names(outputs)
        if isinstance(images, list | tuple):
            answer = self._infer_by_size(images, names)
        else:
            self.check(images)
            with self._state:
                if self._closed:
                    raise UsageError(f"this {self.backend} runner is closed; open the artifact again")
                self._running += 1
            try:
                self.check_outputs(names)
                parts = [self._run_padded(b, names) for b in batches(images, self.max_batch or images.shape[0])]
            finally:
                with self._state:
                    self._running -= 1
                    self._state.notify_all()
            join = _torch_cat if _is_torch(images) else np.concatenate
            answer = {n: parts[0][n] if len(parts) == 1 else join([p[n] for p in parts]) for n in names}
        return answer[LOGITS] if outputs is None else answer

    def embed(self, images: Any) -> Any:
        """The pre-head embedding, float32 [batch, embedding_dim]: ``infer(images, outputs=("embedding",))``."""
        return self.infer(images, outputs=(EMBEDDING,))[EMBEDDING]

    def check_outputs(self, outputs: Sequence[str]) -> None:
        """UsageError unless this runner gives every output named (loads what the embedding needs, once)."""
        if EMBEDDING in self._output_names(outputs):
            self._prepare_embedding()

    @staticmethod
    def _output_names(outputs: Sequence[str] | None) -> tuple[str, ...]:
        if outputs is None:
            return (LOGITS,)
        if isinstance(outputs, str) or not all(isinstance(n, str) for n in outputs):
            raise UsageError(f"outputs must be a list of names from {', '.join(OUTPUTS)}, e.g. ('logits', "
                             f"'embedding'); got {outputs!r}")
        unknown = [n for n in outputs if n not in OUTPUTS]
        if unknown or not outputs:
            raise UsageError(f"unknown outputs {unknown or outputs!r}; choose from {', '.join(OUTPUTS)}")
        return tuple(dict.fromkeys(outputs))

    def check(self, images: Any, what: str = "images") -> None:
        """UsageError, naming what was expected, unless ``images`` is one batch this runner takes."""
        check_images(images, self.chw, what, self.size_range)

    def _infer_by_size(self, items: list[Any] | tuple[Any, ...], names: tuple[str, ...]) -> dict[str, Any]:
        """Outputs for images ([C, H, W]) and batches ([N, C, H, W]) of mixed sizes, one run per size, input order."""
        if not items:
            raise UsageError("images are an empty list; give at least one image [C, H, W] or batch [N, C, H, W]")
        as_torch = [_is_torch(x) for x in items]
        if any(as_torch) and not all(as_torch):
            raise UsageError("images mix numpy arrays and torch tensors; give one kind")
        batched = []
        for i, x in enumerate(items):
            if not (isinstance(x, np.ndarray) or _is_torch(x)) or x.ndim != 3:
                self.check(x, f"images[{i}]")  # a batch, or refused saying what was expected
            batched.append(x if x.ndim == 4 else x[None])
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(batched):
            by_size.setdefault(tuple(int(d) for d in x.shape[1:]), []).append(i)
        answers: list[Any] = [None] * len(batched)
        join = _torch_cat if as_torch[0] else np.concatenate
        for members in by_size.values():
            result = self.infer(join([batched[i] for i in members]), outputs=names)
            start = 0
            for i in members:
                answers[i] = {n: result[n][start:start + batched[i].shape[0]] for n in names}
                start += batched[i].shape[0]
        return {n: join([a[n] for a in answers]) for n in names}

    @property
    def input_metadata(self) -> dict[str, Any]:
        """The input contract from the manifest: name, shape, dtype, the sizes taken and the preprocessing to apply."""
        c = self.chw[0]
        return {
            "name": self.input_name,
            "shape": ["batch", *self.chw] if self.size_range is None else ["batch", c, "height", "width"],
            "dtype": "float32",
            "sizes": None if self.size_range is None else self.size_range.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
        }

    def describe(self) -> dict[str, Any]:
        """What runs: for logs, benchmarks and the compare table."""
        return {
            "backend": self.backend,
            "precision": self.precision,
            "artifact": str(self.directory),
            "max_batch": self.max_batch,
            **({"sizes": self.size_range.describe()} if self.size_range else {}),
        }

    @property
    def label(self) -> str:
        """What runs, in one line for reports and manifests (backend, version, device)."""
        return self.backend

    def close(self) -> None:
        """Free the backend once the ``infer`` calls already running have returned; later calls are refused."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.wait_for(lambda: self._running == 0)
        self._release()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- for backends ----------------------------------------------------------------------
    @abstractmethod
    def _run(self, batch: Any) -> Any:
        """Logits for one checked batch of min_batch..max_batch images (numpy in: numpy out; torch: torch)."""

    @abstractmethod
    def _release(self) -> None:
        """Free sessions, engines and device memory."""

    def _run_outputs(self, batch: Any, names: tuple[str, ...]) -> dict[str, Any]:
        """The named outputs for one checked batch; a backend that gives the embedding overrides this."""
        assert names == (LOGITS,), "check_outputs refuses the embedding first"
        return {LOGITS: self._run(batch)}

    def _prepare_embedding(self) -> None:
        """Make the embedding available (once; thread safe), or UsageError saying why it cannot be."""
        raise UsageError(f"backend {self.backend!r} gives no embedding; use backend 'onnxruntime' on an ONNX graph or "
                         "'pytorch'")

    def _run_padded(self, batch: Any, names: tuple[str, ...] = (LOGITS,)) -> dict[str, Any]:
        # An engine profile may start above 1; a short last chunk is padded with copies of its
        # first image (real data, so nothing unusual reaches the kernels) and the rows dropped.
        n = batch.shape[0]
        if n >= self.min_batch:
            return self._run_outputs(batch, names)
        pad = self.min_batch - n
        if _is_torch(batch):
            import torch

            padded = torch.cat([batch, batch[:1].expand(pad, *batch.shape[1:])])
        else:
            padded = np.concatenate([batch, np.repeat(batch[:1], pad, axis=0)])
        return {name: value[:n] for name, value in self._run_outputs(padded, names).items()}


def as_numpy(images: Any) -> np.ndarray:
    """A C-contiguous float32 numpy view/copy of a checked numpy array or torch tensor."""
    if _is_torch(images):
        return np.ascontiguousarray(images.detach().cpu().numpy())
    return np.ascontiguousarray(images)


def like_input(logits: np.ndarray, images: Any) -> Any:
    """Return ``logits`` in the input's kind: a torch tensor on the input's device for torch input."""
    if _is_torch(images):
        import torch

        return torch.from_numpy(logits).to(images.device)
    return logits
