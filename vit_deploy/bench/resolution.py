"""Throughput versus image size: a dynamic-resolution artifact next to fixed-size exports of the same model.

``vit-deploy bench-res`` answers "does the dynamic graph cost anything?". For each size S the
dynamic artifact is fed S x S images and, when one is given, the fixed export at S runs beside it.
Both are timed exactly as ``bench`` times its rows (``run.measure_batch``): one worker process each
(the dynamic one serves every size), warm-up calls, then round-robin rounds of timed blocks, so load
from other processes hits both alike; throughput is the median over rounds. The dynamic graph's extra
work is the bicubic resampling of the position embeddings (a Resize of a [1, dim, g, g] constant)
and the shape arithmetic around it; everything else is the same graph.

Output: a table, ``bench-res.json``, ``bench-res.md`` and ``bench-res.png`` (images/s and the ratio
dynamic / fixed against the size).
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import artifact as artifact_view
from ..artifact import Artifact
from ..errors import UsageError
from ..progress import Progress
from .flops import model_flops
from .run import default_threads, machine_facts, measure_batch, plural
from .workers import Worker, WorkerSpec

SCHEMA = "vit-deploy/bench-res"
STEM = "bench-res"


@dataclass(frozen=True)
class ResolutionBenchOptions:
    """What to measure.

    Args:
        dynamic: the ``--dynamic-res`` artifact (an export, a precision graph or an engine).
        fixed: fixed-size artifacts of the same model and precision, one per size (optional).
        sizes: the square sizes to run (default: the fixed artifacts' sizes, else the range's min, native and max).
        batch: images per call.
        backend: the runtime backend (None: the dynamic artifact's default); the same for every row.
        device: "cpu" or "cuda" (ONNX Runtime's CUDA provider, TensorRT engines, PyTorch on the GPU).
        threads, repeats, min_time, warmup, seed, settle: as ``bench`` (BenchOptions).
    """

    dynamic: Path
    fixed: tuple[Path, ...] = ()
    sizes: tuple[int, ...] = ()
    batch: int = 8
    backend: str | None = None
    device: str = "cpu"
    threads: int | None = None
    repeats: int = 3
    min_time: float = 0.5
    warmup: int = 2
    seed: int = 0
    settle: float = 0.05


def _identity(art: Artifact) -> tuple[Any, ...]:
    """What must agree between the dynamic artifact and a fixed one: the model, its weights and its precision."""
    ckpt = art.checkpoint
    weights = [f.get("sha256") for f in ckpt.get("files") or [] if isinstance(f, dict)] or ckpt.get("sha256")
    return art.variant, art.num_classes, art.precision, art.kind, weights if art.pretrained else ckpt.get("seed", 0)


def plan(opts: ResolutionBenchOptions) -> tuple[Artifact, dict[int, Artifact], list[int]]:
    """(the dynamic artifact, {size: fixed artifact}, the sizes to run); UsageError says what does not fit."""
    if opts.batch < 1 or opts.repeats < 1 or opts.warmup < 1 or not opts.min_time > 0:
        raise UsageError("--batch, --repeats and --warmup must be >= 1 and --min-time > 0")
    dynamic = artifact_view.open(opts.dynamic, verify=False)
    sizes_range = dynamic.resolution_range
    if sizes_range is None:
        raise UsageError(f"{opts.dynamic} is a fixed-resolution artifact; give a --dynamic-res one first "
                         "(vit-deploy export --dynamic-res MIN:MAX), then the fixed exports to compare it with")
    fixed: dict[int, Artifact] = {}
    for path in opts.fixed:
        art = artifact_view.open(path, verify=False)
        if art.resolution_range is not None:
            raise UsageError(f"{path} is a dynamic-resolution artifact too; the others must be fixed-size exports")
        if _identity(art) != _identity(dynamic):
            raise UsageError(f"{path} is {art.precision} {art.kind} {art.variant} ({art.num_classes} classes), not the "
                             f"same model, weights and precision as {opts.dynamic}; compare like with like")
        if art.img_size in fixed:
            raise UsageError(f"two fixed artifacts at {art.img_size} ({fixed[art.img_size].directory} and {path}); "
                             "give one per size")
        fixed[art.img_size] = art
    sizes = list(dict.fromkeys(opts.sizes or sorted(fixed) or [sizes_range.min, sizes_range.native, sizes_range.max]))
    for size in sizes:
        if problem := sizes_range.problem(size, size):
            raise UsageError(f"--sizes {size}: {problem}")
    return dynamic, fixed, sizes


def run_resolution_bench(opts: ResolutionBenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Time the dynamic artifact at every size and each fixed one at its own; returns the result (see module)."""
    from ..runtime import default_backend

    dynamic, fixed, sizes = plan(opts)
    progress = progress or Progress(enabled=False)
    threads = opts.threads or default_threads()
    backend = opts.backend or default_backend(dynamic)
    progress.total = 1 + len(sizes)
    started = datetime.now(UTC)

    def spec(row: str, art: Artifact) -> WorkerSpec:
        return WorkerSpec(row=row, artifact=str(art.directory), open_kwargs={"backend": backend}, threads=threads,
                          device=opts.device, seed=opts.seed)

    entries = {"dynamic": {"name": "dynamic", "artifact": str(dynamic.directory), "results": []}}
    entries |= {f"fixed-{s}": {"name": f"fixed-{s}", "artifact": str(art.directory), "results": []}
                for s, art in fixed.items() if s in sizes}
    ctx = multiprocessing.get_context("spawn")
    workers: dict[str, Worker] = {}
    try:
        with progress.step(f"Loading {len(entries)} row(s) in their own processes ({plural(threads, 'thread')} each)"):
            workers["dynamic"] = Worker(spec("dynamic", dynamic), ctx)
            for s, art in fixed.items():
                if f"fixed-{s}" in entries:
                    workers[f"fixed-{s}"] = Worker(spec(f"fixed-{s}", art), ctx)
            for name, worker in workers.items():
                ready = worker.wait_ready()
                if not ready["ok"]:
                    raise UsageError(f"{entries[name]['artifact']} could not be opened on {backend}: {ready['error']}")
                entries[name]["runner"] = ready["describe"]
        for size in sizes:
            live = [(workers[n], entries[n]) for n in ("dynamic", f"fixed-{size}") if n in workers]
            measure_batch(live, opts.batch, opts, progress, size=size)
            for _, entry in live:
                r = entry["results"][-1]
                if r["status"] == "ok":
                    progress.note(f"  {entry['name']:10} {size}x{size}: {r['img_per_s']:8.2f} img/s "
                                  f"({r['img_per_s_min']:.2f}-{r['img_per_s_max']:.2f})")
    finally:
        for w in workers.values():
            w.close()

    cfg = dynamic.model_config
    table = []
    for size in sizes:
        dyn = next(r for r in entries["dynamic"]["results"] if r["size"] == size)
        fix = next((r for r in entries.get(f"fixed-{size}", {}).get("results", []) if r["size"] == size), None)
        ok = dyn["status"] == "ok" and fix is not None and fix["status"] == "ok"
        table.append({
            "size": size, "gflop_per_image": round(model_flops(cfg.with_(img_size=size))["gflop"], 4),
            "dynamic_img_per_s": dyn.get("img_per_s"), "fixed_img_per_s": fix.get("img_per_s") if fix else None,
            "dynamic_over_fixed": round(dyn["img_per_s"] / fix["img_per_s"], 3) if ok else None,
            # min-max over rounds: a ratio inside the two spreads is no difference this run can see
            "dynamic_spread": [dyn.get("img_per_s_min"), dyn.get("img_per_s_max")],
            "fixed_spread": [fix.get("img_per_s_min"), fix.get("img_per_s_max")] if fix else None,
        })
    return {
        "schema": SCHEMA, "created_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": machine_facts(threads, opts.device, None),
        "options": {**{k: v for k, v in asdict(opts).items() if k not in ("dynamic", "fixed")},
                    "dynamic": str(opts.dynamic), "fixed": [str(p) for p in opts.fixed], "threads": threads,
                    "backend": backend, "sizes": sizes},
        "model": {"variant": cfg.variant, "precision": dynamic.precision, "kind": dynamic.kind,
                  "range": dynamic.resolution_range.to_dict()},
        "rows": list(entries.values()),
        "table": table,
    }


def format_table(result: dict[str, Any]) -> str:
    o = result["options"]
    lines = [f"{result['model']['variant']} {result['model']['precision']} on {o['backend']} ({o['device']}, "
             f"{plural(o['threads'], 'thread')}), batch {o['batch']}; median of {o['repeats']} rounds",
             "| size | GFLOP/img | dynamic img/s (min-max) | fixed img/s (min-max) | dynamic / fixed |",
             "|---|--:|--:|--:|--:|"]

    def rate(value: float | None, spread: list[float | None] | None) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread and None not in spread else "")

    for r in result["table"]:
        ratio = "-" if r["dynamic_over_fixed"] is None else f"{r['dynamic_over_fixed']:.3f}"
        lines.append(f"| {r['size']}x{r['size']} | {r['gflop_per_image']:.2f} | "
                     f"{rate(r['dynamic_img_per_s'], r['dynamic_spread'])} | "
                     f"{rate(r['fixed_img_per_s'], r['fixed_spread'])} | {ratio} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> str | None:
    """images/s and dynamic / fixed against the size, as a PNG; returns why it was skipped, or None."""
    try:
        import matplotlib
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'vit-deploy[bench]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["table"]
    sizes = [r["size"] for r in table]
    fig, (speed, ratio) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("dynamic_img_per_s", "dynamic (one graph)"), ("fixed_img_per_s", "fixed export per size")):
        points = [(r["size"], r[key]) for r in table if r[key] is not None]
        if points:
            speed.plot(*zip(*points, strict=True), marker="o", label=label)
    speed.set_yscale("log")
    speed.set_xlabel("image side (px)")
    speed.set_ylabel("images / s")
    speed.legend(fontsize=8)
    points = [(r["size"], r["dynamic_over_fixed"]) for r in table if r["dynamic_over_fixed"] is not None]
    if points:
        ratio.plot(*zip(*points, strict=True), marker="o")
    ratio.axhline(1.0, color="grey", linewidth=0.8)
    ratio.set_xlabel("image side (px)")
    ratio.set_ylabel("dynamic / fixed throughput")
    o = result["options"]
    fig.suptitle(f"ViT {result['model']['variant']} {result['model']['precision']} on {o['backend']}, batch "
                 f"{o['batch']}, {plural(o['threads'], 'thread')}", fontsize=9)
    for ax in (speed, ratio):
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``bench-res.json``, ``.md`` and ``.png`` in ``out_dir``; returns the paths and any note about the plot."""
    from ..fileio import write_output

    write_output(out_dir / f"{STEM}.json", json.dumps(result, indent=2) + "\n")
    png = out_dir / f"{STEM}.png"
    note = plot(result, png)
    markdown = f"# Throughput versus resolution\n\n{result['created_at']}\n\n{format_table(result)}\n"
    if note is None:
        markdown += f"\n![throughput vs resolution]({png.name})\n"
    write_output(out_dir / f"{STEM}.md", markdown)
    return {"json": str(out_dir / f"{STEM}.json"), "markdown": str(out_dir / f"{STEM}.md"),
            "plot": None if note else str(png), "plot_note": note}
