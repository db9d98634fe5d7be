"""Run a TensorRT engine from Python, and decide whether a recorded engine can run on this machine.

``TrtEngine`` deserializes a plan with ``tensorrt.Runtime``, reads its I/O tensors and its
optimization profile (``get_tensor_profile_shape``), allocates the device buffers once, at the
profile's largest batch, as torch CUDA tensors (no pycuda), and runs each call with
``set_input_shape`` + ``execute_async_v3`` on its own torch CUDA stream, then synchronizes.
One execution context and one set of buffers serve every call, so ``infer`` holds a lock:
calls from several threads are safe and run one after another (for parallel execution, create
one ``TrtEngine`` per thread; each has its own context, buffers and stream).

A plan runs only where it may: by default on the same TensorRT version and the same GPU compute
capability it was built with. TensorRT has no preflight check for this (the 11.4 support matrix
says so: deserialize, require a non-null engine, read the logger), so the manifest records both
at build time and ``check_compatible`` compares them before loading, naming both sides.
``compatibility_problem`` is that comparison as a pure function.

Written from (not run here: no GPU on the development machines):
- https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Engine.html
- https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/python-api/infer/Core/ExecutionContext.html
- https://docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html
- https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/getting-started/support-matrix.html
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ArtifactError, EngineUnavailable, UsageError
from . import LogCollector, builder_error, device_facts, import_tensorrt, tensorrt_version, trt_logger

if TYPE_CHECKING:  # annotations only (read by tests/trt/test_trt_api.py); never imported at run time
    import tensorrt as trt


def compatibility_rules() -> dict[str, Any]:
    """The rules and the case table in ``vit_deploy/data/trt_compatibility.json``, shared with the C++ example."""
    return json.loads(resources.files("vit_deploy").joinpath("data/trt_compatibility.json").read_text())


_RULES = compatibility_rules()
# Version-compatible plans may cross one major boundary, and only these (support matrix, 11.4.1):
# TensorRT 10 VC engines run on a TensorRT 11 runtime, TensorRT 8 VC engines on a TensorRT 10 one.
CROSS_MAJOR_COMPATIBLE = frozenset(tuple(pair) for pair in _RULES["cross_major_pairs"])
AMPERE = int(_RULES["hardware_compatible_min_major"])  # HardwareCompatibilityLevel.AMPERE_PLUS: cc 8.0 and newer


def _version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor, patch[, build]) as numbers: "11.1.10" is later than "11.1.1", never a prefix match."""
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:4])


def _cc_tuple(cc: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(cc))[:2])


def version_allowed(built: str, running: str, version_compatible: bool) -> bool:
    """Whether a plan built by TensorRT ``built`` loads on TensorRT ``running``."""
    b, r = _version_tuple(built), _version_tuple(running)
    if not version_compatible:
        return b == r  # the standard runtime needs the exact version that built the plan
    if r < b:
        return False  # version compatibility is forward only: never an older runtime
    return b[:1] == r[:1] or (b[0], r[0]) in CROSS_MAJOR_COMPATIBLE


def capability_allowed(built: str, running: str, hardware_compatible: bool) -> bool:
    """Whether a plan built for compute capability ``built`` runs on ``running``."""
    b, r = _cc_tuple(built), _cc_tuple(running)
    if hardware_compatible:
        return bool(r) and r[0] >= AMPERE  # AMPERE_PLUS: any Ampere-or-newer GPU
    return b == r


