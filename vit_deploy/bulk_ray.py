"""The thin adapter from Ray Data onto :class:`vit_deploy.bulk.BatchPredictor`: ``predict --source ... --ray ADDRESS``.

The image ids become a Ray dataset; ``map_batches`` runs :class:`~vit_deploy.bulk.BatchPredictor`
in a pool of actors (one runner each: a CPU slot of ``threads`` CPUs for ONNX graphs, one GPU for
TensorRT engines), and the results stream back to this process, which writes the Parquet parts
(:class:`~vit_deploy.bulk.PartWriter`). Ray Data restarts an actor whose process died and retries
its batch (``max_restarts=-1``, ``max_task_retries=-1`` by default for actor pools); the writer
keeps one row per image, so a retried batch is never written twice.

The workers import vit_deploy and read the artifact folder and the images by the same paths as
this process: on a real cluster, install vit-deploy on every node and keep the artifact and the
images on shared storage (or images on ``s3://``).
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import sys
from collections.abc import Callable
from typing import Any

from .errors import ArtifactError, UsageError


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the extra: ray[data] brings pandas/pyarrow with it
    except ImportError as e:
        raise UsageError(f"--ray needs Ray Data ({e}); pip install 'vit-deploy[scale]'") from e
    return ray


def connect(ray, address: str) -> None:
    """``ray.init(address)``, failing in one line (and quickly) when nothing answers there."""
    match = re.match(r"^(?:ray://)?([^:/]+):(\d+)$", address)
    if match:  # Ray would retry for a minute or more before giving up: probe the port first
        try:
            with socket.create_connection((match[1], int(match[2])), timeout=5):
                pass
        except OSError as e:
            raise UsageError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start one (ray start "
                             "--head) or pass --ray HOST:PORT of its head node (GCS port, 6379 by default)") from e
    elif address != "auto":
        raise UsageError(f"--ray {address!r}: give HOST:PORT of the head node (or ray://HOST:PORT, or auto)")
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"cannot join the Ray cluster at {address} ({e}); check the address and that its Ray "
                         "version matches this one") from e


def run_on_ray(opts, kind: str, todo: list[str], on_result: Callable[[Any], None], predictor: type,
               predictor_kwargs: Callable[[int], dict[str, Any]]) -> str:
    """Predict ``todo`` on the cluster at ``opts.ray_address``; ``on_result`` gets each result table as it arrives.

    ``predictor``: the per-batch class each actor runs (``bulk.BatchPredictor``), made with
    ``predictor_kwargs(threads)``: this module only maps it onto Ray, and knows nothing of what it predicts.
    """
    ray = import_ray()
    # Ray prints worker deaths and cluster messages on stdout; stdout holds only our summary (--json)
    with contextlib.redirect_stdout(sys.stderr):
        connect(ray, opts.ray_address)
        try:
            return _run(ray, opts, kind, todo, on_result, predictor, predictor_kwargs)
        except ray.exceptions.RayError as e:  # a batch failed for good (e.g. the store is down): one line
            cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"the Ray run failed ({cause}); the parts written so far are kept: fix that and "
                                "run the same command again to predict the rest") from e
        finally:
            ray.shutdown()


def _run(ray, opts, kind: str, todo: list[str], on_result: Callable[[Any], None], predictor: type,
         predictor_kwargs: Callable[[int], dict[str, Any]]) -> str:
    gpu = kind == "tensorrt"
    threads = opts.threads or 1
    resources = ray.cluster_resources()
    slots = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1) // threads)
    if slots < 1:
        raise UsageError(f"the Ray cluster at {opts.ray_address} has no {'GPU' if gpu else 'CPU'} for a worker "
                         f"({resources}); add nodes, or lower --threads")
    workers = opts.workers or slots
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    blocks = max(1, min(len(todo), max(2 * workers, math.ceil(len(todo) / opts.batch_size))))
    ds = ray.data.from_items([{"image": image} for image in todo], override_num_blocks=blocks)
    slot = {"num_gpus": 1} if gpu else {"num_cpus": threads}
    ds = ds.map_batches(
        predictor, batch_size=opts.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_kwargs=predictor_kwargs(threads),
        **slot)
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        on_result(table)
    return f"Ray at {opts.ray_address} ({workers} workers)"
