"""What it costs to make the artifacts: time and peak memory of export, FP16 and INT8 conversion.

Each phase runs in a fresh Python process (``python -m vit_deploy.bench.build_cost SPEC``), as
a user's ``vit-deploy export`` / ``build-engine`` would, so one phase's memory never counts
toward another's and the import cost is part of the wall time. Inside the child the library
call runs with a ``Progress`` that also meters memory: before each step the kernel's resident
high-water mark is reset, after it the mark is read, so every step (building the model,
torch.onnx export, onnxsim, checking, validation, ...) gets its own time *and* peak. The
step timings are the same ones the CLI prints.

Why the child reads its own peak (``VmHWM``) instead of the parent reading ``ru_maxrss`` from
``os.wait4``: Linux carries the parent's peak into a fork+exec child's ru_maxrss, so from a
large parent every phase would look as big as the parent (see workers.py). ``wait4`` still
gives the phase's CPU time.

The INT8 calibration cache is pointed at a fresh folder, so calibration is timed, not a cache hit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..progress import Progress
from .workers import peak_rss_mib, reset_peak_rss

PHASES = ("export", "fp16", "int8")
SCHEMA = "vit-deploy/bench-build"
EXPORT_SIMPLIFY_STEPS = ("Exporting to ONNX", "Simplifying")
TARGET_EXPORT_S, TARGET_EXPORT_MIB = 30.0, 4096.0


@dataclass(frozen=True)
class BuildOptions:
    variant: str = "b16"
    img_size: int = 384
    num_classes: int | None = None
    calib: str | None = None  # None: calibration/photos.txt of the source checkout, when there
    work_dir: Path | None = None  # where the artifacts go (new or empty); None: a temporary folder, removed after
    phases: tuple[str, ...] = PHASES
    opset: int = 17
    seed: int = 0
    threads: int | None = None  # OMP/torch threads of the children; None: their default
    extra: dict[str, Any] = field(default_factory=dict)


def check_options(opts: BuildOptions) -> None:
    from ..specs import DEFAULT_NUM_CLASSES, model_config

    model_config(opts.variant, opts.img_size, opts.num_classes or DEFAULT_NUM_CLASSES)
    unknown = [p for p in opts.phases if p not in PHASES]
    if unknown or not opts.phases:
        raise UsageError(f"unknown phase(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PHASES)}")
    if "export" not in opts.phases:
        raise UsageError("the fp16 and int8 phases convert the export: include the export phase")
    if opts.work_dir is not None:
        from ..fileio import check_output_folder

        check_output_folder(opts.work_dir, "--work-dir")
    if opts.work_dir is not None and opts.work_dir.exists() and any(opts.work_dir.iterdir()):
        raise UsageError(
            f"--work-dir {opts.work_dir} is not empty; give a new or empty folder (or none: a temporary one)"
        )
    if opts.threads is not None and opts.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {opts.threads}")


def run_build_cost(opts: BuildOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the phases, each in its own process; returns per-phase and per-step time and memory."""
    from ..images.sets import BUNDLED_PHOTOS

    check_options(opts)
    progress = progress or Progress(enabled=False)
    calib = opts.calib or (str(BUNDLED_PHOTOS) if BUNDLED_PHOTOS.is_file() else None)
    phases = list(opts.phases)
    notes: list[str] = []
    if "int8" in phases and calib is None:
        phases.remove("int8")
        notes.append("int8 skipped: no calibration images (pass --calib FOLDER or a definition file)")
    started = datetime.now(UTC)
    machine = _machine(opts.threads)
    temporary = opts.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="vit-deploy-build-cost-")) if temporary else opts.work_dir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    export_dir = work / f"{opts.variant}-{opts.img_size}"
    cache = work / "cache"  # fresh: calibration must run, not come from an earlier run's cache
    results: list[dict[str, Any]] = []
    try:
        for i, phase in enumerate(phases, 1):
            spec = {"phase": phase, "variant": opts.variant, "img_size": opts.img_size,
                    "num_classes": opts.num_classes, "opset": opts.opset, "seed": opts.seed,
                    "export_dir": str(export_dir), "calib": calib, "verbose": progress.enabled}
            # a note, not a step: the child prints its own numbered steps below it
            progress.note(f"== phase {i}/{len(phases)}: {_command(spec)}")
            result = _run_phase(spec, work, cache, opts.threads)
            results.append(result)
            if result["status"] != "ok":
                progress.note(f"  {phase} failed: {result['error']}")
                break
            progress.note(f"  {phase}: {result['wall_s']:.1f} s wall, {result['work_s']:.1f} s in the library call, "
                          f"peak {result['peak_rss_mib']:.0f} MiB")
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    summary = {
        "schema": SCHEMA,
        "schema_version": 1,
        "created_at": started.isoformat(timespec="seconds"),
        "model": {"variant": opts.variant, "img_size": opts.img_size, "num_classes": opts.num_classes or 1000},
        "machine": {**machine, "loadavg_end": _machine(opts.threads)["loadavg"]},
        "work_dir": None if temporary else str(work),
        "phases": results,
        "notes": notes,
        **opts.extra,
    }
    summary["targets"] = build_targets(summary)
    return summary


