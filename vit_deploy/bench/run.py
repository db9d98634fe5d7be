"""``run_bench``: every row of the registry on the given artifacts, in one run, round-robin.

The schedule, for each batch size: every worker makes its inputs and runs ``warmup`` calls
(the last of which sizes its timed block: K calls ~ ``min_time`` seconds); then ``repeats``
rounds, in each of which every worker runs one timed block, the order rotating each round.
So every row is timed in every stretch of the run: a burst of load from another process
lowers all rows' numbers alike instead of one row's, and the spread over rounds shows how
noisy the machine was. Throughput is the median over rounds (min-max and IQR kept); latency
percentiles are over all timed calls.

Before the rows, the matrix-multiply ceilings are measured (``ceiling.py``) with the same
thread count, and each row's achieved FLOP/s is reported as a fraction of the ceiling of the
precision its matrix products run in.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..progress import Progress
from .backends import DEVICES, ROWS, Row, find_artifacts, select_rows, skip_reason
from .ceiling import CPU_PRECISIONS, CUDA_PRECISIONS, ceiling_key, gemm_shapes
from .flops import model_flops
from .peers import DEFAULT_CALIB_IMAGES, CalibrationSpec
from .workers import Worker, WorkerSpec

SCHEMA = "vit-deploy/bench"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BenchOptions:
    artifacts: tuple[Path, ...]
    backends: str | tuple[str, ...] = "all"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: int | None = None  # None: the CPUs this process may use
    repeats: int = 5
    min_time: float = 0.5  # seconds per timed block
    warmup: int = 2
    device: str = "cpu"
    baseline: str = "pytorch-fp32"
    ceiling: bool = True
    seed: int = 0
    settle: float = 0.05  # pause before each timed block, so the previous worker's spinning threads go idle
    ceiling_shapes: tuple[tuple[int, int, int], ...] | None = None  # default: the model's MLP GEMMs
    ceiling_min_time: float = 0.3
    calib: str | None = None  # calibration set for the rows bench builds itself (openvino-nncf-int8)
    calib_images: int | None = DEFAULT_CALIB_IMAGES  # a seeded sample of at most this many; None: all
    extra: dict[str, Any] = field(default_factory=dict)  # recorded verbatim in the result (e.g. the command line)


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_options(opts: BenchOptions) -> None:
    """User errors, before anything is started."""
    if not opts.batch_sizes or min(opts.batch_sizes) < 1:
        raise UsageError(f"batch sizes must be >= 1, got {list(opts.batch_sizes)}; e.g. --batch-sizes 1,8,32")
    if opts.repeats < 1:
        raise UsageError(f"--repeats must be >= 1 (got {opts.repeats}); 5 or more shows the spread")
    if opts.warmup < 1:
        raise UsageError(
            f"--warmup must be >= 1 (got {opts.warmup}): the last warm-up call also sizes the timed blocks"
        )
    if not opts.min_time > 0:
        raise UsageError(f"--min-time must be > 0 seconds, got {opts.min_time}")
    if opts.threads is not None and opts.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {opts.threads}")
    if opts.device not in DEVICES:
        raise UsageError(f"--device {opts.device!r} is unknown; choose one of {', '.join(DEVICES)}")
    if opts.baseline not in ROWS:
        raise UsageError(f"--baseline {opts.baseline!r} is unknown; valid: {', '.join(ROWS)}")
    if opts.calib_images is not None and opts.calib_images < 1:
        raise UsageError(f"--calib-images must be >= 1, got {opts.calib_images}")
    if opts.calib is not None and not Path(opts.calib).exists():
        raise UsageError(f"--calib {opts.calib} does not exist; pass a folder of images or a definition file")


def run_bench(opts: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure every selected row at every batch size; returns the result (see report.py for its layout)."""
    from .. import artifact as artifact_view

    check_options(opts)
    rows = select_rows(opts.backends)
    progress = progress or Progress(enabled=False)
    threads = opts.threads or default_threads()
    artifacts, notes = find_artifacts(opts.artifacts)
    fp32 = artifacts["fp32"]
    cfg = artifact_view.open(fp32, verify=False).model_config
    flops = model_flops(cfg)
    for note in notes:
        progress.note(note)

    entries: list[dict[str, Any]] = []
    for row in rows:
        reason = skip_reason(row, artifacts, opts.device, fp32, opts.calib)
        entries.append({"name": row.name, "description": row.description, "compute": row.compute, "peer": row.peer,
                        "artifact": str(artifacts.get(row.artifact, "")) or None,
                        "status": "skipped" if reason else "pending", "reason": reason, "results": []})
    runnable = [(row, e) for row, e in zip(rows, entries, strict=True) if e["status"] == "pending"]
    to_build = [(row, e) for row, e in runnable if row.build]
    progress.total = (opts.ceiling and bool(runnable)) + len(to_build) + 1 + len(opts.batch_sizes)

    load_before = _loadavg()
    started = datetime.now(UTC)
    ceilings: dict[str, Any] = {}
    if opts.ceiling and runnable:
        ceilings = _measure_ceilings(opts, cfg, threads, {row.compute for row, _ in runnable}, progress)

    ctx = multiprocessing.get_context("spawn")
    workers: dict[str, Worker] = {}
    built: dict[str, dict[str, Any]] = {}
    try:
        _build_peers(to_build, fp32, opts, threads, progress, built, notes)
        runnable = [(row, e) for row, e in runnable if e["status"] == "pending"]
        with progress.step(f"Loading {len(runnable)} row(s) in their own processes ({plural(threads, 'thread')} each)"):
            for row, _ in runnable:
                workers[row.name] = Worker(_spec(row, artifacts, threads, opts, built.get(row.name)), ctx)
            for row, entry in runnable:
                ready = workers[row.name].wait_ready()
                if ready["ok"]:
                    entry.update(status="ok", runner=ready["describe"], input=ready["input"],
                                 load_s=round(ready["load_s"], 2), rss_loaded_mib=_round(ready["rss_loaded_mib"], 1))
                    entry["compute"] = ready.get("compute") or row.compute
                else:
                    entry.update(status="failed", reason=f"could not open: {ready['error']}")
                    workers.pop(row.name).close()
        for name, entry in ((e["name"], e) for _, e in runnable if e["status"] == "failed"):
            progress.note(f"  {name}: {entry['reason']}")
        live = [(w, e) for (row, e) in runnable if (w := workers.get(row.name)) is not None]
        for batch in opts.batch_sizes:
            measure_batch(live, batch, opts, progress)
            _print_batch(live, batch, progress)
    finally:
        for w in workers.values():
            w.close()
        for record in built.values():  # a model built outside the cache (it could not be written) lives one run
            if record.get("temporary"):
                shutil.rmtree(record["temporary"], ignore_errors=True)

    result = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": machine_facts(threads, opts.device, load_before),
        "options": {**{k: v for k, v in asdict(opts).items() if k not in ("artifacts", "extra")},
                    "artifacts": [str(a) for a in opts.artifacts], "threads": threads, **opts.extra},
        "model": {"variant": cfg.variant, "img_size": cfg.img_size, "num_classes": cfg.num_classes,
                  "num_tokens": cfg.num_tokens, "gflop_per_image": _sig(flops["gflop"]), "flops": flops},
        "artifacts": {k: str(v) for k, v in artifacts.items()},
        "calibration": ({"source": str(opts.calib), "images": opts.calib_images, "seed": CalibrationSpec.seed}
                        if opts.calib else None),
        "ceilings": ceilings,
        "baseline": opts.baseline,
        "rows": entries,
        "notes": notes,
    }
    _derive(result, opts.device)
    return result


