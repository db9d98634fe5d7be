"""TensorRT: the only package that imports ``tensorrt``, always lazily, inside functions.

Every module here imports on a machine without TensorRT (a CPU-only CI machine, a laptop): the
precision graphs are made and validated on the CPU, and only the engine build (``build.py``),
the runner (``plan.py``) and the inspector (``inspector.py``) need TensorRT and a CUDA GPU;
``probe.py`` answers "can an engine be built here?" (``unavailable_reason``).

This module imports TensorRT (``import_tensorrt``), says which TensorRT is installed and which
GPU is present, and holds the logger that collects TensorRT's own messages so
a failure is reported with them.

Written against the TensorRT 11 Python API documentation, not run here (no GPU, and TensorRT
cannot be installed on the development machines):
- https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html
- https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
- https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/getting-started/support-matrix.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# TensorRT's ILogger severities, most severe first (tensorrt.ILogger.Severity member names).
_COLLECTED = ("INTERNAL_ERROR", "ERROR", "WARNING")
# The shared libraries the bindings (``tensorrt_bindings/tensorrt.so``) are linked against.
LIBRARIES = ("libnvinfer.so.11", "libnvonnxparser.so.11", "libnvinfer_plugin.so.11")
# Module names: ``tensorrt`` is NVIDIA's front-end package (``tensorrt-cu13``), a re-export of the
# ``tensorrt_bindings`` module that the bindings wheel (``tensorrt-cu13-bindings``) installs.
MODULES = ("tensorrt", "tensorrt_bindings")


def import_tensorrt() -> Any:
    """The TensorRT Python module: ``tensorrt``, else the bare bindings ``tensorrt_bindings`` (same API).

    Raises ImportError as the import did: ModuleNotFoundError when neither is installed, an
    ImportError naming the shared library (``libnvinfer.so.11: cannot open shared object file``)
    when the bindings are installed but TensorRT's libraries are not.
    """
    import importlib

    try:
        return importlib.import_module("tensorrt")
    except ModuleNotFoundError as e:
        if e.name != "tensorrt":
            raise  # the front end is there but its bindings are not
        return importlib.import_module("tensorrt_bindings")


def missing_library(error: BaseException) -> str | None:
    """The shared library an ImportError says could not be loaded (``libnvinfer.so.11``), or None."""
    found = re.search(r"(lib[\w+-]+\.so(?:\.\d+)*)", str(error))
    return found.group(1) if found else None


def builder_error(trt: Any, error: BaseException) -> str:
    """Why ``trt.Builder``/``trt.Runtime`` failed, as one line: TensorRT raises TypeError on a null factory result."""
    detail = " ".join(str(error).split()) or type(error).__name__
    return (
        f"TensorRT {getattr(trt, '__version__', '?')} is installed but could not start ({detail}): "
        "it needs an NVIDIA GPU with a working CUDA driver (check with nvidia-smi)"
    )


def tensorrt_version() -> str | None:
    """The installed TensorRT version (``tensorrt.__version__``), or None when it cannot be imported."""
    try:
        trt = import_tensorrt()
    except ImportError:
        return None
    return str(trt.__version__)


def device_facts(device: int | None = None) -> dict[str, str]:
    """The GPU an engine is built for or runs on: name and compute capability ("9.0"), from torch.cuda."""
    import torch

    index = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


@dataclass
class LogCollector:
    """TensorRT's errors and warnings, kept so a failed parse/build/deserialize can be explained.

    Plain Python (the TensorRT logger that feeds it is made by ``trt_logger``), so the
    formatting is testable without TensorRT.
    """

    records: list[tuple[str, str]] = field(default_factory=list)  # (severity name, message)

    def add(self, severity: str, message: str) -> None:
        if severity in _COLLECTED:
            self.records.append((severity, message.strip()))

    def errors(self) -> list[str]:
        return [m for s, m in self.records if s in ("INTERNAL_ERROR", "ERROR")]

    def warnings(self) -> list[str]:
        return [m for s, m in self.records if s == "WARNING"]

    def clear(self) -> None:
        self.records.clear()

    def explain(self, limit: int = 20) -> str:
        """The collected errors (else warnings) as one line, or a hint that TensorRT said nothing."""
        lines = self.errors() or self.warnings()
        if not lines:
            return "TensorRT logged no error"
        more = f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more


def trt_logger(collector: LogCollector) -> Any:
    """A ``tensorrt.ILogger`` that hands warnings and errors to ``collector``.

    Keep a reference for as long as the builder/runtime that uses it lives: TensorRT holds only
    a pointer. Subclassing ILogger and calling its ``__init__`` is the documented pattern, and the
    logger must be thread safe (a list append is, under the GIL):
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Logger.html
    """
    trt = import_tensorrt()

    class _Collecting(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            collector.add(getattr(severity, "name", str(severity)).split(".")[-1], msg)

    return _Collecting()
