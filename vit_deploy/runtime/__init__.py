"""One interface for every artifact: ``open(artifact).infer(images) -> logits``.

    from vit_deploy import runtime

    with runtime.open("artifacts/b16-384-fp16") as runner:      # ONNX graph on ONNX Runtime (CPU)
        logits = runner.infer(images)                         # float32 [batch, 3, 384, 384]

The default backend is the one the artifact was made for, when its manifest names one and it is
installed (``"runtime": {"backend": "openvino"}`` for a ``--target cpu`` INT8 graph; otherwise
one warning line says what runs instead); else the artifact's kind picks: a TensorRT plan runs
on TensorRT, an ONNX graph on ONNX Runtime (``provider="cpu" | "cuda" | "tensorrt"``) or, with
``backend="openvino"``, on OpenVINO (the fast CPU path for INT8 graphs); ``backend="pytorch"`` runs the
PyTorch reference the artifact was made from. Before anything is loaded, the artifact's files
are checked against the sha256 in its manifest. Every runner checks inputs the same way and
splits batches larger than ``max_batch`` (for engines: the optimization profile's maximum).

The pre-head embedding (the class token after the final LayerNorm, float32 [batch, dim]) comes
from the same pass: ``runner.embed(images)``, or ``runner.infer(images, outputs=("logits",
"embedding"))`` for both; ONNX graphs, OpenVINO and the PyTorch reference give it, a TensorRT
engine refuses it (embedding.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os

from .. import artifact as artifact_view
from ..artifact import Artifact
from ..errors import UsageError
from ..specs import RUNTIME_BACKENDS
from .base import Runner, check_images
from .embedding import OUTPUTS
from .embedding import check_available as check_embedding

BACKENDS = RUNTIME_BACKENDS
DEFAULT_BACKEND = {"tensorrt": "tensorrt", "onnx": "onnxruntime"}
KIND_BACKENDS = {"tensorrt": ("tensorrt",), "onnx": ("onnxruntime", "openvino")}
BACKEND_MODULES = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime", "openvino": "openvino", "pytorch": "torch"}
DEVICES = ("cpu", "cuda")  # torch device types the pytorch backend runs on ("cuda:1" names one GPU)

log = logging.getLogger(__name__)
_fallbacks_said: set[str] = set()  # each "not installed, running on X instead" is said once per process

__all__ = ["BACKENDS", "OUTPUTS", "Runner", "check_embedding", "check_images", "open"]


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
    exact_qdq: bool = False,
) -> Runner:
    """A runner for ``artifact``: ``runner.infer(images) -> logits``.

    Args:
        artifact: an artifact folder, a file inside one, or an :class:`~vit_deploy.artifact.Artifact`
            (a step passes the one it is staging, before its manifest is written).
        backend: ``"tensorrt"``, ``"onnxruntime"``, ``"openvino"`` or ``"pytorch"`` (the reference model
            rebuilt from the manifest); None picks the one the manifest names when it is installed, else
            the kind's own (TensorRT for a plan, ONNX Runtime for a graph).
        provider: ONNX Runtime execution provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.
        device: PyTorch device (``"cpu"``, ``"cuda"``); pytorch backend only.
        autocast: ``"bfloat16"`` or ``"float16"`` autocast for the pytorch backend (a benchmark peer).
        threads: intra-op threads (torch, ONNX Runtime, OpenVINO); None: the library's default.
        max_batch: split larger batches into chunks of at most this many images (engines: capped at the
            profile maximum).
        verify: check the files against the sha256 in the manifest first; False skips it (e.g. a hot reload loop).
        exact_qdq: ONNX Runtime only: run Q/DQ as the graph writes them, not fused into ORT's integer kernels
            (which on CPUs without VNNI saturate and lose accuracy): what validation and ``compare`` measure, the
            arithmetic TensorRT performs. Slower; the default keeps ORT's fast path.
    """
    if not isinstance(artifact, Artifact):
        artifact = artifact_view.open(artifact, verify=False)
    kind = artifact.kind
    backend = backend or default_backend(artifact)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    _check_counts(max_batch=max_batch, threads=threads)
    device = str(device)  # a torch.device works too
    if device.split(":")[0] not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose {' or '.join(DEVICES)} (e.g. 'cuda:0')")
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

        return OnnxRuntimeRunner(artifact, provider=provider, threads=threads, max_batch=max_batch,
                                 exact_qdq=exact_qdq)
    if backend == "openvino":
        from .openvino_runner import OpenVinoRunner

        return OpenVinoRunner(artifact, threads=threads, max_batch=max_batch)
    from .pytorch_runner import PyTorchRunner

    return PyTorchRunner(artifact, device=device, autocast=autocast, threads=threads, max_batch=max_batch)


def default_backend(artifact: Artifact) -> str | None:
    """The backend the manifest names when installed, else the kind's default (warning once about the fallback)."""
    fallback = DEFAULT_BACKEND.get(artifact.kind)
    made_for = artifact.made_for_backend
    if made_for is None or made_for == fallback:
        return fallback
    if importlib.util.find_spec(BACKEND_MODULES.get(made_for, made_for)) is not None:
        return made_for
    if made_for not in _fallbacks_said:
        _fallbacks_said.add(made_for)
        log.warning("%s was made for backend %r, which is not installed here; running it on %r instead "
                    "(pip install %s for the fast path)", artifact.directory, made_for, fallback,
                    BACKEND_MODULES.get(made_for, made_for))
    return fallback


def _check_counts(**counts: object) -> None:
    for name, value in counts.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UsageError(f"{name} must be >= 1 (an integer, or None), got {value!r}")
