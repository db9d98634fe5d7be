"""Write gpu-report.json and gpu-report.md for a run of tools/gpu_acceptance.sh.

    python tools/gpu_report.py OUT_DIR [--dry-run 0|1] [--budget S] [--seconds S]

Reads ``OUT_DIR/steps.tsv`` (name, status, seconds, reason, command per step, as the script
records them) and the JSON each step left in ``OUT_DIR/results/`` (doctor, engine builds,
compare, bench), and writes both reports even when steps failed or never ran: a report with a
missing or unreadable result says so instead of failing. It adds: each engine's layer precisions
and fused attention (the engine inspector's, from the build), img/s per engine and batch with the
INT8/FP8 speed-up over FP16 and the share of the GPU's dense peak, and the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import time
from pathlib import Path
from typing import Any

STATUSES = ("pass", "fail", "timeout", "skip")


def read_steps(out: Path) -> list[dict[str, Any]]:
    steps = []
    path = out / "steps.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = (line.split("\t") + [""] * 5)[:5]
        name, status, seconds, reason, command = parts
        log = out / "logs" / f"{name}.log"
        steps.append({"name": name, "status": status, "seconds": int(seconds or 0), "reason": reason or None,
                      "command": command, "log": str(log) if log.is_file() else None})
    return steps


def read_results(out: Path) -> dict[str, Any]:
    """Every ``results/*.json``; unreadable or empty ones as {"error": ...}."""
    results: dict[str, Any] = {}
    for path in sorted((out / "results").glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            results[path.stem] = {"error": f"unreadable ({e.__class__.__name__}: {str(e)[:200]})"}
    return results


def _steps(results: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """The results of the steps named ``prefix...`` that ran (a step that failed has only its error), by name."""
    return [(key, r) for key, r in sorted(results.items()) if key.startswith(prefix) and "error" not in r]


def compare_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per engine compared with PyTorch (``vit-deploy compare --json``), worst over its batch sizes."""
    rows = []
    for key, r in _steps(results, "compare-"):
        metrics = [row.get("metrics") or {} for row in r.get("rows") or []]

        def worst(name: str, pick=min, metrics=metrics):
            values = [m[name] for m in metrics if m.get(name) is not None]
            return pick(values) if values else None

        rows.append({"engine": key.removeprefix("compare-"), "passed": r.get("passed"),
                     "min_cosine": worst("min_cosine"), "rel_l2": worst("rel_l2", max),
                     "top1_agreement": worst("top1_agreement"), "accuracy": worst("accuracy"),
                     "reference_accuracy": worst("reference_accuracy")})
    return rows


# Dense (no sparsity) tensor-core peaks in TFLOP/s (TOP/s for INT8), from NVIDIA's datasheets; matched
# against the GPU's name, most specific first. A GPU not listed gets no "% of peak" column.
DENSE_PEAKS = (
    ("H100 PCIe", {"fp16": 756.0, "fp8": 1513.0, "int8": 1513.0}),
    ("H100 NVL", {"fp16": 835.0, "fp8": 1671.0, "int8": 1671.0}),
    ("H200 NVL", {"fp16": 835.0, "fp8": 1671.0, "int8": 1671.0}),
    ("H100", {"fp16": 989.4, "fp8": 1978.9, "int8": 1978.9}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", {"fp16": 989.4, "fp8": 1978.9, "int8": 1978.9}),
    ("L40S", {"fp16": 362.0, "fp8": 733.0, "int8": 733.0}),
    ("L4", {"fp16": 121.0, "fp8": 242.5, "int8": 242.5}),
    ("A100", {"fp16": 312.0, "int8": 624.0}),
    ("A10", {"fp16": 125.0, "int8": 250.0}),
    ("T4", {"fp16": 65.0, "int8": 130.0}),
)
# What the acceptance run is read against (issue 18): b16@224 at batch 64, and FP16 b16@384's share of the peak
TARGETS = {"int8_speedup": 1.3, "fp8_speedup": 1.5, "fp16_peak_fraction_384": 0.6, "batch": 64}
ENGINE_ROWS = {"tensorrt-fp16": "fp16", "tensorrt-int8": "int8", "tensorrt-fp8": "fp8"}


def dense_peaks(gpu_name: str | None) -> dict[str, float] | None:
    for key, peaks in DENSE_PEAKS:
        if gpu_name and key.lower() in gpu_name.lower():
            return peaks
    return None


def bench_rows(results: dict[str, Any], peaks: dict[str, float] | None) -> list[dict[str, Any]]:
    """Per model, engine and batch: img/s, the speed-up over the FP16 engine, and the share of the dense peak of
    the engine's precision (the model's FLOPs per image x img/s)."""
    rows = []
    for key, r in _steps(results, "bench-"):
        gflop = ((r.get("model") or {}).get("flops") or {}).get("gflop")
        speeds: dict[str, dict[int, float]] = {}
        for row in r.get("rows") or []:
            precision = ENGINE_ROWS.get(row.get("name"))
            if precision and row.get("status") == "ok":
                speeds[precision] = {x["batch"]: x["img_per_s"] for x in row.get("results") or []
                                     if x.get("status") == "ok"}
        for precision, by_batch in speeds.items():
            for batch, img_s in sorted(by_batch.items()):
                fp16 = speeds.get("fp16", {}).get(batch)
                peak = (peaks or {}).get(precision)
                rows.append({"model": key.removeprefix("bench-"), "engine": precision, "batch": batch,
                             "img_per_s": img_s, "vs_fp16": round(img_s / fp16, 3) if fp16 else None,
                             "peak_fraction": round(img_s * gflop / 1000 / peak, 4) if gflop and peak else None})
    return rows


def engine_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per engine build: its layers' precisions and whether attention ran as a fused kernel (the inspector's)."""
    rows = []
    for key, r in _steps(results, "engine-"):
        engine = r.get("engine") or {}
        inspector = (engine.get("tensorrt") or {}).get("inspector") or {}
        fused = inspector.get("fused_attention") or {}
        rows.append({"engine": key.removeprefix("engine-"), "built": engine.get("built"),
                     "passed": (engine.get("validation") or {}).get("passed"),
                     "layers": inspector.get("precision_counts"), "fused_attention_layers": fused.get("layers"),
                     "fused_attention_precisions": fused.get("precisions"), "reason": engine.get("reason")})
    return rows


def targets(bench: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured (None: not measured in this run)."""
    def find(model: str, engine: str, field: str) -> float | None:
        return next((r[field] for r in bench if r["model"] == model and r["engine"] == engine
                     and r["batch"] == TARGETS["batch"]), None)

    checks = [("INT8 engine vs FP16, b16@224, batch 64", find("b16-224", "int8", "vs_fp16"), TARGETS["int8_speedup"]),
              ("FP8 engine vs FP16, b16@224, batch 64", find("b16-224", "fp8", "vs_fp16"), TARGETS["fp8_speedup"]),
              ("FP16 b16@384 share of the dense FP16 peak, batch 64", find("b16-384", "fp16", "peak_fraction"),
               TARGETS["fp16_peak_fraction_384"])]
    return [{"target": name, "measured": value, "at_least": bound, "met": None if value is None else value >= bound}
            for name, value, bound in checks]


def build_report(out: Path, dry_run: bool, budget: int, seconds: int) -> dict[str, Any]:
    steps = read_steps(out)
    results = read_results(out)
    counts = {s: sum(1 for step in steps if step["status"] == s) for s in STATUSES}
    doctor = results.pop("doctor", None)
    gpus = ((doctor or {}).get("gpu") or {}).get("gpus") or []
    peaks = dense_peaks(gpus[0]["name"]) if gpus else None
    bench = bench_rows(results, peaks)
    return {
        "schema": "vit-deploy/gpu-report", "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(), "platform": platform.platform(),
        "dry_run": dry_run, "budget_seconds": budget, "seconds": seconds,
        "passed": counts["fail"] == 0 and counts["timeout"] == 0 and not dry_run and counts["pass"] > 0,
        "counts": counts, "steps": steps,
        "gpu": (doctor or {}).get("gpu"), "tensorrt": (doctor or {}).get("tensorrt"), "doctor": doctor,
        "compare": compare_rows(results), "engines": engine_rows(results), "bench": bench,
        "dense_peaks": peaks, "targets": targets(bench), "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    c = report["counts"]
    verdict = "dry run" if report["dry_run"] else ("PASSED" if report["passed"] else "NOT PASSED")
    lines = [
        f"# GPU acceptance report: {verdict}",
        "",
        f"{report['created']} on {report['host']} ({report['platform']}), {report['seconds']} s of a "
        f"{report['budget_seconds']} s budget: {c['pass']} passed, {c['fail']} failed, {c['timeout']} timed out, "
        f"{c['skip']} skipped.",
        "",
    ]
    t = report.get("tensorrt") or {}
    g = report.get("gpu") or {}
    gpus = ", ".join(f"{x['name']} (cc {x['compute_capability']})" for x in g.get("gpus") or []) or "none"
    lines += [f"- GPU: {gpus}; driver {g.get('driver')}, CUDA {g.get('cuda')}; PyTorch {g.get('torch')}",
              f"- TensorRT: {t.get('version') or 'not usable'}" + (f" ({t['reason']})" if t.get("reason") else ""),
              "", "| step | status | seconds | reason |", "|---|---|--:|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {(s['reason'] or '').replace('|', '/')} |")
    if report["compare"]:
        lines += ["", "## Engines against PyTorch", "",
                  "| engine | passed | min cosine | rel L2 | top-1 agreement | top-1 accuracy (engine / PyTorch) |",
                  "|---|---|--:|--:|--:|---|"]
        for r in report["compare"]:
            lines.append(f"| {r['engine']} | {r['passed']} | {r['min_cosine']} | {r['rel_l2']} | "
                         f"{r['top1_agreement']} | {r['accuracy']} / {r['reference_accuracy']} |")
    if report.get("engines"):
        lines += ["", "## Engines: what TensorRT made of each graph", "",
                  "| engine | built | validated | layers by precision | fused attention layers (reading) |",
                  "|---|---|---|---|---|"]
        for r in report["engines"]:
            layers = ", ".join(f"{p} {n}" for p, n in (r["layers"] or {}).items()) or (r["reason"] or "")[:80]
            reading = ", ".join(f"{p} {n}" for p, n in (r["fused_attention_precisions"] or {}).items())
            lines.append(f"| {r['engine']} | {r['built']} | {r['passed']} | {layers} | "
                         f"{r['fused_attention_layers']} ({reading}) |")
    if report.get("bench"):
        lines += ["", "## Throughput", "", "| model | engine | batch | img/s | vs FP16 | % of dense peak |",
                  "|---|---|--:|--:|--:|--:|"]
        for r in report["bench"]:
            peak = f"{100 * r['peak_fraction']:.1f}%" if r["peak_fraction"] is not None else "n/a"
            lines.append(f"| {r['model']} | {r['engine']} | {r['batch']} | {r['img_per_s']} | {r['vs_fp16']} "
                         f"| {peak} |")
    lines += ["", "## Targets", "", "| target | measured | at least | met |", "|---|--:|--:|---|"]
    for t in report.get("targets") or []:
        lines.append(f"| {t['target']} | {t['measured']} | {t['at_least']} | "
                     f"{'not measured' if t['met'] is None else ('yes' if t['met'] else 'NO')} |")
    lines += ["", "Logs: `logs/<step>.log`; raw results: `results/*.json`; every field: `gpu-report.json`.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry-run", type=int, default=0)
    ap.add_argument("--budget", type=int, default=0)
    ap.add_argument("--seconds", type=int, default=0)
    args = ap.parse_args()
    report = build_report(args.out, bool(args.dry_run), args.budget, args.seconds)
    (args.out / "gpu-report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "gpu-report.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
