"""ONNX graphs on OpenVINO (CPU): vit-deploy's fast CPU path.

Why this backend: on x86 CPUs with VNNI/AMX, OpenVINO runs the INT8 Q/DQ graph that
``build-engine --int8`` writes (the same file TensorRT consumes) with fused integer GEMMs, and
was measured the fastest accurate CPU path (docs/benchmarks.md, "Fast CPU path"): ahead of
PyTorch bfloat16 autocast and of OpenVINO's own default (bfloat16) run of the FP32 graph.

Precision of the float ops (``INFERENCE_PRECISION_HINT``), measured on b16@224, batch 8, 2 threads:
the CPU-target INT8 graph (attention float) runs fastest with OpenVINO's default (bf16 on AMX:
62.8 img/s vs 48.8 with f32), while an INT8 graph with quantized attention runs faster with f32
(54.3 vs 47.4): bf16 conversions around the quantized attention cost more than they save. FP32
graphs run in f32, so ``fp32`` still means FP32; FP16 graphs get OpenVINO's default.
Thread safety: the compiled model is shared and each thread
gets its own infer request (OpenVINO's requests are not thread safe, compiled models are).
"""

from __future__ import annotations

import threading
from typing import Any

from ..artifact import Artifact
from ..errors import ArtifactError, UsageError
from .base import Runner, as_numpy, like_input


def inference_precision(artifact: Artifact) -> str | None:
    """OpenVINO's precision for the float ops of this artifact (None: OpenVINO's default); see above."""
    if artifact.precision == "fp32":
        return "f32"
    if artifact.precision == "int8":
        attention_float = bool(artifact.section("precision_policy").get("excluded_nodes"))
        return None if attention_float else "f32"
    return None


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(
        self, artifact: Artifact, *, threads: int | None = None, max_batch: int | None = None,
    ) -> None:
        super().__init__(artifact, max_batch)
        try:
            import openvino as ov
        except ImportError:
            raise UsageError(
                "backend 'openvino' needs the openvino package: pip install 'vit-deploy[cpu]' (or pip install openvino)"
            ) from None
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        hint = inference_precision(artifact)
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        path = artifact.model_file
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as e:
            raise ArtifactError(
                f"OpenVINO {ov.__version__} cannot load {path}: {str(e).strip().splitlines()[0]}; "
                "re-create the artifact, or run it with backend 'onnxruntime'"
            ) from e
        self.config = config
        self._local = threading.local()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _run(self, batch: Any) -> Any:
        result = self._request().infer({0: as_numpy(batch)})
        return like_input(result[0].copy(), batch)  # copy: the request reuses its output buffer

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "openvino": openvino_version(), "config": self.config}

    @property
    def label(self) -> str:
        return f"openvino {openvino_version()} CPU"

    def _release(self) -> None:
        self._local = threading.local()
        del self.compiled
