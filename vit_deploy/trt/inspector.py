"""What TensorRT made of the graph: the engine inspector's JSON, summarised per layer and per precision.

``engine_summary`` deserializes a plan and asks ``engine.create_engine_inspector()`` for the
engine information and each layer's information as JSON (``LayerInformationFormat.JSON``). The
detail depends on the ``ProfilingVerbosity`` the engine was built with: ``build.py`` uses
DETAILED, which lists every layer's type and its input/output tensors with their types and
formats; with LAYER_NAMES_ONLY only names come back and the precisions read "unknown". With a
dynamic batch the tensor details need an execution context with concrete shapes attached to the
inspector; ``engine_summary`` attaches one at the profile's opt shape.

The JSON schema changed in TensorRT 11 (IEngineInspector migration page): the engine's flat
"Bindings" list of names became "I/O Tensors", a list of objects with "Name", "IOMode",
"DataType", "Dimensions", ...; and the combined 10.x "Format/Datatype" string of each layer
tensor was split into separate fields. NVIDIA's own 11.x tooling spells the type field
"Datatype" (the trt-perf-analysis schema in the NVIDIA/TensorRT repository,
``.agents/skills/trt-perf-analysis/schemas/analyze-data.schema.json``: a tensor has "Name",
"Datatype", "Dimensions", "Format", "StrideOrder", "Strides"; its report reads the value
case-insensitively: "half", "float", "int8", ...), the migration page's I/O tensors "DataType",
and 10.x "Format/Datatype" (e.g. "Row major linear FP16 format"). ``tensor_precision`` reads
the type key whatever its case, with or without the "Format/" prefix, and only then falls
back to parsing "Format".

Pages:
- https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-IEngineInspector.html
- https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/python-api/infer/Core/EngineInspector.html
- https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/inference-library/engine-tools.html
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from . import LogCollector, import_tensorrt, trt_logger
from .plan import deserialize, read_plan

# Most reduced first: a layer counts under the lowest precision among its inputs, the precision
# its kernel computes in (an INT8 GEMM reads int8 and may write fp16; a DequantizeLinear reads int8).
PRECISION_ORDER = ("fp4", "int4", "fp8", "int8", "uint8", "fp16", "bf16", "fp32", "int32", "int64", "bool")


def _type_text(tensor: Mapping[str, Any]) -> str:
    """The tensor's data-type string: a "Datatype" key in any case, with or without "Format/", else "Format"."""
    by_key = {str(k).lower(): v for k, v in tensor.items()}
    for key in ("datatype", "format/datatype"):
        if by_key.get(key):
            return str(by_key[key])
    return str(by_key.get("format") or "")


def tensor_precision(tensor: Mapping[str, Any]) -> str:
    """"fp16", "int8", ... for one tensor entry of the inspector JSON (11.x or 10.x schema), else "unknown"."""
    s = _type_text(tensor).lower()
    if not s or s.startswith("n/a"):
        return "unknown"  # 10.x prints "N/A due to dynamic shapes" for layers sized at run time
    checks = (  # order matters: "bfloat16" and "float8" contain "float", "uint8" contains "int8"
        ("bf16", ("bfloat16", "bf16")),
        ("fp8", ("fp8", "float8", "e4m3", "e5m2")),
        ("fp4", ("fp4", "float4", "e2m1")),
        ("int4", ("int4",)),
        ("uint8", ("uint8",)),
        ("int8", ("int8",)),
        ("int32", ("int32",)),
        ("int64", ("int64",)),
        ("fp16", ("fp16", "half", "float16")),
        ("fp32", ("fp32", "float")),
        ("bool", ("bool",)),
    )
    for name, needles in checks:
        if any(n in s for n in needles):
            return name
    return "unknown"


def layer_precision(layer: Mapping[str, Any] | str) -> str:
    """The precision a layer is counted under: the lowest among its inputs, else its outputs.

    Takes a layer of the inspector JSON, or a ``layer_brief`` (which carries its "precision").
    """
    if not isinstance(layer, Mapping):
        return "unknown"  # LAYER_NAMES_ONLY verbosity: the layer is just its name
    if "Inputs" not in layer and "Outputs" not in layer and "precision" in layer:
        return str(layer["precision"])  # already summarised by layer_brief
    for side in ("Inputs", "Outputs"):
        found = {tensor_precision(t) for t in layer.get(side) or () if isinstance(t, Mapping)} - {"unknown"}
        if found:
            return min(found, key=PRECISION_ORDER.index)
    return "unknown"


def layer_precision_counts(layers: Iterable[Mapping[str, Any] | str]) -> dict[str, int]:
    """How many layers run in each precision, e.g. {"fp16": 41, "fp32": 12, "int8": 0...} (zeros left out)."""
    counts = Counter(layer_precision(layer) for layer in layers)
    order = (*PRECISION_ORDER, "unknown")
    return {k: counts[k] for k in sorted(counts, key=order.index)}


