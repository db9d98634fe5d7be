"""What an artifact holds: ``vit-deploy inspect ARTIFACT``.

ONNX graphs are read with onnx (no weights loaded into memory beyond the proto): opset, I/O,
op histogram, file size, and the tensor types that say what the precision step did (FP16
initializers, INT8 weights, Q/DQ pairs). TensorRT plans are read through TensorRT's engine
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
    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "io": io_signature(model),
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializer_types": dict(types),
        "qdq_pairs": min(ops.get("QuantizeLinear", 0), ops.get("DequantizeLinear", 0)),
    }


def engine_details(art: Artifact) -> dict[str, Any]:
    from .trt import unavailable_reason

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


def format_inspection(s: dict[str, Any]) -> str:
    m, ckpt = s["model"], s["checkpoint"]
    weights = f"pretrained: {ckpt.get('source')}" if ckpt.get("pretrained") else "random init"
    checked = "verified" if s["hash_verified"] else "not checked"
    lines = [
        f"{s['precision'].upper()} {s['kind']} artifact {s['artifact']}",
        f"  model     {m['variant']} @ {m['img_size']}, patch {m['patch_size']}, {m['num_classes']} classes, {weights}",
        f"  file      {s['file']} ({s['bytes'] / 1e6:.1f} MB, sha256 {checked})",
    ]
    for role in ("inputs", "outputs"):
        for e in s["io"][role]:
            lines.append(f"  {role[:-1]:<9} {e['name']} [{', '.join(map(str, e['shape']))}] {e['dtype']}")
    if "onnx" in s:
        o = s["onnx"]
        lines.append(f"  graph     opset {o['opset']}, IR {o['ir_version']}, {o['nodes']} nodes, "
                     f"producer {o['producer']}")
        lines.append("  weights   " + ", ".join(f"{n} {t}" for t, n in o["initializer_types"].items()))
        if o["qdq_pairs"]:
            lines.append(f"  Q/DQ      {o['ops'].get('QuantizeLinear', 0)} Q, {o['ops'].get('DequantizeLinear', 0)} DQ")
        lines.append("  ops       " + ", ".join(f"{op} {n}" for op, n in o["ops"].items()))
    else:
        t = s["tensorrt"]
        b = t["build"]
        lines.append(f"  engine    TensorRT {b.get('version')} for {b.get('gpu')} "
                     f"(compute capability {b.get('compute_capability')})")
        if b.get("profile"):
            lines.append(f"  profile   {b['profile']}")
        if t.get("layers") is None:
            lines.append(f"  layers    {t['note']}")
        else:
            lines.append(f"  layers    {len(t['layers'])}: " + ", ".join(
                f"{p} {n}" for p, n in t["precision_counts"].items()))
    verdict = {True: "passed", False: "FAILED", None: "not recorded"}[s["validation_passed"]]
    lines.append(f"  validated {verdict}")
    return "\n".join(lines)
