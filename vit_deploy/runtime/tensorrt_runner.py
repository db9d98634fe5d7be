"""TensorRT engines (``model.<precision>.plan``) behind the runner interface.

Before the plan is deserialized, the manifest's record of the build (TensorRT version, compute
capability, compatibility flags) is checked against this machine, because TensorRT itself has
no preflight: a mismatching plan either fails to deserialize with a terse log line or is
refused here with both sides named. The engine wrapper (vit_deploy/trt/engine.py) owns the
device buffers and the lock that makes concurrent calls safe. A plan binds the logits only, so
the embedding is refused, naming the ONNX graph and the PyTorch reference that give it.
"""

from __future__ import annotations

from typing import Any

from ..artifact import Artifact
from ..errors import EngineUnavailable, UsageError
from . import embedding
from .base import Runner


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, artifact: Artifact, *, max_batch: int | None = None) -> None:
        super().__init__(artifact, max_batch)
        from ..trt.probe import unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            raise EngineUnavailable(
                f"cannot run the engine in {artifact.directory}: {reason}. Its ONNX parent ({artifact.parent_dir}) "
                "runs anywhere with backend 'onnxruntime'"
            )
        from ..trt.plan import TrtEngine, check_compatible

        recorded = artifact.section("tensorrt")
        parent = artifact.parent_dir
        check_compatible(recorded, rebuild_from=str(parent) if parent else None)
        # a version-compatible plan embeds the lean runtime as host code; TensorRT loads it only when allowed
        host_code = bool(recorded.get("version_compatible"))
        self.engine = TrtEngine(artifact.model_file, allow_host_code=host_code)
        self.min_batch = self.engine.min_batch
        self.max_batch = min(max_batch or self.engine.max_batch, self.engine.max_batch)

    def _run(self, batch: Any) -> Any:
        return self.engine.infer(batch)

    def _prepare_embedding(self) -> None:
        raise UsageError(embedding.refusal(self.artifact, self.backend))

    def describe(self) -> dict[str, Any]:
        trt = self.artifact.section("tensorrt")
        return {**super().describe(), "tensorrt": trt.get("version"), "gpu": trt.get("gpu")}

    @property
    def label(self) -> str:
        trt = self.artifact.section("tensorrt")
        return (f"tensorrt {trt.get('version')} on {trt.get('gpu')} "
                f"(compute capability {trt.get('compute_capability')})")

    def _release(self) -> None:
        self.engine.close()
