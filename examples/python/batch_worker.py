"""A batching worker: requests from many producers, one runner, batches up to a size or a delay.

    from batch_worker import BatchWorker
    with BatchWorker("artifacts/b16-384-int8-cpu", backend="openvino") as worker:
        logits = worker.submit(image).result()        # image: float32 [3, H, W], preprocessed

This is the pattern Triton's dynamic batcher implements (collect requests for a few
milliseconds, run them as one batch); use it when you embed a model in your own process and
several threads call it. Batches above the artifact's limit are split by the runner itself.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np

from vit_deploy import runtime


class BatchWorker:
    def __init__(self, artifact: str, backend: str | None = None, max_batch: int = 8, max_delay_ms: float = 5.0):
        self.runner = runtime.open(artifact, backend)
        self.max_batch, self.max_delay = max_batch, max_delay_ms / 1000
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray) -> Future:
        """Queue one preprocessed image; the future resolves to its logits [classes]."""
        future: Future = Future()
        self._queue.put((image, future))
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            try:  # gather more requests for up to max_delay, up to max_batch
                while len(batch) < self.max_batch:
                    nxt = self._queue.get(timeout=self.max_delay)
                    if nxt is None:
                        self._queue.put(None)
                        break
                    batch.append(nxt)
            except queue.Empty:
                pass
            try:
                logits = self.runner.infer(np.stack([image for image, _ in batch]))
            except Exception as e:  # a bad request fails its batch's futures, not the worker
                for _, future in batch:
                    future.set_exception(e)
                continue
            for (_, future), row in zip(batch, logits, strict=True):
                future.set_result(row)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.runner.close()

    def __enter__(self) -> BatchWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