def _spec(row: Row, artifacts: dict[str, Path], threads: int, opts: BenchOptions,
          built: dict[str, Any] | None = None) -> WorkerSpec:
    kwargs = dict(row.open_kwargs)
    if built is not None:  # a row bench built itself: open its model, inputs from the export's manifest
        kwargs.update(model=built["model"], built=built)
    return WorkerSpec(row=row.name, artifact=str(artifacts[row.artifact]), opener=row.opener,
                      open_kwargs=kwargs, threads=threads, device=opts.device, seed=opts.seed)


def _build_peers(
    to_build: list[tuple[Row, dict[str, Any]]], fp32: Path, opts: BenchOptions, threads: int, progress: Progress,
    built: dict[str, dict[str, Any]], notes: list[str],
) -> None:
    """Build (or take from the cache) the model of every row that bench builds itself, each in a fresh process.

    Fills ``built`` (row name -> record) as each finishes, so the caller can remove temporary
    models whatever happens next; what the builder had to say goes to ``notes``. A calibration
    set that cannot be used is the user's error (raised); a quantizer that fails marks its row
    failed with the reason, and the run goes on.
    """
    from concurrent.futures import ProcessPoolExecutor

    from .peers import build_peer

    calib = CalibrationSpec(str(opts.calib), opts.calib_images)
    for row, entry in to_build:
        sample = f"{opts.calib_images} seeded" if opts.calib_images else "all"
        label = f"Building {row.name} from the FP32 export and {opts.calib} ({sample} images; cached after)"
        with progress.step(label), \
                ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                record = pool.submit(build_peer, row.build, str(fp32), calib, threads).result()
            except UsageError:
                raise
            except Exception as e:  # the row fails with the reason; the others still run
                entry.update(status="failed", reason=f"could not build: {type(e).__name__}: {e}")
        if entry["status"] == "failed":
            progress.note(f"  {row.name}: {entry['reason']}")
            continue
        built[row.name] = record
        for note in record.get("notes", []):
            progress.note(f"  {row.name}: {note}")
            notes.append(f"{row.name}: {note}")
        progress.note(f"  {row.name}: {'cached' if record['cached'] else 'built'} {record['model']}"
                      + ("" if record["cached"] else f" ({record['seconds']:.0f} s)"))
        keep = ("model", "cached", "seconds", "quantizer", "calibration", "key", "temporary")
        entry.update(artifact=record["model"], built={k: record[k] for k in keep if k in record})


