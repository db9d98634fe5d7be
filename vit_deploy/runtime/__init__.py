"""One interface for every artifact: ``open(artifact).infer(images) -> logits``.

    from vit_deploy import runtime

    with runtime.open("artifacts/b16-384-fp16") as runner:      # ONNX graph on ONNX Runtime (CPU)
        logits = runner.infer(images)                         # float32 [batch, 3, 384, 384]

The artifact's kind picks the default backend: a TensorRT plan runs on TensorRT, an ONNX graph
on ONNX Runtime (``provider="cpu" | "cuda" | "tensorrt"``) or, with ``backend="openvino"``, on
OpenVINO (the fast CPU path for INT8 graphs); ``backend="pytorch"`` runs the
PyTorch reference the artifact was made from. Before anything is loaded, the artifact's files
are checked against the sha256 in its manifest. Every runner checks inputs the same way and
splits batches larger than ``max_batch`` (for engines: the optimization profile's maximum).
"""

from __future__ import annotations

import os

from .. import artifact as artifact_view
from ..artifact import Artifact
from ..errors import UsageError
from ..specs import RUNTIME_BACKENDS
from .base import Runner, check_images

BACKENDS = RUNTIME_BACKENDS
DEFAULT_BACKEND = {"tensorrt": "tensorrt", "onnx": "onnxruntime"}
KIND_BACKENDS = {"tensorrt": ("tensorrt",), "onnx": ("onnxruntime", "openvino")}

__all__ = ["BACKENDS", "Runner", "check_images", "open"]


def open(  # noqa: A001 - the documented name: vit_deploy.runtime.open(artifact)
    artifact: str | os.PathLike[str] | Artifact,
    backend: str | None = None,
    *,
    provider: str = "cpu",
    device: str = "cpu",
    autocast: str | None = None,
    threads: int | None = None,
    max_batch: int | None = None,
    verify: bool = True,
) -> Runner:
    """A runner for ``artifact``: ``runner.infer(images) -> logits``.

    Args:
        artifact: an artifact folder, a file inside one, or an :class:`~vit_deploy.artifact.Artifact`
            (a step passes the one it is staging, before its manifest is written).
        backend: ``"tensorrt"``, ``"onnxruntime"``, ``"openvino"`` or ``"pytorch"`` (the reference model
            rebuilt from the manifest); None picks the artifact's own (TensorRT for a plan, ONNX Runtime for a graph).
        provider: ONNX Runtime execution provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.
        device: PyTorch device (``"cpu"``, ``"cuda"``); pytorch backend only.
        autocast: ``"bfloat16"`` or ``"float16"`` autocast for the pytorch backend (a benchmark peer).
        threads: intra-op threads (torch, ONNX Runtime, OpenVINO); None: the library's default.
        max_batch: split larger batches into chunks of at most this many images (engines: capped at the
            profile maximum).
        verify: check the files against the sha256 in the manifest first; False skips it (e.g. a hot reload loop).
    """
    if not isinstance(artifact, Artifact):
        artifact = artifact_view.open(artifact, verify=False)
    kind = artifact.kind
    backend = backend or DEFAULT_BACKEND.get(kind)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if max_batch is not None and max_batch < 1:
        raise UsageError(f"max_batch must be >= 1, got {max_batch}")
    if backend != "pytorch" and backend not in KIND_BACKENDS.get(kind, ()):
        allowed = ", ".join(repr(b) for b in KIND_BACKENDS.get(kind, ()))
        raise UsageError(
            f"{artifact.directory} is a {kind} artifact; it runs with backend {allowed} "
            "(or 'pytorch' for its reference model)"
        )
    if verify and backend != "pytorch":  # the PyTorch runner checks its checkpoint's hash itself
        artifact.verify()
    if backend == "tensorrt":
        from .tensorrt_runner import TensorRTRunner

        return TensorRTRunner(artifact, max_batch=max_batch)
    if backend == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(artifact, provider=provider, threads=threads, max_batch=max_batch)
    if backend == "openvino":
        from .openvino_runner import OpenVinoRunner

        return OpenVinoRunner(artifact, threads=threads, max_batch=max_batch)
    from .pytorch_runner import PyTorchRunner

    return PyTorchRunner(artifact, device=device, autocast=autocast, threads=threads, max_batch=max_batch)