def build_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Export + simplify under 30 s and 4 GB peak (issue 5, point 4)."""
    export = next((p for p in summary["phases"] if p["phase"] == "export" and p["status"] == "ok"), None)
    m = summary["model"]
    what = f"{m['variant']}@{m['img_size']}"
    if export is None:
        return [{"target": f"export + simplify of {what}", "measured": "not measured", "met": None}]
    steps = [s for s in export["steps"] if s["step"].startswith(EXPORT_SIMPLIFY_STEPS)]
    seconds = sum(s["s"] for s in steps)
    peak = max(s["peak_rss_mib"] or 0 for s in steps) if steps else None
    return [
        {"target": f"export + simplify of {what} < {TARGET_EXPORT_S:.0f} s",
         "measured": f"{seconds:.1f} s (torch.onnx export + onnxsim; whole export command {export['wall_s']:.1f} s "
                     "with model build, validation and imports)",
         "met": seconds < TARGET_EXPORT_S},
        {"target": f"export + simplify of {what} < 4 GB peak memory",
         "measured": f"{peak:.0f} MiB (whole export command: {export['peak_rss_mib']:.0f} MiB)" if peak else "n/a",
         "met": None if peak is None else peak < TARGET_EXPORT_MIB},
    ]


def format_build(summary: dict[str, Any]) -> str:
    """Per-phase and per-step table (Markdown), then the targets."""
    m = summary["model"]
    lines = [
        f"Build cost of ViT {m['variant']} @ {m['img_size']} ({summary['machine']['cpu']}, "
        f"{summary['machine']['threads']} threads, load average {_load(summary['machine']['loadavg'])} at start)",
        "",
        "| phase | step | seconds | peak RSS MiB |",
        "|---|---|--:|--:|",
    ]
    for p in summary["phases"]:
        if p["status"] != "ok":
            lines.append(f"| {p['phase']} | failed: {p['error']} | | |")
            continue
        for s in p["steps"]:
            lines.append(f"| {p['phase']} | {s['step']} | {s['s']:.1f} | {_num(s['peak_rss_mib'])} |")
        lines.append(f"| **{p['phase']}** | **whole process** (`{p['command']}`; CPU {p['cpu_s']:.0f} s) | "
                     f"**{p['wall_s']:.1f}** | **{_num(p['peak_rss_mib'])}** |")
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    lines += ["", "Targets:"] + [f"- {t['target']}: {t['measured']} ({verdict[t['met']]})" for t in summary["targets"]]
    lines += [f"- note: {n}" for n in summary["notes"]]
    return "\n".join(lines)


def write_build_outputs(summary: dict[str, Any], out_dir: Path, stem: str = "build-cost") -> dict[str, str]:
    from ..fileio import write_output

    write_output(out_dir / f"{stem}.json", json.dumps(summary, indent=2) + "\n")
    write_output(out_dir / f"{stem}.md", format_build(summary) + "\n")
    return {"json": str(out_dir / f"{stem}.json"), "markdown": str(out_dir / f"{stem}.md")}


# -- parent side ----------------------------------------------------------------------------
def _run_phase(spec: dict[str, Any], work: Path, cache: Path, threads: int | None) -> dict[str, Any]:
    spec_path, result_path = work / f"{spec['phase']}.spec.json", work / f"{spec['phase']}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    env = {**os.environ, "VIT_DEPLOY_CACHE": str(cache)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vit_deploy.bench.build_cost", str(spec_path)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    wall = time.perf_counter() - start
    base = {"phase": spec["phase"], "command": _command(spec), "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "exit_code": proc.returncode}
    if not result_path.is_file():
        return {**base, "status": "failed", "error": f"the phase process exited with {proc.returncode} (output above)"}
    child = json.loads(result_path.read_text())
    return {**base, **child}


def _command(spec: dict[str, Any]) -> str:
    """The CLI command this phase stands for."""
    out = spec["export_dir"]
    if spec["phase"] == "export":
        classes = f" --num-classes {spec['num_classes']}" if spec["num_classes"] else ""
        return f"vit-deploy export --model {spec['variant']} --res {spec['img_size']}{classes} --out {out}"
    calib = f" --calib {spec['calib']}" if spec["phase"] == "int8" else ""
    return f"vit-deploy build-engine {out} --{spec['phase']}{calib} (graph step only)"


def _machine(threads: int | None) -> dict[str, Any]:
    from .run import _cpu_model, _loadavg, default_threads

    return {"cpu": _cpu_model(), "cpus_available": default_threads(), "threads": threads or "default",
            "loadavg": _loadavg()}


def _load(load: list[float] | None) -> str:
    return "n/a" if not load else f"{load[0]:.2f}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


# -- child side -----------------------------------------------------------------------------
class MeteredProgress(Progress):
    """A ``Progress`` that also records each step's peak resident memory (MiB) in ``peaks``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.peaks: dict[str, float | None] = {}

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        metered = reset_peak_rss()
        with super().step(label):
            yield
        self.peaks[label] = round(peak_rss_mib()[0], 1) if metered else None