def _measure_ceilings(
    opts: BenchOptions, cfg: Any, threads: int, computes: set[str], progress: Progress,
) -> dict[str, Any]:
    """The ceilings the rows need (always FP32, BF16, INT8 on CPU), in a fresh process."""
    from concurrent.futures import ProcessPoolExecutor

    from .ceiling import measure_ceilings

    known = CUDA_PRECISIONS if opts.device == "cuda" else CPU_PRECISIONS
    wanted = [p for p in known if p in {"fp32", "bf16", "int8"} | {ceiling_key(c, opts.device) for c in computes}]
    shapes = opts.ceiling_shapes or tuple(gemm_shapes(cfg, opts.device))
    label = f"Measuring the matrix-multiply ceilings ({', '.join(wanted)}; {opts.device}, {plural(threads, 'thread')})"
    with progress.step(label), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        ceilings = pool.submit(measure_ceilings, wanted, shapes, threads, opts.device, opts.ceiling_min_time).result()
    for p, c in ceilings.items():
        unit = "GOP/s" if p == "int8" else "GFLOP/s"
        progress.note(f"  {p:5} {c['gflops']:9.1f} {unit}  ({c['method']}, M,K,N={c['shape']})" if c["gflops"]
                      else f"  {p:5} not measured: {c['error']}")
    return ceilings


def measure_batch(live: list[tuple[Worker, dict[str, Any]]], batch: int, opts: Any,
                   progress: Progress, size: int | None = None) -> None:
    """Warm up every worker at ``batch``, then ``repeats`` round-robin rounds of one timed block each.

    ``opts``: anything with ``repeats``, ``warmup``, ``min_time`` and ``settle`` (BenchOptions, or the
    resolution bench's). ``size``: the images' side (a dynamic-resolution artifact); None: each row's own.
    """
    state: dict[str, dict[str, Any]] = {}
    at = f" at {size}x{size}" if size else ""
    with progress.step(f"Batch {batch}{at}: warm-up, then {opts.repeats} rounds over {len(live)} row(s)"), \
            progress.counter(len(live) * (opts.repeats + 1), f"batch {batch}"):
        for w, entry in live:
            s = state[entry["name"]] = {"blocks": [], "latencies": [], "error": None}
            reply = w.call("batch", batch=batch, **({"size": size} if size else {}))
            if reply["ok"]:
                reply = w.call("run", calls=opts.warmup)
            if not reply["ok"]:
                s["error"] = reply["error"]
            else:
                # the last warm-up call is the best guess of a steady call's time
                s["calls"] = max(1, round(opts.min_time / max(reply["latencies"][-1], 1e-6)))
            progress.tick()
        for r in range(opts.repeats):
            order = live[r % len(live):] + live[: r % len(live)] if live else []
            for w, entry in order:
                s = state[entry["name"]]
                if s["error"] is None:
                    time.sleep(opts.settle)
                    reply = w.call("run", calls=s["calls"])
                    if reply["ok"]:
                        s["blocks"].append((len(reply["latencies"]), reply["elapsed"]))
                        s["latencies"] += reply["latencies"]
                    else:
                        s["error"] = reply["error"]
                progress.tick()
    for w, entry in live:
        s = state[entry["name"]]
        memory = w.call("memory") if s["error"] is None else {"ok": False}
        if s["error"] is not None:
            entry["results"].append({"batch": batch, "status": "failed", "error": s["error"],
                                     **({"size": size} if size else {})})
            continue
        entry["results"].append({"batch": batch, "status": "ok", **({"size": size} if size else {}),
                                 **_stats(batch, s["blocks"], s["latencies"]),
                                 "peak_rss_mib": _round(memory.get("peak_rss_mib"), 1),
                                 "rss_measure": memory.get("rss_measure"),
                                 **({"cuda_peak_mib": _round(memory["cuda_peak_mib"], 1)}
                                    if "cuda_peak_mib" in memory else {})})


