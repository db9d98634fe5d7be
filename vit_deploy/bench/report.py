"""The benchmark result as a table, JSON, a Markdown report and a PNG plot.

Result layout (``run.run_bench``; JSON as it is)::

    schema, schema_version, created_at, duration_s, machine {cpu, threads, loadavg_start/end, versions, ...},
    options {...}, model {variant, img_size, gflop_per_image, flops {total, breakdown, per_block}},
    artifacts {key: folder}, ceilings {precision: {gflops, shape, method, runs}}, baseline,
    calibration {source, images, seed} (with --calib: for the rows bench builds itself) or null,
    rows [{name, status ("ok" | "skipped" | "failed"), reason, compute, ceiling, peer, runner {...},
           built {model, cached, seconds, quantizer, calibration, key} (rows bench built itself),
           results [{batch, img_per_s, img_per_s_min/_max/_iqr, spread_pct, latency_ms {p50, p90, p99, mean},
                     calls, peak_rss_mib, gflops, ceiling_fraction, vs_baseline, best_peer, vs_best_peer}]}]

matplotlib is optional (``pip install vit-deploy[bench]``): without it the plot is skipped
with a note, never an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import write_output
from .run import plural

OUTPUT_SUFFIXES = (".json", ".md", ".png")  # what write_outputs writes, the JSON first
PLOT_MISSING = "plot skipped: matplotlib is not installed (pip install 'vit-deploy[bench]')"


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of every row and batch size, with the run's facts above and skipped rows below."""
    m, machine = result["model"], result["machine"]
    base = result["baseline"]
    lines = [
        f"ViT {m['variant']} @ {m['img_size']} ({m['num_classes']} classes): {_gflop(m['gflop_per_image'])} GFLOP per "
        "image (matrix products, 2 FLOP per multiply-add)",
        f"{machine['cpu']}; device {machine['device']}"
        + (f" ({machine['gpu']})" if machine.get("gpu") else "")
        + f"; {plural(machine['threads'], 'thread')}; load average {_load(machine['loadavg_start'])} at start, "
        f"{_load(machine['loadavg_end'])} at end",
    ]
    if result["ceilings"]:
        lines.append("Matrix-multiply ceilings measured in this run: " + ", ".join(
            f"{p} {c['gflops']:.0f} {'GOP/s' if p == 'int8' else 'GFLOP/s'}" if c.get("gflops") else f"{p} n/a"
            for p, c in result["ceilings"].items()))
    lines += [
        "",
        f"| backend | batch | img/s (median) | min-max (spread) | p50 ms | p90 ms | p99 ms | peak RSS MiB | "
        f"GFLOP/s | of ceiling | x {base} | x best peer |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for e in result["rows"]:
        if e["status"] != "ok":
            continue
        for r in e["results"]:
            if r["status"] != "ok":
                lines.append(f"| {e['name']} | {r['batch']} | failed: {r['error']} |" + " |" * 9)
                continue
            lat = r["latency_ms"]
            frac = f"{r['ceiling_fraction']:.0%} {e['ceiling']}" if r.get("ceiling_fraction") is not None else "n/a"
            peer = f"{r['vs_best_peer']:.2f} ({r['best_peer']})" if r.get("vs_best_peer") is not None else "n/a"
            vs_base = f"{r['vs_baseline']:.2f}" if r.get("vs_baseline") is not None else "n/a"
            lines.append(
                f"| {e['name']} | {r['batch']} | {r['img_per_s']:.2f} | {r['img_per_s_min']:.2f}-"
                f"{r['img_per_s_max']:.2f} ({r['spread_pct']:.0f}%) | {lat['p50']:.1f} | {lat['p90']:.1f} | "
                f"{lat['p99']:.1f} | {_num(r.get('peak_rss_mib'), '.0f')} | {r['gflops']:.1f} | {frac} | {vs_base} | "
                f"{peer} |"
            )
    others = [e for e in result["rows"] if e["status"] != "ok"]
    if others:
        lines += ["", "Not measured:"]
        lines += [f"- {e['name']} ({e['status']}): {e['reason']}" for e in others]
    return "\n".join(lines)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's speed targets this result can speak to: [{target, measured, met (True/False/None)}]."""
    rows = {e["name"]: {r["batch"]: r for r in e["results"] if r["status"] == "ok"}
            for e in result["rows"] if e["status"] == "ok"}
    out = []
    if result["machine"]["device"] == "cpu":
        ort, torch = rows.get("ort-fp32", {}), rows.get("pytorch-fp32", {})
        for batch in (1, 8):
            target = f"ONNX Runtime FP32 >= 1.0x PyTorch eager FP32 at batch {batch}"
            if batch in ort and batch in torch:
                ratio = ort[batch]["img_per_s"] / torch[batch]["img_per_s"]
                out.append({"target": target, "measured": f"{ratio:.2f}x", "met": ratio >= 1.0})
            else:
                out.append({"target": target, "measured": "not in this run", "met": None})
        out.append(_cpu_path_target(rows))
        out.append(_int8_cpu_target(rows))
    else:
        m = result["model"]
        target = "TensorRT FP16 on b16@384 at batch 64 >= 60% of the GPU's FP16 matrix ceiling"
        r = rows.get("tensorrt-fp16", {}).get(64)
        if (m["variant"], m["img_size"]) != ("b16", 384) or r is None or r.get("ceiling_fraction") is None:
            out.append({"target": target, "measured": "not in this run (needs b16@384, tensorrt-fp16, batch 64)",
                        "met": None})
        else:
            fraction = r["ceiling_fraction"]
            out.append({"target": target, "measured": f"{fraction:.0%}", "met": fraction >= 0.6})
    return out


def _cpu_path_target(rows: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Best vit-deploy CPU row vs the faster of PyTorch bf16 autocast and OpenVINO, batch 8."""
    from .backends import ROWS

    target = "best vit-deploy CPU path >= 1.2x the faster of PyTorch bf16 autocast and OpenVINO at batch 8"
    peers = {n: r[8]["img_per_s"] for n, r in rows.items() if n in ("pytorch-bf16", "openvino") and 8 in r}
    ours = {n: r[8]["img_per_s"] for n, r in rows.items()
            if 8 in r and n in ROWS and not ROWS[n].peer and not n.startswith("pytorch")}
    if not peers or not ours:
        return {"target": target, "measured": "not in this run (needs a peer and a vit-deploy row at batch 8)",
                "met": None}
    best, peer = max(ours, key=ours.get), max(peers, key=peers.get)
    ratio = ours[best] / peers[peer]
    return {"target": target, "measured": f"{ratio:.2f}x ({best} vs {peer})", "met": ratio >= 1.2}


def _int8_cpu_target(rows: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """vit-deploy's INT8 CPU path (--target cpu graph on OpenVINO) vs OpenVINO + NNCF INT8 of the same export."""
    target = "vit-deploy INT8 on OpenVINO (--target cpu) >= 1.2x OpenVINO + NNCF INT8 at batch 8"
    ours, peer = rows.get("openvino-int8", {}).get(8), rows.get("openvino-nncf-int8", {}).get(8)
    if ours is None or peer is None:
        return {"target": target, "met": None,
                "measured": "not in this run (needs openvino-int8 and openvino-nncf-int8 (--calib) at batch 8)"}
    ratio = ours["img_per_s"] / peer["img_per_s"]
    return {"target": target, "measured": f"{ratio:.2f}x", "met": ratio >= 1.2}


def format_targets(items: list[dict[str, Any]]) -> str:
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    return "\n".join(f"- {t['target']}: {t['measured']} ({verdict[t['met']]})" for t in items)


def plot(result: dict[str, Any], path: Path) -> str | None:
    """Throughput vs batch per row (log-x), and fraction of ceiling beside it; returns a note when skipped."""
    try:
        import matplotlib
    except ImportError:
        return PLOT_MISSING
    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ok = [e for e in result["rows"] if e["status"] == "ok" and any(r["status"] == "ok" for r in e["results"])]
    if not ok:
        return "plot skipped: no row was measured"
    m = result["model"]
    has_ceiling = any(r.get("ceiling_fraction") is not None for e in ok for r in e["results"] if r["status"] == "ok")
    fig, axes = plt.subplots(1, 2 if has_ceiling else 1, figsize=(13 if has_ceiling else 8, 4.5), squeeze=False)
    speed, frac = axes[0][0], axes[0][1] if has_ceiling else None
    for e in ok:
        rs = [r for r in e["results"] if r["status"] == "ok"]
        batches = [r["batch"] for r in rs]
        style = {"linestyle": "--" if e["peer"] else "-", "marker": "o", "label": e["name"]}
        ys = [r["img_per_s"] for r in rs]
        err = [[y - r["img_per_s_min"] for y, r in zip(ys, rs, strict=True)],
               [r["img_per_s_max"] - y for y, r in zip(ys, rs, strict=True)]]
        speed.errorbar(batches, ys, yerr=err, capsize=3, **style)
        if frac is not None:
            fr = [(r["batch"], 100 * r["ceiling_fraction"]) for r in rs if r.get("ceiling_fraction") is not None]
            if fr:
                frac.plot([b for b, _ in fr], [f for _, f in fr], **{**style, "label": f"{e['name']} ({e['ceiling']})"})
    title = (f"ViT {m['variant']}@{m['img_size']}, {result['machine']['device']}, "
             f"{plural(result['machine']['threads'], 'thread')} (bars: min-max over rounds)")
    for ax in (speed, frac):
        if ax is None:
            continue
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["options"]["batch_sizes"], [str(b) for b in result["options"]["batch_sizes"]])
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
    speed.set_ylabel("images / s")
    speed.set_yscale("log")
    # plain numbers at 1-2-3-4-5-7 steps instead of 10^x labels
    speed.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 4.0, 5.0, 7.0)))
    speed.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    speed.yaxis.set_minor_formatter(NullFormatter())
    speed.set_title(title, fontsize=9)
    if frac is not None:
        frac.set_ylabel("% of the matrix-multiply ceiling")
        frac.set_ylim(bottom=0)
        frac.set_title("achieved FLOP/s / measured ceiling of the row's precision", fontsize=9)
    # one legend, outside the plots (same colours on both; the right one names each row's ceiling)
    (frac or speed).legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def markdown_report(result: dict[str, Any], plot_name: str | None) -> str:
    opts = result["options"]
    parts = [
        f"# Benchmark: ViT {result['model']['variant']} @ {result['model']['img_size']}",
        "",
        f"{result['created_at']}, {result['duration_s']:.0f} s; batch sizes {opts['batch_sizes']}, "
        f"{opts['repeats']} rounds of >= {opts['min_time']} s blocks after {opts['warmup']} warm-up calls.",
        "",
        format_table(result),
        "",
        "## Targets",
        format_targets(targets(result)),
    ]
    if plot_name:
        parts += ["", f"![throughput vs batch]({plot_name})"]
    if result["notes"]:
        parts += ["", "## Notes", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(parts) + "\n"


def write_outputs(result: dict[str, Any], out_dir: Path, stem: str = "bench") -> dict[str, Any]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``; returns the paths and any note."""
    write_output(out_dir / f"{stem}.json", json.dumps(result, indent=2) + "\n")  # first: it makes the folder
    png = out_dir / f"{stem}.png"
    note = plot(result, png)
    write_output(out_dir / f"{stem}.md", markdown_report(result, None if note else png.name))
    return {"json": str(out_dir / f"{stem}.json"), "markdown": str(out_dir / f"{stem}.md"),
            "plot": None if note else str(png), "plot_note": note}


def _gflop(g: float) -> str:
    return f"{g:.2f}" if g >= 0.1 else f"{g:.2e}"


def _load(load: list[float] | None) -> str:
    return "n/a" if not load else f"{load[0]:.2f}"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)
