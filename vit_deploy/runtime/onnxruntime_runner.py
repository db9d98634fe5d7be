"""ONNX graphs (FP32, FP16, INT8, FP8) on ONNX Runtime: CPU, CUDA or TensorRT execution provider.

``InferenceSession.run`` is thread-safe (ONNX Runtime's documented guarantee), so one session
serves every thread. The first call that asks for the embedding replaces it, once, by a session
over the same graph with the head's input exposed as a second output (embedding.py): the logits
are computed exactly as before, and calls already running finish on the old session.
"""

from __future__ import annotations

from typing import Any

from ..artifact import Artifact
from ..errors import ArtifactError, UsageError
from ..onnx.qdq import EXACT_QDQ_OPTION
from . import embedding
from .base import Runner, as_numpy, like_input

# provider option -> ONNX Runtime providers in priority order (CPU last: ORT's own fallback for
# ops a GPU provider does not take)
PROVIDERS = {  # the keys are specs.ORT_PROVIDERS
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# A graph given as bytes finds the external data file its weights name (a graph over 2 GB) in this folder.
EXTERNAL_DATA_FOLDER_OPTION = "session.model_external_initializers_file_folder_path"


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self, artifact: Artifact, *, provider: str = "cpu", threads: int | None = None,
        max_batch: int | None = None, exact_qdq: bool = False,
    ) -> None:
        super().__init__(artifact, max_batch)
        import onnxruntime as ort

        if provider not in PROVIDERS:
            raise UsageError(f"unknown ONNX Runtime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        available = ort.get_available_providers()
        wanted = PROVIDERS[provider][0]
        if wanted not in available:
            raise UsageError(
                f"ONNX Runtime {ort.__version__} here has no {wanted} (available: {', '.join(available)}); "
                + ("install onnxruntime-gpu on a CUDA host" if provider != "cpu" else "reinstall onnxruntime")
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if exact_qdq:
            options.add_session_config_entry(EXACT_QDQ_OPTION, "1")
        self.provider = provider
        self._options, self._providers = options, [p for p in PROVIDERS[provider] if p in available]
        self.session = self._session(str(artifact.model_file))
        self._exposed = embedding.ExposedHead()

    def _session(self, model: str | bytes):
        import onnxruntime as ort

        path = self.artifact.model_file
        try:
            return ort.InferenceSession(model, self._options, providers=self._providers)
        except Exception as e:  # ORT raises its own pybind types (InvalidProtobuf, Fail, ...) for bad files
            raise ArtifactError(
                f"ONNX Runtime cannot load {path}: {str(e).strip().splitlines()[0]}; "
                "the file is corrupt or truncated: re-create the artifact"
            ) from e

    def _run(self, batch: Any) -> Any:
        logits = self.session.run([self.output_name], {self.input_name: as_numpy(batch)})[0]
        return like_input(logits, batch)

    def _prepare_embedding(self) -> None:
        self._exposed.prepare(self._expose_head)

    def _expose_head(self) -> embedding.HeadInput:
        from ..onnx.graph import exposing

        path = self.artifact.model_file
        graph = embedding.load_graph(path)
        head = embedding.head_input(self.artifact, graph)
        # the bytes hold no weight kept in an external data file: ORT reads it from beside the graph
        self._options.add_session_config_entry(EXTERNAL_DATA_FOLDER_OPTION, str(path.parent))
        self.session = self._session(exposing(graph, [head.tensor]))
        return head

    def _run_outputs(self, batch: Any, names: tuple[str, ...]) -> dict[str, Any]:
        if embedding.EMBEDDING not in names:
            return {embedding.LOGITS: self._run(batch)}
        head = self._exposed.ready()  # before the session (embedding.ExposedHead)
        logits, raw = self.session.run([self.output_name, head.tensor], {self.input_name: as_numpy(batch)})
        found = {embedding.LOGITS: logits, embedding.EMBEDDING: head.value(raw)}
        return {n: like_input(found[n], batch) for n in names}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.session.get_providers()}

    @property
    def label(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} {self.session.get_providers()[0]}"

    def _release(self) -> None:
        del self.session