def _phase_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result_path = Path(spec["result"])
    progress = MeteredProgress(enabled=spec["verbose"])
    start = time.perf_counter()
    try:
        summary = _run(spec, progress)
    except Exception as e:  # reported in the parent's table, with the same one-line message the CLI gives
        result_path.write_text(json.dumps({"status": "failed", "error": f"{type(e).__name__}: {e}"}))
        return 1
    work = time.perf_counter() - start
    peaks = [p for p in progress.peaks.values() if p is not None]
    result = {
        "status": "ok",
        "work_s": round(work, 2),
        "peak_rss_mib": round(max([*peaks, peak_rss_mib()[0]]), 1),
        "steps": [{"step": label, "s": s, "peak_rss_mib": progress.peaks.get(label)}
                  for label, s in progress.timings.items()],
        "artifact": summary["artifact"],
        "bytes": summary["bytes"],
        "validation_passed": summary["validation"]["passed"],
    }
    result_path.write_text(json.dumps(result))
    return 0


def _run(spec: dict[str, Any], progress: Progress) -> dict[str, Any]:
    export_dir = Path(spec["export_dir"])
    if spec["phase"] == "export":
        from ..steps.export import ExportOptions, export_artifact

        opts = ExportOptions(spec["variant"], spec["img_size"], spec["num_classes"], None, spec["opset"], export_dir,
                             True, False, spec["seed"])
        return export_artifact(opts, progress)
    from ..steps.precision import PrecisionOptions, build_precision_artifact

    calib = spec["calib"] if spec["phase"] == "int8" else None
    opts = PrecisionOptions(spec["phase"], export_dir, None, False, calib, seed=spec["seed"])
    return build_precision_artifact(opts, progress)


if __name__ == "__main__":
    sys.exit(_phase_main(sys.argv[1]))
