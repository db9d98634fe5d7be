"""Stub TensorRT libraries, and the real TensorRT bindings and CUDA headers, for tests on machines without a GPU.

TensorRT's Python bindings are an ordinary wheel (``tensorrt-cu13-bindings``, module
``tensorrt_bindings``); only TensorRT's shared libraries cannot be installed here. This module
builds three tiny C libraries with those libraries' sonames (``libnvinfer.so.11``,
``libnvonnxparser.so.11``, ``libnvinfer_plugin.so.11``) whose functions do nothing but return
NULL (version queries return the bindings' version). With them the real bindings import, so
every class, enum member, property and method signature of the real API can be checked; and
nothing can be built or run: ``trt.Builder``/``trt.Runtime`` raise TypeError, the C++
``createInferRuntime`` returns null. The stubs never pretend to be TensorRT.

The symbols are not a hand-written list: they are the undefined symbols of the binaries that
will be linked against the stubs (``nm -D --undefined-only`` on the bindings' ``tensorrt.so``,
``nm --undefined-only`` on a compiled object), minus what the C library and the other linked
libraries define.

Wheels (the bindings; ``nvidia-cuda-runtime`` for ``cuda_runtime_api.h`` and ``libcudart``) are
taken from this environment when installed, else downloaded once with ``pip download`` into
``~/.cache/vit-deploy-tests`` (or ``$VIT_DEPLOY_TEST_WHEELS``) and unpacked there. Every helper
returns a reason string instead of raising when something is missing, so tests can skip with it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # run as a script too: no helpers import

BINDINGS = "tensorrt-cu13-bindings==11.4.0.106"
CUDA_RUNTIME = "nvidia-cuda-runtime==13.5.37"  # CUDA 13 runtime headers and libcudart.so.13
CUDA_CRT = "nvidia-cuda-crt==13.5.37"  # crt/host_defines.h, which cuda_runtime_api.h includes
NLOHMANN_JSON = "nlohmann-json==3.12.0"  # PyPI repackaging of the header-only JSON library (nlohmann-json3-dev)
LIBRARIES = ("libnvinfer.so.11", "libnvonnxparser.so.11", "libnvinfer_plugin.so.11")
SHARED = ROOT.parent / "shared" / "third_party"
TRT_INCLUDE = SHARED / "tensorrt-include" / "include"


def cache_root() -> Path:
    return Path(os.environ.get("VIT_DEPLOY_TEST_WHEELS") or Path.home() / ".cache" / "vit-deploy-tests")


def tool(*names: str) -> str | None:
    for name in names:
        if found := shutil.which(name):
            return found
    return None


def unpacked_wheel(requirement: str, module: str) -> Path | str:
    """A folder to put on PYTHONPATH that holds ``module`` from ``requirement``; else why not.

    An installed copy is used as is; otherwise the wheel is downloaded (no dependencies) and
    unpacked into the cache, once.
    """
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    return unpacked_wheel_download(requirement, module)


def unpacked_wheel_download(requirement: str, module: str | None = None) -> Path | str:
    """``requirement``'s wheel (no dependencies) unpacked into the cache, downloaded once; else why not."""
    name = re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    target = cache_root() / re.sub(r"[^\w.-]+", "_", requirement) / python
    if target.is_dir() and (module is None or (target / module).is_dir()):
        return target
    download = target.parent / "download"
    download.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(download),
           requirement]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wheels = sorted(download.glob(f"{name.replace('-', '_')}-*.whl"))
    if r.returncode != 0 or not wheels:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no wheel"]
        return f"cannot get the {requirement} wheel (pip download: {tail[0]})"
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extractall(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def bindings_dir() -> Path | str:
    """The folder holding ``tensorrt_bindings`` (real TensorRT 11.4 bindings), or why there is none."""
    return unpacked_wheel(BINDINGS, "tensorrt_bindings")


def _cuda_wheel_dir(requirement: str, header: str) -> Path | str:
    """``nvidia/cu13`` of a CUDA wheel holding ``include/<header>`` (installed, else downloaded); else why not."""
    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        for candidate in sorted(root.glob("cu*")):
            if (candidate / "include" / header).is_file():
                return candidate
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    if (cached := cache_root() / re.sub(r"[^\w.-]+", "_", requirement) / python / "nvidia").is_dir():
        roots = [cached]
    else:
        found = unpacked_wheel_download(requirement)
        if isinstance(found, str):
            return found
        roots = [found / "nvidia"]
    for root in roots:
        for candidate in sorted(root.glob("cu*")):
            if (candidate / "include" / header).is_file():
                return candidate
    return f"no include/{header} in the {requirement} wheel"


def cuda_runtime_dir() -> Path | str:
    """``nvidia/cu13`` of the CUDA runtime wheel (``include/cuda_runtime_api.h``, ``lib/libcudart.so.13``)."""
    return _cuda_wheel_dir(CUDA_RUNTIME, "cuda_runtime_api.h")


def cuda_crt_dir() -> Path | str:
    """``nvidia/cu13`` of the CUDA C runtime headers wheel (``include/crt/host_defines.h``)."""
    return _cuda_wheel_dir(CUDA_CRT, "crt/host_defines.h")


def compiler_finds(compiler: Sequence[str], header: str) -> bool:
    """Whether ``compiler`` (an argv prefix) finds ``#include <header>`` with no include flag of ours."""
    r = subprocess.run([*compiler, "-x", "c++", "-std=c++17", "-E", "-o", os.devnull, "-"],
                       input=f"#include <{header}>\n", capture_output=True, text=True, timeout=120)
    return r.returncode == 0


def default_include_dirs(compiler: Sequence[str]) -> list[Path]:
    """The folders ``compiler`` searches for ``#include <...>`` by itself (``-E -v``), resolved."""
    r = subprocess.run([*compiler, "-x", "c++", "-E", "-v", "-o", os.devnull, "-"], input="", capture_output=True,
                       text=True, timeout=120)
    listing = r.stderr.split("#include <...> search starts here:", 1)[-1].split("End of search list.", 1)[0]
    return [Path(line.split(" (framework directory)")[0].strip()).resolve()
            for line in listing.splitlines() if line.strip()]


def json_include_flags(compiler: Sequence[str], source: str = "system") -> list[str] | str:
    """The flags that give ``compiler`` nlohmann/json.hpp; else why there are none.

    ``source="system"``: where the compiler finds the header by itself (the Debian/Ubuntu package
    nlohmann-json3-dev puts it in /usr/include), no flag at all; otherwise, and with
    ``source="wheel"``, the PyPI wheel's copy as ``-isystem``. A folder the compiler already
    searches is never passed: ``-isystem /usr/include`` moves it ahead of the C++ library's own
    headers, whose ``#include_next <stdlib.h>`` then finds nothing ("stdlib.h: No such file").
    """
    if source == "system" and compiler_finds(compiler, "nlohmann/json.hpp"):
        return []
    found = unpacked_wheel(NLOHMANN_JSON, "nlohmann_json")
    if isinstance(found, str):
        return found
    return ["-isystem", str(found / "nlohmann_json" / "include")]


def _nm(binary: Path, *flags: str) -> list[tuple[str, str]]:
    out = subprocess.run(["nm", *flags, str(binary)], capture_output=True, text=True, check=True).stdout
    return [(parts[-2], parts[-1]) for parts in (line.split() for line in out.splitlines()) if len(parts) >= 2]


def defined_symbols(library: Path) -> set[str]:
    return {name.split("@")[0] for kind, name in _nm(library, "-D", "--defined-only") if kind in "TtWwiDdBbVvRr"}


def needed_symbols(binary: Path, provided: set[str] = frozenset()) -> list[str]:
    """C-linkage functions ``binary`` needs that neither libc nor ``provided`` defines: TensorRT's entry points.

    Versioned (``@GLIBC``), C++-mangled (``_Z``) and Python C-API (``Py``) symbols are the system's.
    """
    dynamic = ["-D"] if binary.suffix == ".so" else []
    libc = ctypes.CDLL(None)
    names = []
    for kind, name in _nm(binary, *dynamic, "--undefined-only"):
        if kind not in ("U",) or "@" in name or name.startswith(("_Z", "Py", "_Py", "_")):
            continue
        if name in provided or hasattr(libc, name):
            continue
        names.append(name)
    return sorted(set(names))


def library_for(symbol: str) -> str:
    """Which of TensorRT's three libraries exports ``symbol`` (by the libraries' naming of their C API)."""
    if "OnnxParser" in symbol:
        return "libnvonnxparser.so.11"
    if symbol.startswith("initLibNvInferPlugins"):
        return "libnvinfer_plugin.so.11"
    return "libnvinfer.so.11"


def version_number(version: str) -> int:
    """TensorRT's integer version (major * 10000 + minor * 100 + patch): 11.4.0.106 -> 110400."""
    major, minor, patch = (int(p) for p in version.split(".")[:3])
    return major * 10000 + minor * 100 + patch


def build_stubs(out: Path, symbols: list[str], version: str = "11.4.0") -> Path | str:
    """Compile the three stub libraries into ``out`` (with ``lib*.so`` link names); else why not.

    Every function returns NULL (0); functions named ``get*Version`` return ``version`` as TensorRT encodes it.
    """
    cc = tool("cc", "gcc", "clang")
    if cc is None:
        return "no C compiler (cc/gcc/clang) to build the stub TensorRT libraries"
    out.mkdir(parents=True, exist_ok=True)
    by_lib: dict[str, list[str]] = {lib: [] for lib in LIBRARIES}
    for symbol in symbols:
        by_lib[library_for(symbol)].append(symbol)
    by_lib["libnvinfer.so.11"].append("getInferLibVersion")  # what a C++ consumer asks first
    number = version_number(version)
    for lib, names in by_lib.items():
        lines = [f"/* {lib} stub for tests: every function returns NULL; nothing is built or run. */"]
        for name in sorted(set(names)):
            if re.fullmatch(r"get\w*Version", name):
                lines.append(f"int {name}(void) {{ return {number}; }}")
            else:
                lines.append(f"void *{name}(void) {{ return 0; }}")
        source = out / f"{lib}.c"
        source.write_text("\n".join(lines) + "\n")
        r = subprocess.run([cc, "-shared", "-fPIC", "-o", str(out / lib), f"-Wl,-soname,{lib}", str(source)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"{cc} could not build the {lib} stub: {r.stderr.strip()[:300]}"
        link = out / lib.rsplit(".", 1)[0]  # libnvinfer.so, for -lnvinfer
        link.unlink(missing_ok=True)
        link.symlink_to(lib)
    return out


def bindings_env(stubs: Path | None, bindings: Path) -> dict[str, str]:
    """Environment for a subprocess that imports the bindings (LD_LIBRARY_PATH must be set before it starts)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(bindings), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(stubs) if stubs else "", env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
    return env