def _stats(batch: int, blocks: list[tuple[int, float]], latencies: list[float]) -> dict[str, Any]:
    rates = sorted(n * batch / elapsed for n, elapsed in blocks)
    ms = sorted(x * 1e3 for x in latencies)
    q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else (rates[0],) * 3
    return {
        "img_per_s": round(statistics.median(rates), 3),
        "img_per_s_min": round(rates[0], 3),
        "img_per_s_max": round(rates[-1], 3),
        "img_per_s_iqr": [round(q1, 3), round(q3, 3)],
        "spread_pct": round(100 * (rates[-1] - rates[0]) / statistics.median(rates), 1),
        "latency_ms": {"p50": round(_percentile(ms, 50), 3), "p90": round(_percentile(ms, 90), 3),
                       "p99": round(_percentile(ms, 99), 3), "mean": round(statistics.fmean(ms), 3)},
        "blocks": len(blocks),
        "calls": len(ms),
        "calls_per_block": blocks[0][0],
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), without numpy."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _derive(result: dict[str, Any], device: str) -> None:
    """Per row and batch: achieved GFLOP/s, fraction of its ceiling, ratios to the baseline and the best peer."""
    gflop = result["model"]["flops"]["total"] / 1e9
    ok = [e for e in result["rows"] if e["status"] == "ok"]
    by_batch: dict[int, dict[str, float]] = {}
    for e in ok:
        for r in e["results"]:
            if r["status"] == "ok":
                by_batch.setdefault(r["batch"], {})[e["name"]] = r["img_per_s"]
    for e in ok:
        key = ceiling_key(e["compute"], device)
        ceiling = (result["ceilings"].get(key) or {}).get("gflops")
        e["ceiling"] = key
        for r in e["results"]:
            if r["status"] != "ok":
                continue
            speeds = by_batch[r["batch"]]
            r["gflops"] = _sig(r["img_per_s"] * gflop)
            r["ceiling_fraction"] = round(r["gflops"] / ceiling, 4) if ceiling else None
            base = speeds.get(result["baseline"])
            r["vs_baseline"] = round(r["img_per_s"] / base, 3) if base else None
            peers = {e2["name"]: speeds[e2["name"]] for e2 in ok if e2["peer"] and e2["name"] in speeds}
            if peers:
                best = max(peers, key=lambda n: peers[n])
                r["best_peer"], r["vs_best_peer"] = best, round(r["img_per_s"] / peers[best], 3)
            else:
                r["best_peer"], r["vs_best_peer"] = None, None


def _print_batch(live: list[tuple[Worker, dict[str, Any]]], batch: int, progress: Progress) -> None:
    for _, e in live:
        r = e["results"][-1]
        if r["status"] == "ok":
            progress.note(f"  {e['name']:14} {r['img_per_s']:9.2f} img/s ({r['img_per_s_min']:.2f}-"
                          f"{r['img_per_s_max']:.2f})  p50 {r['latency_ms']['p50']:.1f} ms  "
                          f"peak {r['peak_rss_mib']:.0f} MiB")
        else:
            progress.note(f"  {e['name']:14} failed at batch {batch}: {r['error']}")


def machine_facts(threads: int, device: str, load_before: list[float] | None) -> dict[str, Any]:
    from ..artifact import package_versions

    facts: dict[str, Any] = {
        "cpu": _cpu_model(), "cpus_available": default_threads(), "threads": threads, "device": device,
        "platform": platform.platform(), "loadavg_start": load_before, "loadavg_end": _loadavg(),
        "versions": package_versions("torch", "onnxruntime", "onnx", "numpy", "openvino", "tensorrt"),
    }
    if device == "cuda":
        try:
            from ..trt import device_facts

            facts.update(device_facts())
        except Exception as e:  # torch without CUDA: the rows will have failed with the reason
            facts["gpu"] = f"unknown ({e})"
    return facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _sig(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits (a tiny model's GFLOP would round to 0 at fixed decimals)."""
    return float(f"{x:.{digits}g}")


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)
