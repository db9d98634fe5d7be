"""One worker process per benchmark row, driven over a pipe.

Why processes: every row gets a clean interpreter, so one backend's thread pools, allocator
state and imports (torch is ~300 MB resident) neither slow down nor inflate the memory of
another, and the thread count is set before any library starts its pools. Why one
long-lived worker per row instead of one process per measurement: the parent drives all
workers round-robin (``run.py``), so a burst of load on a shared machine hits every row
alike and the ratios between rows hold.

Protocol (parent -> worker, each answered by one dict with "ok"):
    ("batch", {"batch": B})   make the seeded inputs for batch B, reset the peak-memory mark
                              (with "size": S, S x S images: a dynamic-resolution artifact at size S)
    ("run", {"calls": K})     K back-to-back ``infer`` calls: per-call seconds and the total
    ("memory", {})            peak resident memory since the last "batch" (and CUDA peak)
    ("close", {})             release the runner and exit

Peak memory is the kernel's high-water mark of this process's resident set (``VmHWM`` in
/proc/self/status), reset per batch size through /proc/self/clear_refs. Not
``getrusage().ru_maxrss``: for a child started with fork+exec (spawn, subprocess) Linux
carries the parent's peak over into the child's ru_maxrss, so a worker started from a large
parent (a test session with torch loaded) would report the parent's memory.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker opens and how (picklable: it crosses into the spawned process)."""

    row: str
    artifact: str
    opener: str = "runtime"
    open_kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0


