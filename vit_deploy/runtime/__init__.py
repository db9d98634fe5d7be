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
from pathlib import Path

from ..artifact import MANIFEST_NAME, read_manifest, verify_files
from ..errors import ArtifactError, UsageError
from .base import Runner, check_images

BACKENDS = ("tensorrt", "onnxruntime", "openvino", "pytorch")
DEFAULT_BACKEND = {"tensorrt": "tensorrt", "onnx": "onnxruntime"}
KIND_BACKENDS = {"tensorrt": ("tensorrt",), "onnx": ("onnxruntime", "openvino")}

__all__ = ["BACKENDS", "Runner", "artifact_dir", "check_images", "open"]


def artifact_dir(artifact: str | os.PathLike[str]) -> Path:
    """The artifact folder for a folder or for a file inside one (e.g. .../model.fp16.onnx)."""
    path = Path(artifact)
    if path.is_file() and (path.parent / MANIFEST_NAME).is_file():
        return path.parent
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; pass an artifact folder made by vit-deploy export/build-engine")
    return path


def open(  # noqa: A001 - the documented name: vit_deploy.runtime.open(artifact)
    artifact: str | os.PathLike[str],
    backend: str | None = None,
    *,
    provider: str = "cpu",
    device: str = "cpu",
    autocast: str | None = None,
    threads: int | None = None,
    max_batch: int | None = None,
    verify: bool = True,
) -> Runner:
    """A runner for ``artifact``; ``verify=False`` skips the sha256 check (e.g. in a hot reload loop)."""
    directory = artifact_dir(artifact)
    manifest = read_manifest(directory)
    kind = manifest["kind"]
    backend = backend or DEFAULT_BACKEND.get(kind)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if max_batch is not None and max_batch < 1:
        raise UsageError(f"max_batch must be >= 1, got {max_batch}")
    if backend != "pytorch" and backend not in KIND_BACKENDS.get(kind, ()):
        allowed = ", ".join(repr(b) for b in KIND_BACKENDS.get(kind, ()))
        raise UsageError(
            f"{directory} is a {kind} artifact; it runs with backend {allowed} (or 'pytorch' for its reference model)"
        )
    if verify and backend != "pytorch":  # the PyTorch runner checks its checkpoint's hash itself
        verify_files(directory, manifest)
    if backend == "tensorrt":
        from .tensorrt_runner import TensorRTRunner

        return TensorRTRunner(directory, manifest, max_batch=max_batch)
    if backend == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(directory, manifest, provider=provider, threads=threads, max_batch=max_batch)
    if backend == "openvino":
        from .openvino_runner import OpenVinoRunner

        return OpenVinoRunner(directory, manifest, threads=threads, max_batch=max_batch)
    from .pytorch_runner import PyTorchRunner

    return PyTorchRunner(directory, manifest, device=device, autocast=autocast, threads=threads, max_batch=max_batch)

