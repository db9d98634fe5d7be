"""The pre-head embedding: the class token after the final LayerNorm, the tensor the classifier head reads.

Every backend that gives it gives the same thing, float32 [batch, dim]:

- the PyTorch reference: ``VisionTransformer.features``, what ``forward`` hands to ``head``;
- an ONNX graph (ONNX Runtime, OpenVINO): the head's float input, exposed as an extra graph output in
  memory (the file on disk is unchanged). :func:`head_input` finds the Gemm (or MatMul + Add) that makes
  the logits output and walks back from its input through Cast, and through a DequantizeLinear <-
  QuantizeLinear pair, to the float tensor before quantization. An FP16 graph's value is returned as
  float32. In an INT8 graph whose head was smoothed (SmoothQuant, onnx/smoothquant.py), the final
  LayerNorm's scale and bias were divided by per-channel factors s and the head's weight rows multiplied
  by them, so the tensor the head reads is embedding / s: the factors are recovered exactly (float32
  rounding) from the parent FP32 graph's LayerNorm, s = gamma / gamma'; without that parent the
  embedding is refused, never returned scaled;
- a TensorRT engine: refused (:func:`refusal`), since the plan binds the logits only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import Artifact
from ..errors import ArtifactError, UsageError

EMBEDDING = "embedding"
LOGITS = "logits"
OUTPUTS = (LOGITS, EMBEDDING)  # what Runner.infer(images, outputs=...) can name
PASS_THROUGH = ("Cast", "Identity")  # ops that change no value the embedding is made of (FP16 casts included)


def refusal(artifact: Artifact, backend: str | None) -> str | None:
    """Why ``backend`` cannot give ``artifact``'s embedding, judged from the manifest alone (None: it can try).

    Bulk prediction asks this before it writes anything; the runners refuse with the same line.
    """
    if artifact.kind == "tensorrt" and backend in (None, "tensorrt"):
        parent = artifact.parent_dir
        onnx_hint = (f"run its parent ONNX graph instead ({parent}: vit-deploy predict {parent} ... --embedding, "
                     "backend 'onnxruntime')" if parent else "run the ONNX graph it was built from instead")
        return (f"{artifact.directory} is a TensorRT engine, whose only output is the logits binding, so it has no "
                f"embedding to give: {onnx_hint}, or its PyTorch reference (--backend pytorch)")
    return None


def check_available(artifact: Artifact, backend: str | None) -> None:
    """UsageError or ArtifactError unless ``backend`` can give ``artifact``'s embedding, without loading a runtime.

    For an ONNX graph this finds the head's input (and for a smoothed INT8 graph checks its parent), so a
    bulk run that could not write the column is refused before anything is written.
    """
    if reason := refusal(artifact, backend):
        raise UsageError(reason)
    if artifact.kind == "onnx" and backend != "pytorch":
        head_input(artifact)


@dataclass(frozen=True)
class HeadInput:
    """Where an ONNX graph's head reads its input, and how to turn that tensor into the embedding."""

    tensor: str  # the float tensor to expose as an extra output
    scales: np.ndarray | None = None  # per-channel factors undoing SmoothQuant (None: none folded)

    def value(self, raw: Any) -> np.ndarray:
        """The embedding, float32 [batch, dim], from the exposed tensor's value."""
        out = np.asarray(raw, dtype=np.float32)  # an FP16 graph's value comes back float32
        return out * self.scales if self.scales is not None else out


class ExposedHead:
    """A runner's head input, found and exposed once (thread safe): ``prepare(expose)`` runs ``expose`` (which
    makes the session or model that also outputs the head's input, and returns the :class:`HeadInput`) on the
    first call only. ``head`` is set after the new session exists, so a call that reads ``head`` first (as
    ``_run_outputs`` does) always finds the session giving it; calls already running finish on the old one."""

    def __init__(self) -> None:
        self.head: HeadInput | None = None
        self._lock = threading.Lock()

    def prepare(self, expose: Callable[[], HeadInput]) -> None:
        if self.head is None:
            with self._lock:
                if self.head is None:
                    self.head = expose()

    def ready(self) -> HeadInput:
        assert self.head is not None, "check_outputs prepares the embedding first"
        return self.head


