"""What this machine can do: the probes behind ``vit-deploy doctor`` (and every "why not" elsewhere).

Each probe returns a plain dict with ``ok`` (bool), what it found, and for every "can't" a
``reason`` (one line) and an ``install`` command. Other commands reuse them rather than asking
again in their own words. The GPU and TensorRT probes live in ``vit_deploy.trt.probe`` (TensorRT's
own "can I run here", which ``vit_deploy.trt.probe.unavailable_reason()`` reads); this module adds:

- ``probe_onnxruntime``: the installed ONNX Runtime package and its execution providers.
- ``probe_openvino``: OpenVINO's devices.
- ``probe_triton``: a ``tritonserver`` binary and the backends it can load;
- ``native_precisions``: which engine precisions each GPU runs on tensor cores (FP16, INT8, FP8);
- ``probe_cpu``: whether this CPU's INT8 kernels are exact (VNNI/AMX), which the CPU INT8 path's accuracy needs.

Nothing here needs a GPU or a network, and nothing raises: a probe that fails says why.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

from .trt.probe import dist_versions, one_line, probe_gpu, probe_tensorrt

ORT_GPU_INSTALL = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"


def probe_onnxruntime() -> dict[str, Any]:
    """The ONNX Runtime package (onnxruntime or onnxruntime-gpu: one module, never both) and its providers."""
    info: dict[str, Any] = {"ok": False, "packages": {}, "version": None, "providers": [], "cuda": False,
                            "tensorrt": False, "reason": None, "install": None}
    info["packages"] = dist_versions("onnxruntime")
    if importlib.util.find_spec("onnxruntime") is None:
        info["reason"], info["install"] = "ONNX Runtime is not installed", "pip install onnxruntime"
        return info
    try:
        import onnxruntime as ort

        info["version"] = ort.__version__
        info["providers"] = list(ort.get_available_providers())
    except Exception as e:  # noqa: BLE001
        info["reason"], info["install"] = f"ONNX Runtime does not import ({one_line(e)})", "pip install onnxruntime"
        return info
    info["ok"] = True
    info["cuda"] = "CUDAExecutionProvider" in info["providers"]
    info["tensorrt"] = "TensorrtExecutionProvider" in info["providers"]
    if len(info["packages"]) > 1:
        info["warning"] = (f"{' and '.join(info['packages'])} are both installed and overwrite each other's "
                           "onnxruntime module: pip uninstall -y onnxruntime onnxruntime-gpu && "
                           "pip install onnxruntime-gpu (GPU host) or onnxruntime (CPU)")
    if not info["cuda"]:
        info["gpu_reason"] = ("no CUDA/TensorRT execution provider: this is the CPU package"
                              if "onnxruntime-gpu" not in info["packages"]
                              else "onnxruntime-gpu is installed but found no usable CUDA (driver/GPU)")
        info["gpu_install"] = ORT_GPU_INSTALL
    return info


def probe_openvino() -> dict[str, Any]:
    """OpenVINO's version and devices (the fast CPU path)."""
    info: dict[str, Any] = {"ok": False, "version": None, "devices": [], "reason": None, "install": None}
    if importlib.util.find_spec("openvino") is None:
        info["reason"], info["install"] = "OpenVINO is not installed", "pip install 'vit-deploy[cpu]'"
        return info
    try:
        import openvino as ov

        info["version"] = ov.__version__
        info["devices"] = list(ov.Core().available_devices)
    except Exception as e:  # noqa: BLE001
        info["reason"], info["install"] = f"OpenVINO does not start ({one_line(e)})", "pip install 'vit-deploy[cpu]'"
        return info
    info["ok"] = True
    return info


