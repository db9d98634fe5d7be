"""Write gpu-report.json and gpu-report.md for a run of tools/gpu_acceptance.sh.

    python tools/gpu_report.py OUT_DIR [--dry-run 0|1] [--budget S] [--seconds S]

Reads ``OUT_DIR/steps.tsv`` (name, status, seconds, reason, command per step, as the script
records them) and the JSON each step left in ``OUT_DIR/results/`` (doctor, engine builds,
compare, bench), and writes both reports even when steps failed or never ran: a report with a
missing or unreadable result says so instead of failing.
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


def compare_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per engine compared with PyTorch (``vit-deploy compare --json``), worst over its batch sizes."""
    rows = []
    for key, r in sorted(results.items()):
        if not key.startswith("compare-") or "error" in r:
            continue
        metrics = [row.get("metrics") or {} for row in r.get("rows") or []]

        def worst(name: str, pick=min, metrics=metrics):
            values = [m[name] for m in metrics if m.get(name) is not None]
            return pick(values) if values else None

        rows.append({"engine": key.removeprefix("compare-"), "passed": r.get("passed"),
                     "min_cosine": worst("min_cosine"), "rel_l2": worst("rel_l2", max),
                     "top1_agreement": worst("top1_agreement"), "accuracy": worst("accuracy"),
                     "reference_accuracy": worst("reference_accuracy")})
    return rows


def build_report(out: Path, dry_run: bool, budget: int, seconds: int) -> dict[str, Any]:
    steps = read_steps(out)
    results = read_results(out)
    counts = {s: sum(1 for step in steps if step["status"] == s) for s in STATUSES}
    doctor = results.pop("doctor", None)
    return {
        "schema": "vit-deploy/gpu-report", "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(), "platform": platform.platform(),
        "dry_run": dry_run, "budget_seconds": budget, "seconds": seconds,
        "passed": counts["fail"] == 0 and counts["timeout"] == 0 and not dry_run and counts["pass"] > 0,
        "counts": counts, "steps": steps,
        "gpu": (doctor or {}).get("gpu"), "tensorrt": (doctor or {}).get("tensorrt"), "doctor": doctor,
        "compare": compare_rows(results), "results": results,
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
