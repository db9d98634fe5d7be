"""Can TensorRT build and run engines here, and if not, why: the probes ``unavailable_reason()`` and
``vit-deploy doctor`` share.

- ``probe_gpu``: the NVIDIA driver (``nvidia-smi``), its CUDA version, the GPUs, and whether
  this PyTorch build can use them.
- ``probe_tensorrt``: the Python bindings (which wheel, which version), TensorRT's shared
  libraries (which one is missing), and whether a Builder can be created (needs a GPU).

Each returns a plain dict with ``ok``, what it found, and for every "can't" a one-line ``reason``
and an ``install`` command. Nothing here needs a GPU or a network, and nothing raises.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import shutil
import subprocess
from typing import Any

# The TensorRT release vit-deploy is written and checked against (its bindings are a PyPI wheel).
TENSORRT_VERSION = "11.4.0.106"
TENSORRT_INSTALL = {
    "13": f"pip install tensorrt-cu13=={TENSORRT_VERSION}",
    "12": f"pip install tensorrt-cu12=={TENSORRT_VERSION}",
}
TORCH_CUDA_INSTALL = "pip install torch (a CUDA build: https://pytorch.org/get-started/locally/)"
DRIVER_INSTALL = "install the NVIDIA driver for your GPU (https://www.nvidia.com/drivers) and check with nvidia-smi"


def one_line(text: object) -> str:
    """``text`` on one line (whitespace runs collapsed): reasons are one line each."""
    return " ".join(str(text).split())


def _run(cmd: list[str], timeout: float = 20.0) -> tuple[int, str]:
    """(exit code, stdout + stderr); bytes that are not UTF-8 (a driver's localised message) become U+FFFD."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, one_line(e)
    return r.returncode, (r.stdout + r.stderr).strip()


def dist_versions(module: str) -> dict[str, str]:
    """{distribution: version} of the installed packages that provide top-level ``module``."""
    names = importlib.metadata.packages_distributions().get(module, [])
    out = {}
    for name in dict.fromkeys(names):
        try:
            out[re.sub(r"[-_.]+", "-", name).lower()] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


@functools.cache
def probe_gpu() -> dict[str, Any]:
    """NVIDIA driver, CUDA version and GPUs (from nvidia-smi), and whether this PyTorch sees them."""
    info: dict[str, Any] = {"ok": False, "driver": None, "cuda": None, "gpus": [], "torch": None,
                            "torch_cuda": None, "reason": None, "install": None}
    smi = shutil.which("nvidia-smi")
    if smi is None:
        info["reason"] = "no NVIDIA driver here (nvidia-smi not found): no CUDA GPU to run TensorRT on"
        info["install"] = DRIVER_INSTALL
    else:
        code, out = _run([smi, "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"])
        if code != 0:
            info["reason"] = f"nvidia-smi failed ({out.splitlines()[-1] if out else code}): the driver cannot see a GPU"
            info["install"] = DRIVER_INSTALL
        else:
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) >= 4:
                    info["gpus"].append({"name": parts[0], "compute_capability": parts[2], "memory": parts[3]})
                    info["driver"] = parts[1]
            code, banner = _run([smi])
            found = re.search(r"CUDA Version:\s*([\d.]+)", banner)
            info["cuda"] = found.group(1) if found else None
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        torch_ok = bool(torch.cuda.is_available())
    except Exception as e:  # noqa: BLE001 - a broken torch is a finding, not a crash
        info["torch"] = f"unusable ({one_line(e)})"
        torch_ok = False
    if info["reason"] is None and not torch_ok:
        info["reason"] = (f"this PyTorch ({info['torch']}) has no CUDA (torch.version.cuda={info['torch_cuda']}); "
                          "vit-deploy's GPU buffers and streams come from torch")
        info["install"] = TORCH_CUDA_INSTALL
    info["ok"] = info["reason"] is None
    return info


