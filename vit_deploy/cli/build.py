"""``vit-deploy build-engine``: an export -> a validated FP16/INT8 graph (CPU) -> a validated TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..artifact import Artifact
from ..errors import UsageError
from ..progress import Progress
from ..specs import INT8_TARGETS
from .options import (
    BatchSize,
    Count,
    FiniteFloat,
    NonNegative,
    PathType,
    Resolution,
    alias,
    aliased,
    artifact_argument,
    artifact_of,
    calib_method_option,
    echo_json,
    failing_with,
    out_option,
    parse_image_sizes,
    writer_options,
)


@click.command("build-engine")
@artifact_argument()
@click.option("--fp16", is_flag=True, help="FP16 mixed precision (FP32 I/O).")
@click.option("--int8", is_flag=True, help="INT8 explicit Q/DQ from calibration, FP16 float parts (needs --calib).")
@click.option("--fp8", is_flag=True, help="FP8 (E4M3) explicit Q/DQ from calibration, FP16 float parts (needs --calib; "
              "the engine needs a GPU of compute capability 8.9 or newer).")
@click.option("--calib", default=None, help="Calibration images: a folder, or a definition file (calibration/*.txt).")
@click.option("--target", type=click.Choice(INT8_TARGETS), default="tensorrt", show_default=True,
              help="INT8 graph for TensorRT, or for the OpenVINO CPU path (FP32 floats, float attention; no engine).")
@click.option("--quantize-attention/--float-attention", default=None,
              help="INT8/FP8: Q/DQ on both attention MatMuls in the pattern TensorRT fuses (skipped, and said, where "
                   "it cannot fuse); default: float attention for both (measured on a real ViT: docs/precision.md).")
@calib_method_option
@click.option("--calib-count", type=Count, default=256, show_default=True,
              help="Use at most N calibration images (a seeded sample).")
@alias("--calib-images", "calib_count", type=Count)
@click.option("--accuracy-budget", type=FiniteFloat(0, 100), default=None,
              help="INT8/FP8: also check top-1 agreement: the points (vs FP32, on the calibration images) the graph "
                   "may lose before its most sensitive weight layers are left in float. Always checked: the mean "
                   "cosine of --budget-cosine.")
@click.option("--budget-cosine", type=FiniteFloat(0, 1), default=None,
              help="INT8/FP8: the mean cosine (vs FP32, on the calibration images) below which the most sensitive "
                   "weight layers are left in float (default: 0.998 INT8, 0.994 FP8).")
@click.option("--max-float-layers", type=NonNegative, default=None,
              help="INT8/FP8: at most N weight layers may be left in float to meet the budget (default: 10%; 0: no "
                   "fallback, validation alone judges the graph).")
@click.option("--calib-batch", type=BatchSize, default=8, show_default=True, help="Calibration batch size.")
@click.option("--val", default=None,
              help="Images to validate on (a folder with labels.csv adds accuracy); default: the calibration set.")
@alias("--val-images", "val")
@out_option("Folder of the new FP16/INT8/FP8 graph (default: <artifact>-<precision>); the engine goes beside it "
            "as <graph>-trt. Without --fp16/--int8/--fp8: the engine's folder.")
@alias("--engine-out", "engine_out", type=PathType)
@click.option("--min-batch", type=BatchSize, default=1, show_default=True,
              help="Smallest batch of the engine's profile.")
@click.option("--opt-batch", type=BatchSize, default=8, show_default=True, help="Batch TensorRT tunes its kernels for.")
@click.option("--max-batch", type=BatchSize, default=64, show_default=True,
              help="Largest batch of the engine's profile.")
@click.option("--min-res", type=Resolution, default=None,
              help="A --dynamic-res export: the profile's smallest image side (default: the export's MIN).")
@click.option("--opt-res", default=None, metavar="N|HxW", callback=lambda ctx, param, value: _size(value),
              help="A --dynamic-res export: the image size TensorRT tunes its kernels for (default: the native --res).")
@click.option("--max-res", type=Resolution, default=None,
              help="A --dynamic-res export: the profile's largest image side (default: the export's MAX).")
@click.option("--workspace-mib", type=Count, default=None, help="Builder workspace limit in MiB (default: TensorRT's).")
@click.option("--optimization-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level, 0-5.")
@click.option("--timing-cache", type=PathType, default=None,
              help="Timing cache file, reused across builds (default: one per TensorRT version and GPU in the cache).")
@click.option("--hardware-compatible", is_flag=True, help="A plan that runs on any Ampere-or-newer GPU (slower).")
@click.option("--version-compatible", is_flag=True, help="A plan that later TensorRT versions can run (slower).")
@writer_options("sampling images")
@click.pass_context
def build_engine(
    ctx: click.Context, artifact: Path | None, fp16: bool, int8: bool, fp8: bool, calib: str | None, target: str,
    quantize_attention: bool | None, calib_method: str | None, calib_count: int, accuracy_budget: float | None,
    budget_cosine: float | None, max_float_layers: int | None, calib_batch: int, val: str | None, out: Path | None,
    min_batch: int, opt_batch: int, max_batch: int, min_res: int | None, opt_res: tuple[int, int] | None,
    max_res: int | None, workspace_mib: int | None, optimization_level: int, timing_cache: Path | None,
    hardware_compatible: bool, version_compatible: bool, force: bool, seed: int, as_json: bool,
) -> None:
    """Make the FP16/INT8/FP8 graph of ARTIFACT (validated on the CPU), then build and validate the TensorRT engine.

    ARTIFACT: an FP32 export, or an FP16/INT8/FP8 graph folder (default: the newest export in ./artifacts).
    Exit 3 when the graph is ready but this machine cannot build the engine (no TensorRT or GPU, or a GPU
    without the precision's tensor cores).
    """
    from ..steps.engine import EngineOptions
    from ..steps.pipeline import build
    from ..steps.precision import PrecisionOptions
    from ..steps.validate import raise_if_failed

    chosen = [name for name, on in (("fp16", fp16), ("int8", int8), ("fp8", fp8)) if on]
    if len(chosen) > 1:
        raise UsageError(f"--{' --'.join(chosen)}: one build makes one precision graph; run build-engine once for "
                         "each (they share the export, and the calibration cache between INT8 and FP8 runs)")
    precision = chosen[0] if chosen else None
    out = aliased(ctx, "out", out)
    engine_out = aliased(ctx, "engine_out", None)
    graph = PrecisionOptions(
        precision=precision, artifact=artifact_of(ctx, artifact, required=False), out_dir=out if precision else None,
        force=force, calib=calib, calib_method=calib_method, calib_images=aliased(ctx, "calib_count", calib_count, 256),
        calib_batch=calib_batch, val_images=aliased(ctx, "val", val), seed=seed, target=target,
        accuracy_budget=accuracy_budget, budget_cosine=budget_cosine, max_float_layers=max_float_layers,
        quantize_attention=quantize_attention,
    )
    engine = EngineOptions(
        out_dir=engine_out or (None if precision else out), force=force,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, min_res=min_res, opt_res=opt_res,
        max_res=max_res, workspace_mib=workspace_mib,
        optimization_level=optimization_level, timing_cache=timing_cache, hardware_compatible=hardware_compatible,
        version_compatible=version_compatible, val_images=graph.val_images, seed=seed,
    )
    summary: dict[str, Any] = {}

    def on_graph(s: dict[str, Any]) -> None:
        if not as_json:
            click.echo(precision_text(s))

    with failing_with(summary):  # exit 2/3 after the graph was made: --json still reports what was made
        build(graph, engine, summary, Progress(enabled=True), on_graph)
        if "engine" in summary:
            if not as_json:
                click.echo(engine_text(summary["engine"]))
            raise_if_failed(summary["engine"])
    if as_json:
        echo_json(summary)
    elif "engine" not in summary:  # --target cpu: the graph is the finished artifact
        click.echo(f"CPU graph ready (no TensorRT engine for --target cpu): `vit_deploy.runtime.open('"
                   f"{summary['artifact']}')` and `vit-deploy compare {summary['artifact']}` run it on OpenVINO")


def _size(value: str | None) -> tuple[int, int] | None:
    """"384" -> (384, 384), "320x448" -> (320, 448); checked against the export's range later."""
    if value is None:
        return None
    sizes = parse_image_sizes(value, "--opt-res")
    if len(sizes) != 1:
        raise UsageError(f"--opt-res {value!r} names {len(sizes)} sizes; give one, N or HxW")
    return sizes[0]


def engine_text(s: dict[str, Any]) -> str:
    t, v = s["tensorrt"], s["validation"]
    met = v["metrics"]
    counts = (t.get("inspector") or {}).get("precision_counts") or {}
    return "\n".join([
        f"TensorRT {t['version']} engine ({s['precision'].upper()}) for {t['gpu']} "
        f"(compute capability {t['compute_capability']}) from {s['parent']}",
        f"  file      {s['model_file']} ({s['bytes'] / 1e6:.1f} MB)",
        f"  profile   {t.get('profile')}",
        "  layers    " + (", ".join(f"{p} {n}" for p, n in counts.items()) or "not inspected"),
        "  attention " + _fused_text((t.get("inspector") or {}).get("fused_attention")),
        f"  checked   on {v['inputs']} at batch {', '.join(map(str, v['batch_sizes']))} vs {v['reference']}",
        *([f"  sizes     {', '.join(f'{h}x{w}' for h, w in v['image_sizes'])}"] if len(v["image_sizes"]) > 1 else []),
        f"  parity    cosine {met['min_cosine']:.7f}, rel L2 {met['rel_l2']:.2e}, "
        f"top-1 agreement {met['top1_agreement']:.2%}",
        f"  verdict   {'PASS' if v['passed'] else 'FAIL: ' + '; '.join(v['failures'])}",
    ])


def _fused_text(fused: dict[str, Any] | None) -> str:
    if not fused:
        return "not inspected"
    if not fused["layers"]:
        return "not fused (no MHA kernel among the layers)"
    return f"{fused['layers']} fused MHA layer(s), reading " + ", ".join(
        f"{p} {n}" for p, n in fused["precisions"].items())


def precision_text(s: dict[str, Any]) -> str:
    art, v = Artifact(Path(s["artifact"]), s["manifest"]), s["validation"]
    met, tol = v["metrics"], v["tolerance"]
    lines = [
        f"{art.precision.upper()} graph of {art.variant} @ {art.img_size} from {s['parent']}",
        f"  file      {s['model_file']} ({s['bytes'] / 1e6:.1f} MB)",
        f"  policy    {policy_text(art.section('precision_policy'))}",
    ]
    if art.section("tensorrt_readiness"):
        lines.append(f"  tensorrt  {art.section('tensorrt_readiness')['summary']}")
    if art.section("calibration"):
        c = art.section("calibration")
        at = f" at {', '.join(f'{h}x{w}' for h, w in c['sizes'])}" if len(c.get("sizes", [])) > 1 else ""
        lines.append(f"  calib     {c['images']} images{at} ({c['skipped']} skipped), {c['method']}, "
                     f"batch {c['batch']}")

    def bound(key: str) -> str:
        return f" (>= {tol[key]})" if tol.get(key) is not None else ""

    lines += [
        f"  checked   on {v['inputs']} vs {v['reference']}",
        f"  parity    cosine worst {met['min_cosine']:.7f}{bound('min_cosine')}, mean {met['mean_cosine']:.7f}"
        f"{bound('min_mean_cosine')}, rel L2 {met['rel_l2']:.2e}, top-1 agreement {met['top1_agreement']:.2%}"
        + ("" if v["top1_agreement_gated"] else " (not gated: random weights)"),
    ]
    if "accuracy" in met:
        interval = ""
        if "accuracy_drop_ci95_low" in met:
            interval = (f"; 95% intervals: drop {met['accuracy_drop_ci95_low']:.2f} to "
                        f"{met['accuracy_drop_ci95_high']:.2f}, agreement {met['top1_agreement_ci95_low']:.1%} to "
                        f"{met['top1_agreement_ci95_high']:.1%}")
        lines.append(f"  accuracy  top-1 {met['accuracy']:.2%} vs FP32 {met['reference_accuracy']:.2%} "
                     f"(drop {met['accuracy_drop_points']:.2f} points, limit {tol.get('max_accuracy_drop')}{interval})")
    lines.append(f"  verdict   {'PASS' if v['passed'] else 'FAIL: ' + '; '.join(v['failures'])}")
    return "\n".join(lines)


def policy_text(policy: dict[str, Any]) -> str:
    if "format" not in policy and "keep_fp32_ops" in policy:
        return f"FP16, kept in FP32: {', '.join(policy['keep_fp32_ops']) or 'nothing'}; FP32 inputs/outputs"
    kept = policy.get("float_layer_names") or []
    quantized = policy.get("quantized_weight_layers", policy.get("int8_weight_layers", 0))
    label = policy.get("format", "int8").upper()
    return (f"{label} Q/DQ on {quantized} of {quantized + len(kept)} weight layers"
            f"{' (float: ' + ', '.join(kept) + ')' if kept else ''}; float parts {policy.get('float_parts', 'fp32')}; "
            f"attention {policy['attention']}")
