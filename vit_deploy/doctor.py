"""What this machine can do: the probes behind ``vit-deploy doctor`` (and every "why not" elsewhere).

Each probe returns a plain dict with ``ok`` (bool), what it found, and for every "can't" a
``reason`` (one line) and an ``install`` command. Other commands reuse them rather than asking
again in their own words: ``vit_deploy.trt.unavailable_reason()`` is ``probe_tensorrt()["reason"]``.

- ``probe_gpu``: the NVIDIA driver (``nvidia-smi``), its CUDA version, the GPUs, and whether
  this PyTorch build can use them.
- ``probe_tensorrt``: the Python bindings (which wheel, which version), TensorRT's shared
  libraries (which one is missing), and whether a Builder can be created (needs a GPU).
- ``probe_onnxruntime``: the installed ONNX Runtime package and its execution providers.
- ``probe_openvino``: OpenVINO's devices.
- ``probe_triton``: a ``tritonserver`` binary and the backends it can load.

Nothing here needs a GPU or a network, and nothing raises: a probe that fails says why.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
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
ORT_GPU_INSTALL = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
TORCH_CUDA_INSTALL = "pip install torch (a CUDA build: https://pytorch.org/get-started/locally/)"
DRIVER_INSTALL = "install the NVIDIA driver for your GPU (https://www.nvidia.com/drivers) and check with nvidia-smi"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _run(cmd: list[str], timeout: float = 20.0) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, _one_line(e)
    return r.returncode, (r.stdout + r.stderr).strip()


def _dist_versions(module: str) -> dict[str, str]:
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
        info["torch"] = f"unusable ({_one_line(e)})"
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
    from .trt import LIBRARIES, MODULES, builder_error, import_tensorrt, missing_library

    install = TENSORRT_INSTALL[cuda_major()]
    info: dict[str, Any] = {"ok": False, "module": None, "bindings": None, "version": None, "libraries": {},
                            "builder": None, "reason": None, "install": None}
    dists = {**_dist_versions("tensorrt_bindings"), **_dist_versions("tensorrt")}
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
        info["builder"] = _one_line(e)
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
            status[name] = f"missing ({_one_line(e)})"
    return status


def probe_onnxruntime() -> dict[str, Any]:
    """The ONNX Runtime package (onnxruntime or onnxruntime-gpu: one module, never both) and its providers."""
    info: dict[str, Any] = {"ok": False, "packages": {}, "version": None, "providers": [], "cuda": False,
                            "tensorrt": False, "reason": None, "install": None}
    info["packages"] = _dist_versions("onnxruntime")
    if importlib.util.find_spec("onnxruntime") is None:
        info["reason"], info["install"] = "ONNX Runtime is not installed", "pip install onnxruntime"
        return info
    try:
        import onnxruntime as ort

        info["version"] = ort.__version__
        info["providers"] = list(ort.get_available_providers())
    except Exception as e:  # noqa: BLE001
        info["reason"], info["install"] = f"ONNX Runtime does not import ({_one_line(e)})", "pip install onnxruntime"
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
        info["reason"], info["install"] = f"OpenVINO does not start ({_one_line(e)})", "pip install 'vit-deploy[cpu]'"
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


def report() -> dict[str, Any]:
    """Every probe, keyed by topic: what ``vit-deploy doctor --json`` prints."""
    return {
        "gpu": probe_gpu(),
        "tensorrt": probe_tensorrt(),
        "onnxruntime": probe_onnxruntime(),
        "openvino": probe_openvino(),
        "triton": probe_triton(),
    }


def format_report(r: dict[str, Any]) -> str:
    """The report as text: one line per finding, every "can't" with its reason and the command to fix it."""
    lines = []

    def cant(what: str, reason: str | None, install: str | None) -> None:
        lines.append(f"  no   {what}: {reason}" + (f"\n       fix: {install}" if install else ""))

    g = r["gpu"]
    lines.append("GPU")
    if g["gpus"]:
        for gpu in g["gpus"]:
            lines.append(f"  yes  {gpu['name']} (compute capability {gpu['compute_capability']}, {gpu['memory']}), "
                         f"driver {g['driver']}, CUDA {g['cuda']}")
    lines.append(f"  {'yes' if g['ok'] else 'no '}  PyTorch {g['torch']} (CUDA {g['torch_cuda']})")
    if not g["ok"]:
        cant("CUDA", g["reason"], g["install"])
    t = r["tensorrt"]
    lines.append("TensorRT")
    lines.append(f"  {'yes' if t['bindings'] else 'no '}  bindings: {t['bindings'] or 'not installed'}")
    for lib, state in t["libraries"].items():
        lines.append(f"  {'yes' if state == 'loaded' else 'no '}  {lib}: {state}")
    o, s = r["onnxruntime"], r["triton"]
    ort_packages = ", ".join(f"{k} {v}" for k, v in o.get("packages", {}).items()) or o.get("version")
    # (section, probe, what cannot be done without it, the "yes" line, an extra "can't" when it works)
    findings = [
        (None, t, "TensorRT engines", lambda: f"TensorRT {t['version']}: engines can be built and run here", None),
        ("ONNX Runtime", o, "ONNX Runtime", lambda: f"{ort_packages}: {', '.join(o['providers'])}",
         None if o.get("cuda") else ("CUDA/TensorRT execution providers", "gpu_reason", "gpu_install")),
        ("OpenVINO", r["openvino"], "OpenVINO",
         lambda: f"OpenVINO {r['openvino']['version']}: devices {', '.join(r['openvino']['devices']) or 'none'}", None),
        ("Triton", s, "tritonserver",
         lambda: f"{s['binary']} ({s['source']}); backends: {', '.join(s['backends'] or ['unknown'])}",
         None if s.get("tensorrt_backend") else ("tensorrt_plan serving", "tensorrt_reason", "tensorrt_install")),
    ]
    for section, probe, what, yes, extra in findings:
        if section:
            lines.append(section)
        if not probe["ok"]:
            cant(what, probe["reason"], probe["install"])
            continue
        lines.append(f"  yes  {yes()}")
        if probe is o and o.get("warning"):
            lines.append(f"  warn {o['warning']}")
        if extra:
            cant(extra[0], probe[extra[1]], probe[extra[2]])
    return "\n".join(lines)
