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
The embedding: the first call asking for it compiles the graph once more with the head's input
(embedding.py) added as an output (``Model.add_outputs``), and that model then serves every call.
"""

from __future__ import annotations

import threading
from typing import Any

from ..artifact import Artifact
from ..errors import ArtifactError, UsageError
from . import embedding
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
        self._ov = ov
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        hint = inference_precision(artifact)
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        self.config = config
        self.compiled = self._compile()
        self._local = threading.local()
        self._exposed = embedding.ExposedHead()

    def _compile(self, extra_output: str | None = None):
        ov, path = self._ov, self.artifact.model_file
        try:
            core = ov.Core()
            if extra_output is None:
                return core.compile_model(str(path), "CPU", self.config)
            model = core.read_model(str(path))
            model.add_outputs([extra_output])  # by tensor name: the ONNX graph's names are kept
            return core.compile_model(model, "CPU", self.config)
        except RuntimeError as e:
            raise ArtifactError(
                f"OpenVINO {ov.__version__} cannot load {path}: {str(e).strip().splitlines()[0]}; "
                "re-create the artifact, or run it with backend 'onnxruntime'"
            ) from e

    def _request(self):
        compiled = self.compiled
        if getattr(self._local, "compiled", None) is not compiled:  # none yet, or one of the model before the swap
            self._local.request, self._local.compiled = compiled.create_infer_request(), compiled
        return self._local.request

    def _run(self, batch: Any) -> Any:
        result = self._request().infer({0: as_numpy(batch)})
        return like_input(result[0].copy(), batch)  # copy: the request reuses its output buffer

    def _prepare_embedding(self) -> None:
        self._exposed.prepare(self._expose_head)

    def _expose_head(self) -> embedding.HeadInput:
        head = embedding.head_input(self.artifact)
        self.compiled = self._compile(head.tensor)
        return head

    def _run_outputs(self, batch: Any, names: tuple[str, ...]) -> dict[str, Any]:
        if embedding.EMBEDDING not in names:
            return {embedding.LOGITS: self._run(batch)}
        head = self._exposed.ready()  # before the compiled model (embedding.ExposedHead)
        result = self._request().infer({0: as_numpy(batch)})
        # the added output comes after the graph's own; value() copies it out of the request's buffer
        found = {embedding.LOGITS: result[0].copy(), embedding.EMBEDDING: head.value(result[1]).copy()}
        return {n: like_input(found[n], batch) for n in names}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "openvino": openvino_version(), "config": self.config}

    @property
    def label(self) -> str:
        return f"openvino {openvino_version()} CPU"

    def _release(self) -> None:
        self._local = threading.local()
        del self.compiled