def compatibility_problem(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why an engine with build facts ``recorded`` cannot run with ``current``, or None when it can.

    Both dicts: {"version", "compute_capability", "gpu"}; ``recorded`` (the manifest's "tensorrt"
    section) may add "version_compatible" / "hardware_compatible" to relax the two checks.
    """
    vc, hc = bool(recorded.get("version_compatible")), bool(recorded.get("hardware_compatible"))
    reasons = []
    if not version_allowed(recorded["version"], current["version"], vc):
        reasons.append(
            "version-compatible plans run only on the same or a later TensorRT of the same major version"
            if vc else "a plan runs only on the TensorRT version that built it (unless built --version-compatible)"
        )
    if not capability_allowed(recorded["compute_capability"], current["compute_capability"], hc):
        reasons.append(
            "hardware-compatible plans need an Ampere or newer GPU (compute capability 8.0+)"
            if hc else "a plan runs only on GPUs of the compute capability it was built for "
            "(unless built --hardware-compatible)"
        )
    if not reasons:
        return None
    return (
        f"engine built with TensorRT {recorded['version']} for compute capability "
        f"{recorded['compute_capability']} ({recorded.get('gpu', 'unknown GPU')}); this machine has TensorRT "
        f"{current['version']} and compute capability {current['compute_capability']} "
        f"({current.get('gpu', 'unknown GPU')}): {'; '.join(reasons)}"
    )


def require_tensorrt(what: str = "run a TensorRT engine") -> None:
    """EngineUnavailable (one line, what is missing and how to get it) unless TensorRT and a CUDA GPU are usable."""
    from .probe import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise EngineUnavailable(f"cannot {what} here: {reason}")


def current_facts() -> dict[str, str]:
    """This machine's TensorRT version and GPU, in the shape ``compatibility_problem`` compares."""
    require_tensorrt()
    return {"version": str(tensorrt_version()), **device_facts()}


def check_compatible(recorded: dict[str, Any], *, rebuild_from: str | os.PathLike[str] | None = None) -> None:
    """ArtifactError naming both sides when the engine recorded in a manifest cannot run here."""
    problem = compatibility_problem(recorded, current_facts())
    if problem:
        source = rebuild_from if rebuild_from is not None else "<the ONNX graph folder it was built from>"
        raise ArtifactError(f"{problem}: rebuild with vit-deploy build-engine {source} on this machine")


def create_runtime(trt: Any, logger: trt.ILogger) -> trt.Runtime:
    """``trt.Runtime(logger)``, or EngineUnavailable in one line (the bindings raise TypeError on nullptr)."""
    try:
        return trt.Runtime(logger)
    except (TypeError, RuntimeError) as e:
        raise EngineUnavailable(f"cannot run a TensorRT engine here: {builder_error(trt, e)}") from e


def deserialize(
    plan: bytes, logger: trt.ILogger, collector: LogCollector, source: str, allow_host_code: bool = False
) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """(runtime, engine) for ``plan``; ArtifactError when TensorRT refuses it. Keep both alive together.

    EngineUnavailable when TensorRT cannot start at all (no GPU or driver).
    """
    trt = import_tensorrt()

    runtime = create_runtime(trt, logger)
    if allow_host_code:
        # Version-compatible plans carry a lean runtime (host code); TensorRT runs it only when allowed.
        # Only for plans this tool built: a plan is executable code.
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise ArtifactError(
            f"TensorRT {trt.__version__} could not load the engine in {source}: the plan is corrupt, or it was built "
            f"for another TensorRT version or GPU ({collector.explain()}); rebuild it here with "
            "vit-deploy build-engine <the ONNX graph folder>"
        )
    return runtime, engine


def read_plan(plan: bytes | str | os.PathLike[str]) -> tuple[bytes, str]:
    """(plan bytes, a name for messages) from bytes or a file path."""
    if isinstance(plan, bytes | bytearray | memoryview):
        return bytes(plan), "the given plan bytes"
    path = Path(plan)
    try:
        return path.read_bytes(), str(path)
    except OSError as e:
        raise ArtifactError(
            f"cannot read the engine plan {path} ({e.strerror or e}); re-create the engine artifact"
        ) from e


class TrtEngine:
    """A deserialized engine with one execution context and device buffers sized for its largest batch.

    ``infer`` takes float images NCHW as a numpy array (returns numpy) or a torch tensor on the
    CPU or a CUDA device (returns a torch tensor on the same device), with the batch inside the
    engine's profile. Thread safe: a lock serializes calls (they share the context and buffers).
    Use as a context manager, or call ``close()``, to free the GPU memory promptly.
    """

    def __init__(
        self, plan: bytes | str | os.PathLike[str], *, device: int | None = None, allow_host_code: bool = False
    ) -> None:
        require_tensorrt()  # before torch.cuda, whose own error would not say what to install
        trt = import_tensorrt()
        import torch

        data, source = read_plan(plan)
        self._lock = threading.Lock()
        self._collector = LogCollector()
        self._logger = trt_logger(self._collector)
        self.device = torch.device("cuda", torch.cuda.current_device() if device is None else device)
        with torch.cuda.device(self.device):
            self._runtime, self._engine = deserialize(data, self._logger, self._collector, source, allow_host_code)
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            modes = {n: self._engine.get_tensor_mode(n) for n in names}
            inputs = [n for n in names if modes[n] == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
            if len(inputs) != 1 or len(outputs) != 1:
                raise ArtifactError(
                    f"the engine in {source} has inputs {inputs} and outputs {outputs}; this runner handles one "
                    "image input and one logits output (a ViT classifier): rebuild it from a vit-deploy graph"
                )
            self.input_name, self.output_name = inputs[0], outputs[0]
            self.input_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self.input_name))
            self.output_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self.output_name))
            profile = self._engine.get_tensor_profile_shape(self.input_name, 0)  # [min, opt, max], profile 0
            lo, opt, hi = (tuple(int(d) for d in dims) for dims in profile)
            self.profile = {"min": lo, "opt": opt, "max": hi}

            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise ArtifactError(
                    f"TensorRT could not create an execution context for {source} ({self._collector.explain()}); "
                    "free GPU memory, or rebuild with a smaller --max-batch"
                )
            # Buffers for the largest shape, allocated once; smaller batches (and smaller images of a
            # dynamic-resolution engine) use their leading elements (contiguous NCHW / [N, classes]
            # layouts), so the tensor addresses never change; set_input_shape gives each call its shape.
            self._context.set_input_shape(self.input_name, hi)
            out_max = tuple(int(d) for d in self._context.get_tensor_shape(self.output_name))
            if any(d < 0 for d in out_max):
                raise ArtifactError(
                    f"the engine in {source} leaves output {self.output_name!r} shape {out_max} unresolved; "
                    "rebuild it from a vit-deploy graph"
                )
            self._input = torch.empty(hi, dtype=self.input_dtype, device=self.device)
            self._output = torch.empty(out_max, dtype=self.output_dtype, device=self.device)
            self._context.set_tensor_address(self.input_name, self._input.data_ptr())
            self._context.set_tensor_address(self.output_name, self._output.data_ptr())
            self._stream = torch.cuda.Stream(device=self.device)

    @property
    def min_batch(self) -> int:
        return self.profile["min"][0]

    @property
    def opt_batch(self) -> int:
        return self.profile["opt"][0]

    @property
    def max_batch(self) -> int:
        return self.profile["max"][0]

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """UsageError saying what to change when ``shape`` is outside the engine's profile."""
        lo, hi = self.profile["min"], self.profile["max"]
        if len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True)):
            return
        if len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape[1:], lo[1:], hi[1:], strict=True)):
            raise UsageError(
                f"batch {shape[0]} is outside this engine's profile ({self.min_batch} to {self.max_batch}); "
                f"split the batch into chunks of at most {self.max_batch}, or rebuild with a larger --max-batch"
            )
        if len(shape) == len(lo) == 4 and shape[1] == lo[1] and lo[2:] != hi[2:]:  # a dynamic-resolution engine
            raise UsageError(
                f"images of {shape[2]}x{shape[3]} are outside this engine's profile: height {lo[2]} to {hi[2]}, "
                f"width {lo[3]} to {hi[3]}; resize them into it, or rebuild the engine with --min-res/--max-res "
                "covering this size (inside the export's --dynamic-res range)"
            )
        raise UsageError(
            f"input shape {tuple(shape)} does not fit this engine ({self.input_name}: {lo} to {hi}); "
            "give NCHW images preprocessed as the artifact's manifest says"
        )

    def infer(self, images: Any) -> Any:
        """Logits for ``images``: numpy in -> numpy out; torch in -> torch out on the input's device."""
        import torch

        as_numpy = isinstance(images, np.ndarray)
        if as_numpy:
            x = torch.from_numpy(np.ascontiguousarray(images))
        elif isinstance(images, torch.Tensor):
            x = images
        else:
            raise TypeError(f"infer() takes a numpy array or a torch tensor, not {type(images).__name__}")
        if not x.is_floating_point():
            raise UsageError(f"infer() needs float images (preprocessed, NCHW), got {x.dtype}")
        shape = tuple(int(d) for d in x.shape)
        self.check_input_shape(shape)
        with self._lock:
            if self._context is None:
                raise RuntimeError("this TrtEngine is closed; create a new one")
            with torch.cuda.device(self.device):
                caller = torch.cuda.current_stream(self.device)
                # A CUDA input may still be being written on the caller's stream: run after it.
                self._stream.wait_stream(caller)
                with torch.cuda.stream(self._stream):
                    self._input.view(-1)[: x.numel()].view(shape).copy_(x)  # casts to the engine's input dtype
                    self._collector.clear()  # so a failure below is explained by its own messages
                    if not self._context.set_input_shape(self.input_name, shape):
                        raise UsageError(f"TensorRT refused input shape {shape}: {self._collector.explain()}")
                    if not self._context.execute_async_v3(self._stream.cuda_stream):
                        raise RuntimeError(f"TensorRT execution failed: {self._collector.explain()}")
                    out_shape = tuple(int(d) for d in self._context.get_tensor_shape(self.output_name))
                    result = self._output.view(-1)[: math.prod(out_shape)].view(out_shape)
                    # Copy out before the lock is released: the next call reuses the buffer.
                    to_host = as_numpy or x.device.type == "cpu"
                    result = result.to("cpu") if to_host else result.to(x.device, copy=True)
                self._stream.synchronize()
                if result.is_cuda:
                    # Allocated on our stream, used on the caller's: tell the caching allocator.
                    result.record_stream(torch.cuda.current_stream(result.device))
        return result.numpy() if as_numpy else result

    def close(self) -> None:
        """Free the context, engine and buffers (idempotent)."""
        with self._lock:
            self._context = None
            self._engine = None
            self._runtime = None
            self._input = self._output = None

    def __enter__(self) -> TrtEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _torch_dtype(trt: Any, dtype: Any):
    """torch dtype for a TensorRT DataType (via tensorrt.nptype and numpy)."""
    import torch

    return torch.from_numpy(np.empty(0, dtype=trt.nptype(dtype))).dtype
