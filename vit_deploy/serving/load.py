"""The load test: N concurrent clients x M requests against a Triton model (``vit-deploy triton-load``).

Each client is a thread with its own connection sending batches back to back (closed loop).
Reported: throughput (images/s), latency p50/p90/p99, errors, and the server's own statistics
before and after: ``inference_count`` (images) over ``execution_count`` (model executions) is the
mean batch the dynamic batcher formed; > the request batch means requests were batched together.
Optionally the same batches run through ``vit_deploy.runtime`` directly, in this process, for the
ratio Triton / direct (what serving costs, or gains from batching).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import UsageError
from .client import TritonClient


def _counts(stats: dict[str, Any]) -> tuple[int, int]:
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def run_load(url: str, model: str, *, protocol: str = "http", clients: int = 8, requests: int = 50,
             batch: int = 1, seed: int = 0, artifact: str | None = None, threads: int | None = None,
             warmup: int = 2) -> dict[str, Any]:
    if clients < 1 or requests < 1 or batch < 1 or (threads is not None and threads < 1):
        raise UsageError("--clients, --requests, --batch and --threads must be >= 1")
    probe = TritonClient(url, model, protocol=protocol)
    max_batch = int(probe.config.get("max_batch_size", 0))  # 0: the model has no batch dimension
    if max_batch and batch > max_batch:  # the server would refuse every request (and the images could be huge)
        probe.close()
        raise UsageError(f"--batch {batch} exceeds model {model}'s max_batch_size {max_batch}; "
                         f"give --batch 1..{max_batch}")
    images = np.random.default_rng(seed).standard_normal((batch, *probe.input_dims), dtype=np.float32)
    for _ in range(warmup):  # first calls pay for lazy initialisation; not what a steady server costs
        probe.infer(images)
    before = _counts(probe.statistics())

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one_client(_: int) -> None:
        with TritonClient(url, model, protocol=protocol) as client:
            for _ in range(requests):
                t0 = time.perf_counter()
                try:
                    client.infer(images)
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                except Exception as e:  # counted and reported, never fatal to the other clients
                    with lock:
                        errors.append(str(e))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - t0
    after = _counts(probe.statistics())
    probe.close()

    inferences, executions = after[0] - before[0], after[1] - before[1]
    lat_ms = np.array(latencies) * 1e3
    result: dict[str, Any] = {
        "model": model, "protocol": protocol, "clients": clients, "requests_per_client": requests, "batch": batch,
        "input": [batch, *probe.input_dims], "completed": len(latencies), "errors": len(errors),
        "error_examples": list(dict.fromkeys(errors))[:3], "wall_s": wall,
        "throughput_img_s": len(latencies) * batch / wall,
        "latency_ms": {f"p{q}": float(np.percentile(lat_ms, q)) if len(lat_ms) else None for q in (50, 90, 99)},
        "server": {"inference_count": inferences, "execution_count": executions,
                   "mean_batch": inferences / executions if executions else None},
    }
    if artifact is not None:
        result["direct"] = direct_throughput(artifact, images, n=clients * requests, threads=threads)
        result["ratio_triton_over_direct"] = result["throughput_img_s"] / result["direct"]["throughput_img_s"]
    return result


def direct_throughput(artifact: str, images: np.ndarray, *, n: int, threads: int | None = None) -> dict[str, Any]:
    """The same ``n`` batches through vit_deploy.runtime in this process, one after another."""
    from .. import runtime

    with runtime.open(artifact, threads=threads) as runner:
        runner.infer(images)
        t0 = time.perf_counter()
        for _ in range(n):
            runner.infer(images)
        wall = time.perf_counter() - t0
    return {"calls": n, "wall_s": wall, "throughput_img_s": n * len(images) / wall}
