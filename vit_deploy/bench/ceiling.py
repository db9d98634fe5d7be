"""The machine's matrix-multiply ceiling, measured now, per precision.

"How far from the physical limit" needs the limit of *this* machine under *this* load with
*these* threads, not a datasheet number: a 2-core slice of a shared host reaches a fraction of
its socket's peak. So the ceiling is measured in the same run as the backends, on GEMM shapes
of the model being benchmarked (the MLP's fc1 and fc2 at a batch of tokens), best of several
timed blocks:

- CPU FP32 and BF16: ``torch.matmul`` (oneDNN/MKL; BF16 uses AMX where the CPU has it).
  FP16 rows on a CPU are held to the BF16 ceiling: it is the CPU's 16-bit matrix rate.
- CPU INT8: ONNX Runtime ``MatMulInteger`` (MLAS, VNNI/AMX) on a one-node graph made with
  ``onnx.helper``, with uint8 and int8 activations (MLAS is fast for u8 x s8 only on x86;
  the best of the two is the ceiling and both are recorded).
- CUDA: ``torch.matmul`` in FP32 (TF32 off), TF32, FP16 and BF16, ``torch._int_mm`` for INT8,
  synchronised around each timed block.

Run it in a fresh process (``run.py`` does) so thread settings do not leak into the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ..specs import ModelConfig

CPU_PRECISIONS = ("fp32", "bf16", "int8")
CUDA_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
# batch of images whose tokens make the GEMM's M: large enough to be compute-bound
CPU_TOKEN_BATCH, CUDA_TOKEN_BATCH = 8, 64


def ceiling_key(compute: str, device: str) -> str:
    """Which measured ceiling a row computing in ``compute`` is held to on ``device``."""
    if device == "cpu" and compute == "fp16":
        return "bf16"  # no FP16 matrix unit on x86 CPUs before AMX-FP16; BF16 is the 16-bit rate
    return compute


def gemm_shapes(cfg: ModelConfig, device: str = "cpu") -> list[tuple[int, int, int]]:
    """(M, K, N) of the model's MLP GEMMs at a batch of 8 (CPU) or 64 (CUDA) images."""
    m = cfg.num_tokens * (CUDA_TOKEN_BATCH if device.startswith("cuda") else CPU_TOKEN_BATCH)
    return [(m, cfg.dim, cfg.mlp_dim), (m, cfg.mlp_dim, cfg.dim)]


def measure_ceilings(
    precisions: Sequence[str], shapes: Sequence[tuple[int, int, int]], threads: int | None = None,
    device: str = "cpu", min_time: float = 0.3, repeats: int = 3,
) -> dict[str, Any]:
    """``{precision: {"gflops", "shape", "method", "runs": [{"shape", "gflops"}, ...]}}``.

    ``gflops`` is the best over shapes and timed blocks (each at least ``min_time`` seconds). A
    precision this machine cannot measure gets ``{"gflops": None, "error": ...}`` instead.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    out: dict[str, Any] = {}
    for precision in precisions:
        runs: list[dict[str, Any]] = []
        try:
            for m, k, n in shapes:
                for variant, fn in _gemms(precision, m, k, n, device, threads):
                    runs.append({"shape": [m, k, n], "variant": variant,
                                 "gflops": _best_rate(fn, 2 * m * k * n, min_time, repeats, cuda) / 1e9})
        except Exception as e:  # an unmeasurable precision is reported, not fatal
            out[precision] = {"gflops": None, "error": f"{type(e).__name__}: {e}".strip()}
            continue
        best = max(runs, key=lambda r: r["gflops"])
        out[precision] = {
            "gflops": round(best["gflops"], 2),
            "shape": best["shape"],
            "method": best["variant"] if cuda else f"{best['variant']}, {_threads_text(threads)}",
            "runs": [{**r, "gflops": round(r["gflops"], 2)} for r in runs],
        }
    return out


def _threads_text(threads: int | None) -> str:
    import torch

    n = threads or torch.get_num_threads()
    return f"{n} thread" + ("s" if n != 1 else "")


def _best_rate(fn: Callable[[], Any], flops: int, min_time: float, repeats: int, cuda: bool) -> float:
    """FLOP/s of the fastest of ``repeats`` blocks of back-to-back calls, each >= ``min_time`` s."""
    sync = _cuda_sync if cuda else (lambda: None)
    for _ in range(2):  # warm-up: first calls pick kernels, fault in pages, start threads
        fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    per_call = max(time.perf_counter() - start, 1e-7)
    calls = max(1, round(min_time / per_call))
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = max(best, calls * flops / (time.perf_counter() - start))
    return best


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def _gemms(precision: str, m: int, k: int, n: int, device: str, threads: int | None):
    """(label, zero-argument call) pairs that each compute one [m, k] x [k, n] product."""
    import torch

    if precision == "int8":
        if device.startswith("cuda"):
            a = torch.randint(-127, 127, (m, k), dtype=torch.int8, device=device)
            b = torch.randint(-127, 127, (k, n), dtype=torch.int8, device=device)
            yield "torch._int_mm int8 x int8 -> int32", lambda: torch._int_mm(a, b)
        else:
            yield from _ort_matmul_integer(m, k, n, threads)
        return
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if precision == "tf32" and not device.startswith("cuda"):
        raise ValueError("TF32 is a CUDA precision")
    if device.startswith("cuda"):
        # FP32 means true FP32: TF32 is measured as its own precision
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)

    def call() -> Any:
        with torch.inference_mode():
            return torch.matmul(a, b)

    yield f"torch.matmul {precision}", call


def _ort_matmul_integer(m: int, k: int, n: int, threads: int | None):
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (k, n), dtype=np.int8)
    for name, a_type, a_np in (("uint8", TensorProto.UINT8, np.uint8), ("int8", TensorProto.INT8, np.int8)):
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "ceiling",
            [helper.make_tensor_value_info("A", a_type, [m, k])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
            [numpy_helper.from_array(weights, "B")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        a = rng.integers(0, 128, (m, k)).astype(a_np)
        yield (f"onnxruntime {ort.__version__} MatMulInteger {name} x int8",
               lambda s=session, x=a: s.run(None, {"A": x}))
