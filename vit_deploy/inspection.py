"""What an artifact holds: ``vit-deploy inspect ARTIFACT``.

ONNX graphs are read with onnx (no weights loaded into memory beyond the proto): opset, I/O, op
histogram, file size, the tensor types that say what the precision step did (FP16 initializers,
INT8/FP8 weights, Q/DQ pairs), and what TensorRT will run each op in (``onnx.readiness``: GEMM
precisions, float ops by type, attention patterns). TensorRT plans are read through TensorRT's engine
inspector (layers and their precisions; needs TensorRT and a GPU); without TensorRT the
manifest's record of the build is shown and the summary says what is missing.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from . import artifact as artifact_view
from .artifact import Artifact
from .errors import ArtifactError


def inspect_artifact(artifact: str | Path, verify: bool = True) -> dict[str, Any]:
    """What ``artifact`` holds, read from its files (``verify``: check their sha256 first)."""
    art = artifact_view.open(artifact, verify=verify)
    path = art.model_file
    summary: dict[str, Any] = {
        "artifact": str(art.directory),
        "file": str(path),
        "bytes": art.total_bytes,
        "kind": art.kind,
        "precision": art.precision,
        "model": art.model,
        "io": art.io,
        "checkpoint": art.checkpoint,
        "validation_passed": art.passed,
        "precision_policy": art.section("precision_policy"),
        "dynamic_resolution": art.section("dynamic_resolution") or None,
        "hash_verified": verify,
    }
    if art.kind == "onnx":
        summary["onnx"] = onnx_summary(path)
    else:
        summary["tensorrt"] = engine_details(art)
    return summary


def onnx_summary(path: Path) -> dict[str, Any]:
    import onnx

    from .onnx.graph import io_signature, op_histogram

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError, ...: the file, not the code, is wrong
        raise ArtifactError(f"{path} is not a readable ONNX model ({e}); it is corrupt or truncated: "
                            "re-create the artifact") from e
    types = collections.Counter(onnx.TensorProto.DataType.Name(t.data_type).lower() for t in model.graph.initializer)
    ops = op_histogram(model)
    from .onnx.readiness import readiness

    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "io": io_signature(model),
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializer_types": dict(types),
        "qdq_pairs": min(ops.get("QuantizeLinear", 0), ops.get("DequantizeLinear", 0)),
        "tensorrt_readiness": readiness(model),
    }


def engine_details(art: Artifact) -> dict[str, Any]:
    from .trt.probe import unavailable_reason

    path = art.model_file
    details: dict[str, Any] = {"build": art.section("tensorrt")}
    reason = unavailable_reason()
    if reason is not None:
        details["layers"] = None
        details["note"] = f"layer details need TensorRT on a GPU host: {reason}"
        return details
    from .trt.inspector import engine_summary

    details.update(engine_summary(path, allow_host_code=bool(details["build"].get("version_compatible"))))
    return details