def load_graph(path: Path):
    """The graph's structure; weights held in an external data file stay there (read one by one if needed)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, or an OSError
        raise ArtifactError(f"cannot read the ONNX graph {path} ({e}); re-create the artifact") from e


def head_input(artifact: Artifact, model: Any = None) -> HeadInput:
    """The head's float input in ``artifact``'s ONNX graph (``model``: that graph, when already loaded)."""
    model = model if model is not None else load_graph(artifact.model_file)
    graph = _Graph(model, artifact.model_file.parent)
    _, x = graph.head(artifact.output_name)
    tensor = graph.float_source(x)
    from ..onnx.smoothquant import folded_name

    # SmoothQuant folds a head's factors into the LayerNorm before it (its only fold for a LayerNorm's
    # readers), renaming the scale it replaces: no such LayerNorm, no factors to undo
    norm = graph.layernorm_before(tensor)
    if norm is None or norm.input[1] != folded_name(norm.name, 1):
        return HeadInput(tensor)
    return HeadInput(tensor, _unsmoothing(artifact, graph, norm))


def _unsmoothing(artifact: Artifact, graph: _Graph, norm: Any) -> np.ndarray:
    """The factors s with embedding = (what the head reads) * s, from the parent FP32 graph's final LayerNorm."""
    from .. import artifact as artifact_view
    from ..artifact import MANIFEST_NAME, sha256_file

    parent_dir = artifact.parent_dir

    def refused(why: str) -> UsageError:
        return UsageError(f"{artifact.directory}: SmoothQuant scales are folded into this graph's final LayerNorm, so "
                          "the tensor its head reads is the embedding divided by them per channel; undoing them needs "
                          f"the parent FP32 graph, which {why}: put it back, or take the embedding from the PyTorch "
                          "reference (backend 'pytorch')")

    if parent_dir is None or not (parent_dir / MANIFEST_NAME).is_file():
        raise refused(f"is not at {parent_dir}" if parent_dir else "the manifest does not name")
    parent = artifact_view.open(parent_dir, verify=False)
    path = parent.model_file
    if not path.is_file() or sha256_file(path) != artifact.parent.get("sha256"):
        raise refused(f"changed since this graph was made from it ({path})")
    origin = _Graph(load_graph(path), path.parent)
    twin = origin.nodes.get(norm.name)
    if twin is None or twin.op_type != "LayerNormalization":
        raise refused(f"has no LayerNorm named {norm.name} ({path})")
    gamma, beta = graph.array(norm.input[1]), graph.array(norm.input[2])
    gamma0, beta0 = origin.array(twin.input[1]), origin.array(twin.input[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        # where both of a channel's values are 0, its output is 0 whatever s is: 1 is as good as any
        s = np.where(gamma != 0, gamma0 / gamma, np.where(beta != 0, beta0 / beta, 1.0))
        both = (gamma != 0) & (beta != 0) & (np.abs(beta0) > 1e-6)
        agree = np.allclose(s[both], (beta0 / beta)[both], rtol=1e-3) if both.any() else True
    if not (np.isfinite(s).all() and (s > 0).all() and agree):
        raise refused(f"does not match it: its LayerNorm {norm.name} is not this one unscaled ({path})")
    return s.astype(np.float32)


class _Graph:
    """Producers, nodes and constants of one ONNX graph, for walking back from a tensor."""

    def __init__(self, model: Any, base_dir: Path) -> None:
        self.model, self.base_dir = model, base_dir
        self.producers = {o: n for n in model.graph.node for o in n.output}
        self.nodes = {n.name: n for n in model.graph.node}
        self.initializers = {t.name: t for t in model.graph.initializer}

    def head(self, output: str) -> tuple[Any, str]:
        """(the head node, its activation input) for the graph output ``output``."""
        node = self.producers.get(self._through(output))
        op = node.op_type if node is not None else "no"
        if op == "Add":  # MatMul + bias
            matmuls = [self.producers.get(self._through(i)) for i in node.input]
            matmuls = [m for m in matmuls if m is not None and m.op_type == "MatMul"]
            node = matmuls[0] if len(matmuls) == 1 else None
        elif op == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            node = None
        if node is None or node.op_type not in ("Gemm", "MatMul") or not self.is_constant(node.input[1]):
            raise ArtifactError(f"the graph output {output!r} is not made by a classifier head (a Gemm or MatMul with "
                                f"constant weights; found {op}), so this graph has no embedding to expose")
        return node, node.input[0]

    def _through(self, name: str) -> str:
        while (node := self.producers.get(name)) is not None and node.op_type in PASS_THROUGH:
            name = node.input[0]
        return name

    def float_source(self, name: str) -> str:
        """Back through Cast and Quantize -> Dequantize pairs to the float tensor before quantization."""
        while True:
            name = self._through(name)
            node = self.producers.get(name)
            quantize = self.producers.get(node.input[0]) if node is not None and node.op_type == "DequantizeLinear" \
                else None
            if quantize is None or quantize.op_type != "QuantizeLinear":
                return name
            name = quantize.input[0]

    def constant_source(self, name: str) -> str:
        """A weight's initializer, back through Cast and DequantizeLinear (a quantized weight)."""
        while (node := self.producers.get(name)) is not None and node.op_type in (*PASS_THROUGH, "DequantizeLinear"):
            name = node.input[0]
        return name

    def is_constant(self, name: str) -> bool:
        source = self.constant_source(name)
        node = self.producers.get(source)
        return source in self.initializers or (node is not None and node.op_type == "Constant")

    def layernorm_before(self, name: str) -> Any:
        """The LayerNormalization whose output reaches ``name`` through casts and token Gathers, or None."""
        from ..onnx.smoothquant import _channel_preserving

        while (node := self.producers.get(name)) is not None:
            if node.op_type == "LayerNormalization":
                return node
            if node.op_type not in PASS_THROUGH and not _channel_preserving(node):
                return None
            name = node.input[0]
        return None

    def array(self, name: str) -> np.ndarray:
        if name not in self.initializers:
            raise ArtifactError(f"{name} is not a stored weight of the graph; re-create the artifact")
        from onnx import numpy_helper

        # base_dir: a weight kept in an external data file is read from beside the graph
        return numpy_helper.to_array(self.initializers[name], base_dir=str(self.base_dir)).astype(np.float64)