def cuda_major() -> str:
    """"13" or "12": the CUDA major version whose TensorRT wheels fit this driver (13 when unknown)."""
    cuda = probe_gpu().get("cuda") or ""
    return "12" if cuda.startswith("12.") else "13"


@functools.cache
def probe_tensorrt(check_gpu: bool = True) -> dict[str, Any]:
    """TensorRT as vit-deploy would use it: bindings, libraries, version, a Builder, and why not.

    ``reason`` is None only when an engine can be built and run here. With ``check_gpu=False``
    the PyTorch/CUDA check is left out (TensorRT alone).
    """
    from . import LIBRARIES, MODULES, builder_error, import_tensorrt, missing_library

    install = TENSORRT_INSTALL[cuda_major()]
    info: dict[str, Any] = {"ok": False, "module": None, "bindings": None, "version": None, "libraries": {},
                            "builder": None, "reason": None, "install": None}
    dists = {**dist_versions("tensorrt_bindings"), **dist_versions("tensorrt")}
    info["bindings"] = ", ".join(f"{k} {v}" for k, v in sorted(dists.items())) or None
    try:
        trt = import_tensorrt()
    except ImportError as e:
        lib = missing_library(e)
        if lib is None:
            info["reason"] = (f"TensorRT is not installed here (neither the {' nor the '.join(MODULES)} module "
                              f"imports); on a GPU host: {install}")
            info["install"] = install
            return info
        info["libraries"] = _library_status(LIBRARIES)
        missing = [n for n, s in info["libraries"].items() if s != "loaded"] or [lib]
        version = next((v for k, v in dists.items() if "bindings" in k), TENSORRT_VERSION)
        libs_dist = next((k.replace("-bindings", "-libs") for k in dists if "bindings" in k), None)
        install = f"pip install {libs_dist}=={version}" if libs_dist else install
        info["reason"] = (f"the TensorRT Python bindings ({info['bindings'] or 'tensorrt_bindings'}) are installed but "
                          f"TensorRT's libraries are not: {', '.join(missing)} cannot be loaded; "
                          f"on a GPU host: {install}")
        info["install"] = install
        return info
    info["module"] = getattr(trt, "__name__", "tensorrt")
    info["version"] = str(getattr(trt, "__version__", "?"))
    info["libraries"] = dict.fromkeys(LIBRARIES, "loaded")
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except (RuntimeError, TypeError) as e:  # the bindings raise TypeError when the factory returns nullptr
        info["builder"] = one_line(e)
        info["reason"] = builder_error(trt, e)
        info["install"] = DRIVER_INSTALL
        return info
    info["builder"] = "ok"
    del builder
    if check_gpu:
        # Device buffers, the CUDA stream and the device facts in the manifest come from torch.
        import torch

        if not torch.cuda.is_available():
            info["reason"] = (f"TensorRT {info['version']} is installed but this PyTorch ({torch.__version__}) has "
                              f"no CUDA; {TORCH_CUDA_INSTALL}")
            info["install"] = TORCH_CUDA_INSTALL
            return info
    info["ok"] = True
    return info


def _library_status(names: tuple[str, ...]) -> dict[str, str]:
    """{soname: "loaded" | the loader's error} for TensorRT's libraries, each tried on its own."""
    import ctypes

    status = {}
    for name in names:
        try:
            ctypes.CDLL(name)
            status[name] = "loaded"
        except OSError as e:
            status[name] = f"missing ({one_line(e)})"
    return status


@functools.cache
def unavailable_reason() -> str | None:
    """Why no TensorRT engine can be built or run here, or None when TensorRT and a CUDA GPU are usable.

    Computed once per process (creating a Builder costs a CUDA context): ``unavailable_reason.cache_clear()``
    asks again. The probe itself is :func:`probe_tensorrt`, which ``vit-deploy doctor`` prints.
    """
    return probe_tensorrt()["reason"]