# -- memory ---------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark of this process (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> tuple[float, str]:
    """(peak resident MiB, what it measures)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm / 1024, "VmHWM"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024), "ru_maxrss (process lifetime)"


def rss_mib() -> float | None:
    now = _status_kib("VmRSS")
    return None if now is None else now / 1024


# -- openers: the thing a worker times ------------------------------------------------------
class OpenVinoPeer:
    """OpenVINO on the FP32 ONNX graph with its default settings: the alternative a user would pick.

    Deliberately not a ``vit_deploy.runtime`` backend: it is the yardstick, so it runs the way
    OpenVINO's own docs show (``core.compile_model(path, "CPU", config)``), threads as asked.
    """

    backend = "openvino"

    def __init__(self, directory: Path, threads: int | None, model: str | None = None) -> None:
        import openvino as ov

        from .. import artifact as artifact_view

        path = model or artifact_view.open(directory, verify=False).model_file
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        self.version = ov.__version__
        self.model = str(path)
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def infer(self, images: Any) -> Any:
        self.request.infer({0: images})
        return self.request.get_output_tensor(0).data

    def compute(self) -> str:
        """The precision OpenVINO chose for the matrix products (bf16 on AMX/AVX512-BF16 CPUs, else f32)."""
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "bf16", "f16", "f32"
        return {"bf16": "bf16", "f16": "fp16", "f32": "fp32"}.get(hint, hint)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"backend": "openvino", "version": self.version}
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS"):
            try:
                facts[key] = str(self.compiled.get_property(key))
            except Exception:  # a property this OpenVINO version lacks is just not recorded
                pass
        return facts

    def close(self) -> None:
        del self.request, self.compiled


class OpenVinoIrPeer(OpenVinoPeer):
    """An OpenVINO IR that ``bench`` built itself (``peers.py``: NNCF INT8 of the FP32 export).

    The inputs are the export's (its manifest: shape, preprocessing); the matrix products run in
    INT8, so the row is held to the INT8 ceiling whatever precision OpenVINO picks for the rest.
    """

    def __init__(self, directory: Path, threads: int | None, model: str, built: dict[str, Any] | None) -> None:
        super().__init__(directory, threads, model)
        self.built = built or {}

    def compute(self) -> str:
        return "int8"

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        facts["model"] = self.model
        for key in ("quantizer", "cached", "key"):
            if key in self.built:
                facts[key] = self.built[key]
        return facts


def _open_runtime(spec: WorkerSpec) -> Any:
    from .. import runtime

    provider = "cuda" if spec.device.startswith("cuda") else "cpu"
    return runtime.open(spec.artifact, **{"provider": provider, "device": spec.device, "threads": spec.threads,
                                          **spec.open_kwargs})


OPENERS = {
    "runtime": _open_runtime,
    "openvino": lambda spec: OpenVinoPeer(Path(spec.artifact), spec.threads),
    "openvino-ir": lambda spec: OpenVinoIrPeer(Path(spec.artifact), spec.threads, spec.open_kwargs["model"],
                                               spec.open_kwargs.get("built")),
}


# -- the worker -----------------------------------------------------------------------------
def worker_main(conn: Any, spec: WorkerSpec) -> None:
    """Entry point of the spawned process: open the row's runner, then serve commands until "close"."""
    import signal

    # Ctrl-C reaches the whole process group; the parent decides when workers stop (it closes
    # them, or its end of the pipe closes and recv() below sees EOF), so no traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.threads:
        # before any library starts its thread pools (OpenMP reads these once, at load)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(spec.threads)
    start = time.perf_counter()
    try:
        runner = OPENERS[spec.opener](spec)
    except BaseException as e:  # reported to the parent: the row is skipped with this reason
        conn.send({"ok": False, "error": f"{type(e).__name__}: {e}"})
        conn.close()
        return
    describe = runner.describe()
    compute = runner.compute() if hasattr(runner, "compute") else None
    chw = getattr(runner, "chw", None)
    cuda_input = spec.device.startswith("cuda") and describe.get("backend") in ("pytorch", "tensorrt")
    conn.send({"ok": True, "describe": describe, "compute": compute, "load_s": time.perf_counter() - start,
               "rss_loaded_mib": rss_mib(), "input": "torch cuda tensor" if cuda_input else "numpy"})
    images: Any = None
    call = None
    while True:
        try:
            command, args = conn.recv()
        except EOFError:  # the parent went away
            break
        try:
            if command == "batch":
                images = _inputs(spec, runner, chw, args["batch"], cuda_input, args.get("size"))
                call = _caller(runner, images, cuda_input)
                reset_peak_rss()
                if cuda_input:
                    import torch

                    torch.cuda.reset_peak_memory_stats()
                conn.send({"ok": True})
            elif command == "run":
                assert call is not None, "send 'batch' before 'run'"
                latencies = []
                t0 = time.perf_counter()
                for _ in range(args["calls"]):
                    s = time.perf_counter()
                    call()
                    latencies.append(time.perf_counter() - s)
                conn.send({"ok": True, "latencies": latencies, "elapsed": time.perf_counter() - t0})
            elif command == "memory":
                peak, how = peak_rss_mib()
                reply = {"ok": True, "peak_rss_mib": peak, "rss_measure": how}
                if spec.device.startswith("cuda"):
                    import torch

                    reply["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
                conn.send(reply)
            elif command == "close":
                runner.close()
                conn.send({"ok": True})
                break
            else:
                conn.send({"ok": False, "error": f"unknown command {command!r}"})
        except Exception as e:  # e.g. out of memory at a large batch: this batch fails, the row goes on
            conn.send({"ok": False, "error": f"{type(e).__name__}: {e}"})
    conn.close()


def _inputs(spec: WorkerSpec, runner: Any, chw: Any, batch: int, cuda_input: bool, size: int | None = None) -> Any:
    from .. import artifact as artifact_view
    from ..images.synthetic import random_images

    if chw is None or not hasattr(runner, "preprocessing"):  # a peer: read the export's own manifest
        art = artifact_view.open(spec.artifact, verify=False)
        chw, prep = art.chw, art.preprocessing
    else:
        prep = runner.preprocessing
    images = random_images(batch, size or int(chw[1]), prep, seed=spec.seed, channels=int(chw[0]))
    if cuda_input:
        import torch

        return torch.from_numpy(images).to(spec.device)
    return images


def _caller(runner: Any, images: Any, cuda_input: bool):
    if not cuda_input:
        return lambda: runner.infer(images)
    import torch

    def call() -> None:  # a CUDA call is done when the device is, not when the launch returns
        runner.infer(images)
        torch.cuda.synchronize()

    return call


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, spec: WorkerSpec, ctx: Any) -> None:
        self.spec = spec
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, spec), name=f"bench-{spec.row}", daemon=True)
        self.process.start()
        child.close()  # the parent keeps only its end, so a dead worker shows as EOF
        self.ready: dict[str, Any] | None = None

    def wait_ready(self) -> dict[str, Any]:
        try:
            self.ready = self.conn.recv()
        except EOFError:
            self.ready = {"ok": False, "error": f"the worker died while opening (exit code {self._exitcode()})"}
        return self.ready

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        try:
            self.conn.send((command, args))
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return {"ok": False, "dead": True,
                    "error": f"the worker died (exit code {self._exitcode()}; out of memory?)"}

    def close(self) -> None:
        if self.process.is_alive():
            self.call("close")
            self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()

    def _exitcode(self) -> Any:
        self.process.join(timeout=5)
        return self.process.exitcode