def layer_brief(layer: Mapping[str, Any] | str) -> dict[str, Any]:
    """Name, type, precision and the inputs'/outputs' types and formats of one layer."""
    if not isinstance(layer, Mapping):
        return {"name": str(layer), "type": None, "precision": "unknown", "inputs": [], "outputs": []}

    def tensors(side: str) -> list[dict[str, Any]]:
        return [
            {
                "name": t.get("Name"),
                "precision": tensor_precision(t),
                "format": t.get("Format") or t.get("Format/Datatype"),
                "dimensions": t.get("Dimensions"),
            }
            for t in layer.get(side) or ()
            if isinstance(t, Mapping)
        ]

    return {
        "name": layer.get("Name"),
        "type": layer.get("LayerType"),
        "precision": layer_precision(layer),
        "inputs": tensors("Inputs"),
        "outputs": tensors("Outputs"),
    }


def io_tensors(engine_info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The engine's I/O tensors: 11.x "I/O Tensors" objects, or 10.x "Bindings" names as {"Name": ...}."""
    if "I/O Tensors" in engine_info:
        return [dict(t) for t in engine_info["I/O Tensors"]]
    return [{"Name": name} for name in engine_info.get("Bindings", [])]


# A fused attention block is one layer whose name or tactic names an MHA kernel: Myelin's
# "_gemm_mha_v2_myl0_3" (LayerType "kgen", TacticName "_gemm_mha_v2_0x..."), or "fmha"/"mha" kernels
# (NVIDIA/TensorRT issues #4397, #3243). Unfused attention is two GEMM layers and a softmax layer.
ATTENTION_KERNEL = re.compile(r"(^|[^a-z])f?mha", re.IGNORECASE)


def fused_attention(layers: Iterable[Mapping[str, Any] | str]) -> list[dict[str, Any]]:
    """The layers that are a fused attention kernel, each with the precision it reads (an FP8 attention that
    fused but reads FP16 runs in FP16: TensorRT issue #4516)."""
    found = []
    for layer in layers:
        name = str(layer.get("Name", "")) if isinstance(layer, Mapping) else str(layer)
        tactic = str(layer.get("TacticName", "")) if isinstance(layer, Mapping) else ""
        if ATTENTION_KERNEL.search(name) or ATTENTION_KERNEL.search(tactic):
            found.append({"name": name, "tactic": tactic or None, "precision": layer_precision(layer)})
    return found


def summarize(engine_info: Mapping[str, Any], layers: list[Mapping[str, Any] | str]) -> dict[str, Any]:
    """The inspector output as the manifest and reports use it."""
    attention = fused_attention(layers)
    return {
        "fused_attention": {"layers": len(attention), "precisions": dict(Counter(a["precision"] for a in attention)),
                            "names": [a["name"] for a in attention][:4]},
        "num_layers": len(layers),
        "io_tensors": io_tensors(engine_info),
        "precision_counts": layer_precision_counts(layers),
        "layer_types": dict(Counter(str(layer.get("LayerType")) for layer in layers if isinstance(layer, Mapping))),
        "layers": [layer_brief(layer) for layer in layers],
    }


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # with little verbosity a layer may come back as a bare name


def engine_summary(plan: bytes | str | os.PathLike[str], *, allow_host_code: bool = False) -> dict[str, Any]:
    """Deserialize ``plan`` and summarise it with the engine inspector (needs TensorRT and a GPU).

    With a dynamic batch, the inspector prints no tensor formats/types ("N/A due to dynamic
    shapes") unless an execution context with concrete input shapes is attached (Engine
    Inspector docs), so one is attached with every input at its profile's opt shape.
    """
    trt = import_tensorrt()

    data, source = read_plan(plan)
    collector = LogCollector()
    logger = trt_logger(collector)
    runtime, engine = deserialize(data, logger, collector, source, allow_host_code)
    inspector = engine.create_engine_inspector()
    context = engine.create_execution_context()
    shapes: dict[str, list[int]] = {}
    if context is not None:
        for name in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors)):
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shapes[name] = [int(d) for d in engine.get_tensor_profile_shape(name, 0)[1]]
                context.set_input_shape(name, tuple(shapes[name]))
        inspector.execution_context = context
    fmt = trt.LayerInformationFormat.JSON
    engine_info = _parse(inspector.get_engine_information(fmt))
    layers = [_parse(inspector.get_layer_information(i, fmt)) for i in range(engine.num_layers)]
    del inspector, context, engine, runtime, logger  # dependents first
    summary = summarize(engine_info if isinstance(engine_info, Mapping) else {}, layers)
    summary["inspected_shapes"] = shapes
    return summary
