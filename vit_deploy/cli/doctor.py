"""``vit-deploy doctor``: what this machine can do, and for every "no" why and the fix."""

from __future__ import annotations

import json
from typing import Any

import click

from .options import json_option


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """What this machine can do: GPU/driver/CUDA, TensorRT, ONNX Runtime providers, OpenVINO, Triton.

    Every "can't" comes with the reason and the command that fixes it. Always exits 0.
    """
    from ..doctor import report

    r = report()
    click.echo(json.dumps(r, indent=2) if as_json else format_report(r))


def format_report(r: dict[str, Any]) -> str:
    """The report as text: one line per finding, every "can't" with its reason and the command to fix it."""
    lines = []

    def cant(what: str, reason: str | None, install: str | None) -> None:
        lines.append(f"  no   {what}: {reason}" + (f"\n       fix: {install}" if install else ""))

    g = r["gpu"]
    lines.append("GPU")
    if g["gpus"]:
        for gpu in g["gpus"]:
            lines.append(f"  yes  {gpu['name']} (compute capability {gpu['compute_capability']}, {gpu['memory']}), "
                         f"driver {g['driver']}, CUDA {g['cuda']}")
            if gpu.get("precisions") is not None:
                native = ", ".join(p.upper() for p in gpu["precisions"]) or "none (no tensor cores)"
                lines.append(f"       runs natively: {native}"
                             + ("" if "fp8" in gpu["precisions"] else "; FP8 needs compute capability 8.9+"))
    lines.append(f"  {'yes' if g['ok'] else 'no '}  PyTorch {g['torch']} (CUDA {g['torch_cuda']})")
    if not g["ok"]:
        cant("CUDA", g["reason"], g["install"])
    t = r["tensorrt"]
    lines.append("TensorRT")
    lines.append(f"  {'yes' if t['bindings'] else 'no '}  bindings: {t['bindings'] or 'not installed'}")
    for lib, state in t["libraries"].items():
        lines.append(f"  {'yes' if state == 'loaded' else 'no '}  {lib}: {state}")
    o, s = r["onnxruntime"], r["triton"]
    ort_packages = ", ".join(f"{k} {v}" for k, v in o.get("packages", {}).items()) or o.get("version")
    # (section, probe, what cannot be done without it, the "yes" line, an extra "can't" when it works)
    findings = [
        (None, t, "TensorRT engines", lambda: f"TensorRT {t['version']}: engines can be built and run here", None),
        ("ONNX Runtime", o, "ONNX Runtime", lambda: f"{ort_packages}: {', '.join(o['providers'])}",
         None if o.get("cuda") else ("CUDA/TensorRT execution providers", "gpu_reason", "gpu_install")),
        ("OpenVINO", r["openvino"], "OpenVINO",
         lambda: f"OpenVINO {r['openvino']['version']}: devices {', '.join(r['openvino']['devices']) or 'none'}", None),
        ("Triton", s, "tritonserver",
         lambda: f"{s['binary']} ({s['source']}); backends: {', '.join(s['backends'] or ['unknown'])}",
         None if s.get("tensorrt_backend") else ("tensorrt_plan serving", "tensorrt_reason", "tensorrt_install")),
    ]
    for section, probe, what, yes, extra in findings:
        if section:
            lines.append(section)
        if not probe["ok"]:
            cant(what, probe["reason"], probe["install"])
            continue
        lines.append(f"  yes  {yes()}")
        if probe is o and o.get("warning"):
            lines.append(f"  warn {o['warning']}")
        if extra:
            cant(extra[0], probe[extra[1]], probe[extra[2]])
    c = r["cpu"]
    lines.append("CPU")
    if c["int8_exact"] is None:
        lines.append(f"  ?    {c['machine']}: INT8 instruction flags unknown")
    elif c["int8_exact"]:
        lines.append(f"  yes  exact INT8 kernels ({', '.join(c['int8_flags'])})")
    else:
        lines.append(f"  warn {c['int8_note']}")
    return "\n".join(lines)
