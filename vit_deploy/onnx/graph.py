"""Small facts about an ONNX graph and saving it (inline or with external data)."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

# Protobuf cannot serialize a message of 2 GiB or more, so larger models keep their weights in a
# side file. l16 (~1.2 GB in FP32) stays inline; h14 (~2.5 GB) goes external.
PROTOBUF_LIMIT = 2**31 - 1


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer data held in the proto (raw_data or typed fields)."""
    total = 0
    for t in model.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            n = 1
            for d in t.dims:
                n *= d
            total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def save_model(model: onnx.ModelProto, path: Path, external_threshold: int | None = None) -> list[str]:
    """Save ``model`` to ``path``; returns the names of the files written (relative to its folder).

    Weights go to one ``<name>.data`` file beside it when they would push the proto past
    ``external_threshold`` (default: the protobuf limit, with headroom for the graph itself).
    """
    limit = PROTOBUF_LIMIT if external_threshold is None else external_threshold
    if weight_bytes(model) + (64 << 20) < limit:
        onnx.save_model(model, str(path))
        return [path.name]
    data_name = path.name + ".data"
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=data_name, size_threshold=1024,
    )
    return [path.name, data_name]


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]


def io_signature(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Graph inputs/outputs as manifest entries: name, shape (symbolic dims as names), dtype."""
    initializers = {t.name for t in model.graph.initializer}

    def entry(v: onnx.ValueInfoProto) -> dict[str, Any]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        return {"name": v.name, "shape": _dims(v), "dtype": dtype}

    return {
        "inputs": [entry(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [entry(v) for v in model.graph.output],
    }


def has_symbolic_batch(model: onnx.ModelProto, name: str = "batch") -> bool:
    sig = io_signature(model)
    return all(e["shape"] and e["shape"][0] == name for e in sig["inputs"] + sig["outputs"])


def exposing(model: onnx.ModelProto, tensors: Sequence[str]) -> bytes:
    """The model, serialized with ``tensors`` as extra graph outputs (type left open: ONNX Runtime
    infers it). The outputs are added and removed again rather than copying a 350 MB proto.

    Calibration reads intermediate tensors this way, and the runtime the pre-head embedding; the
    file on disk is never changed."""
    present = {o.name for o in model.graph.output}
    extra = [name for name in dict.fromkeys(tensors) if name not in present]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in extra)
    try:
        return model.SerializeToString()
    finally:
        del model.graph.output[len(model.graph.output) - len(extra):]


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its nodes in dependency order (ONNX requires it; some converters
    append the Cast nodes they insert at the end of the list). Stable: keeps the original
    order wherever dependencies allow."""
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        still = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                still.append(node)
        if len(still) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input near node {still[0].name!r}")
        pending = still
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    return out