def probe_triton() -> dict[str, Any]:
    """A tritonserver binary and its backends; ``tensorrt_plan`` models need the ``tensorrt`` backend."""
    from .serving.server import ServerError, available_backends, find_tritonserver

    info: dict[str, Any] = {"ok": False, "binary": None, "source": None, "backends": None, "tensorrt_backend": False,
                            "reason": None, "install": None}
    try:
        binary, root = find_tritonserver()
    except ServerError as e:
        info["reason"], info["install"] = str(e), "pip install 'vit-deploy[serve]'"
        return info
    info["binary"], info["source"] = str(binary), "nvidia-pytriton wheel" if root else "Triton install"
    backends = available_backends(root / "backends" if root else None)
    info["backends"] = sorted(backends) if backends is not None else None
    info["tensorrt_backend"] = bool(backends and "tensorrt" in backends)
    info["ok"] = True
    if not info["tensorrt_backend"]:
        info["tensorrt_reason"] = (
            "this tritonserver has no tensorrt backend (the nvidia-pytriton wheel ships only python): "
            "tensorrt_plan models need a full Triton"
        )
        info["tensorrt_install"] = "docker run --gpus all nvcr.io/nvidia/tritonserver:<yy.mm>-py3 (or a Triton install)"
    return info


# Tensor-core generations by compute capability: FP16 from Volta (7.0); the quantized formats' own
# minimum is in onnx/formats.py (INT8 7.5 Turing, FP8 8.9 Ada/Hopper)
FP16_TENSOR_CORES = (7, 0)


def native_precisions(compute_capability: str) -> list[str] | None:
    """The precisions of vit-deploy's engines that a GPU of ``compute_capability`` ("9.0") runs on tensor
    cores (None when the capability is unreadable): what ``build-engine --fp16/--int8/--fp8`` can use there."""
    from .onnx.formats import FORMATS

    try:
        have = tuple(int(part) for part in compute_capability.split(".")[:2])
    except (AttributeError, ValueError):
        return None
    found = ["fp16"] if have >= FP16_TENSOR_CORES else []
    return found + [f.name for f in FORMATS.values() if have >= f.min_compute_capability]


# x86 CPU flags with exact 8-bit dot products (VNNI: one instruction, 32-bit accumulation). Without
# them ONNX Runtime's fused integer kernels and oneDNN's (OpenVINO) go through 16-bit saturating
# multiply-adds; oneDNN then runs INT8 weights as 7 bits. Measured on an AVX2-only AMD EPYC: the tiny
# model's INT8 graph on OpenVINO 6x further from FP32 than the same graph evaluated as written.
EXACT_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def probe_cpu(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """Whether this CPU's INT8 kernels are exact (VNNI or AMX): the OpenVINO INT8 CPU path's accuracy depends
    on it. ``int8_exact`` is None where the flags cannot be read (not Linux x86)."""
    import platform

    info: dict[str, Any] = {"ok": True, "machine": platform.machine(), "int8_exact": None, "int8_flags": []}
    try:
        text = open(cpuinfo, encoding="utf-8", errors="replace").read()  # noqa: SIM115 - one read
    except OSError:
        return info
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    if flags:
        info["int8_flags"] = [f for f in EXACT_INT8_FLAGS if f in flags]
        info["int8_exact"] = bool(info["int8_flags"])
    if info["int8_exact"] is False:
        info["int8_note"] = ("no VNNI/AMX: CPU INT8 kernels (OpenVINO, ONNX Runtime's fused ones) saturate or use "
                             "7-bit weights here, so INT8 on this CPU is less accurate than the graph itself "
                             "(build-engine and compare evaluate Q/DQ as written and are not affected)")
    return info


def report() -> dict[str, Any]:
    """Every probe, keyed by topic: what ``vit-deploy doctor --json`` prints."""
    gpu = probe_gpu()
    for entry in gpu["gpus"]:
        entry["precisions"] = native_precisions(entry.get("compute_capability", ""))
    return {
        "gpu": gpu,
        "tensorrt": probe_tensorrt(),
        "onnxruntime": probe_onnxruntime(),
        "openvino": probe_openvino(),
        "triton": probe_triton(),
        "cpu": probe_cpu(),
    }
