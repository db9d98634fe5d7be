"""``vit-deploy compare``, ``inspect`` and ``predict``: the commands that read one artifact and report on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import ValidationFailed
from ..progress import Progress
from ..specs import INT8_TARGETS, QUANTIZED_PRECISIONS
from .options import (
    BatchSize,
    Count,
    artifact_argument,
    artifact_of,
    backend_option,
    calib_method_option,
    echo_json,
    failing_with,
    json_option,
    parse_batch_sizes,
    parse_image_sizes,
    provider_option,
    seed_option,
)


@click.command()
@artifact_argument()
@click.option("--reference", default="pytorch", show_default=True,
              help="'pytorch' (the model rebuilt from the manifest) or another artifact folder, e.g. the FP32 export.")
@click.option("--images", default=None,
              help="Real images: a folder (labels.csv adds accuracy) or a definition file; default: the set the "
                   "artifact was validated on when it is here, else the bundled photo list (calibration/photos.txt).")
@click.option("--random-inputs", is_flag=True,
              help="Compare on seeded random inputs instead (for trained weights, what noise cannot measure is "
                   "reported, not judged: top-1 agreement, and INT8's cosine bounds).")
@click.option("--max-images", type=Count, default=None, help="Use at most N images (seeded sample).")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Batch sizes to run the artifact at.")
@click.option("--sizes", default=None, metavar="N|HxW,...",
              help="A --dynamic-res artifact: image sizes to compare at, e.g. 224,384,320x448 (default: both ends of "
                   "its range, the native size and non-square ones). Real --images at HxW: resized whole.")
@click.option("--weights", default=None,
              help="The checkpoint, when it moved since the export (same bytes: its sha256 is checked).")
@backend_option
@provider_option
@seed_option("random inputs and sampling")
@json_option
@click.pass_context
def compare(
    ctx: click.Context, artifact: Path | None, reference: str, images: str | None, random_inputs: bool,
    max_images: int | None, batch_sizes: str, sizes: str | None, weights: str | None, backend: str | None,
    provider: str, seed: int,
    as_json: bool,
) -> None:
    """Run ARTIFACT and its reference on the same inputs; exit 2 when outside the precision's bounds."""
    from ..compare import CompareOptions, compare_artifact

    artifact = artifact_of(ctx, artifact)
    opts = CompareOptions(artifact=artifact, reference=reference, images=images, random_inputs=random_inputs,
                          batch_sizes=parse_batch_sizes(batch_sizes), max_images=max_images, seed=seed,
                          provider=provider, backend=backend, weights=weights,
                          sizes=parse_image_sizes(sizes) if sizes else None)
    summary = compare_artifact(opts, Progress(enabled=True))
    if not as_json:
        click.echo(compare_text(summary))
    if not summary["passed"]:
        with failing_with(summary):
            raise ValidationFailed(f"{artifact} is outside the {summary['precision']} bounds (table above)")
    if as_json:
        echo_json(summary)


@click.command()
@artifact_argument()
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the artifact's files.")
@click.option("--sensitivity", is_flag=True,
              help="INT8/FP8 per-layer sensitivity and activation statistics on real images (needs --calib).")
@click.option("--precision", "sensitivity_precision", type=click.Choice(QUANTIZED_PRECISIONS), default=None,
              help="--sensitivity: the quantized format (default: the graph's, else int8).")
@click.option("--calib", default=None, help="--sensitivity: calibration images (a folder or a definition file).")
@click.option("--calib-count", type=Count, default=256, show_default=True,
              help="--sensitivity: use at most N calibration images (a seeded sample).")
@click.option("--val", default=None,
              help="--sensitivity: labelled images to score on (a folder with labels.csv); default: the calibration "
                   "images.")
@calib_method_option
@click.option("--target", type=click.Choice(INT8_TARGETS), default=None,
              help="--sensitivity: INT8 target (default: the artifact's, else tensorrt).")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="--sensitivity: also write the report as JSON to this file (never inside an artifact folder).")
@click.option("--force", is_flag=True, help="--report: replace an existing file that is not a sensitivity report.")
@json_option
@click.pass_context
def inspect(
    ctx: click.Context, artifact: Path | None, no_verify: bool, sensitivity: bool,
    sensitivity_precision: str | None, calib: str | None, calib_count: int, val: str | None,
    calib_method: str | None, target: str | None, report: Path | None, force: bool, as_json: bool,
) -> None:
    """Show what ARTIFACT holds: ONNX opset, I/O and ops, what TensorRT will run each op in, or an engine's
    layers and precisions.

    With --sensitivity: where INT8/FP8 loses accuracy, layer by layer (each alone, each left out), on real images.
    """
    if sensitivity:
        from ..fileio import check_output_file, write_output
        from ..sensitivity import is_report, sensitivity_for_artifact

        if report is not None:  # before the slow part: never over the artifact, or a file it did not write
            check_output_file(report, force, is_report, "--report", "inspect --sensitivity")
        result = sensitivity_for_artifact(artifact_of(ctx, artifact), calib, val, calib_count, calib_method, target,
                                          Progress(enabled=True), sensitivity_precision)
        if report is not None:
            write_output(report, json.dumps(result, indent=2))
        if as_json:
            echo_json(result)
        else:
            click.echo(sensitivity_text(result))
        return
    from ..inspection import inspect_artifact

    summary = inspect_artifact(artifact_of(ctx, artifact), verify=not no_verify)
    if as_json:
        echo_json(summary)
    else:
        click.echo(inspection_text(summary))


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="ARTIFACT IMAGES...")
@click.option("--artifact", type=click.Path(path_type=Path), default=None, hidden=True)
@backend_option
@click.option("--top", "top_k", type=Count, default=5, show_default=True, help="Classes to show per image.")
@click.option("--labels", "labels_file", default=None,
              help="A UTF-8 file with one class name per line, one per class (default: ImageNet names for 1000 "
                   "classes).")
@click.option("--short-side", type=Count, default=None,
              help="A --dynamic-res artifact: scale each image's shorter side to N (aspect kept, sides rounded to "
                   "the patch grid, inside the range; default: the native size).")
@click.option("--source", default=None,
              help="Bulk mode: every image of a folder, a list file (one path per line) or an s3:// prefix, into "
                   "--output (needs vit-deploy[scale]).")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Bulk mode: the Parquet dataset folder to write; a rerun skips the images already there.")
@click.option("--ray", "ray_address", default=None,
              help="Bulk mode: run on the Ray cluster at HOST:PORT (default: in this process).")
@click.option("--batch-size", type=BatchSize, default=32, show_default=True, help="Bulk mode: images per batch.")
@click.option("--workers", type=Count, default=None, help="Bulk mode on Ray: runners (default: one per CPU/GPU).")
@click.option("--logits", is_flag=True, help="Bulk mode: also write each image's logits.")
@click.option("--embedding", is_flag=True,
              help="Bulk mode: also write each image's pre-head embedding (the class token after the final "
                   "LayerNorm, what the head reads; not from a TensorRT engine).")
@json_option
def predict(
    paths: tuple[str, ...], artifact: Path | None, backend: str | None, top_k: int, labels_file: str | None,
    short_side: int | None, source: str | None, output: Path | None, ray_address: str | None, batch_size: int,
    workers: int | None, logits: bool, embedding: bool, as_json: bool,
) -> None:
    """Top-k classes with probabilities for each image, from ARTIFACT.

    Bulk mode: predict ARTIFACT --source SRC --output DIR [--ray HOST:PORT] writes a Parquet dataset.
    The old form, IMAGES... --artifact DIR, still works.
    """
    from ..errors import UsageError
    from ..predict import predict as run_predict

    if artifact is None:  # the new form: the artifact first, then the images
        artifact, images = Path(paths[0]), list(paths[1:])
    else:
        images = list(paths)
    if source is not None or output is not None:
        if source is None or output is None or images:
            raise UsageError("bulk mode takes the artifact, --source and --output (no image arguments): "
                             "vit-deploy predict ARTIFACT --source IMAGES --output OUT")
        from .scale import bulk_predict

        return bulk_predict(artifact, source, output, ray_address=ray_address, top_k=top_k, batch_size=batch_size,
                            workers=workers, logits=logits, embedding=embedding, backend=backend,
                            labels_file=labels_file, as_json=as_json)
    if ray_address is not None or workers is not None or logits or embedding:
        raise UsageError("--ray, --workers, --logits and --embedding are for bulk mode: give --source and --output "
                         "too")
    if not images:
        raise UsageError("give the artifact folder, then one or more images: vit-deploy predict ARTIFACT IMAGE...")
    results = run_predict(images, artifact, top_k=top_k, backend=backend, labels_file=labels_file,
                          short_side=short_side)
    if results and results[0].get("warning"):
        click.echo(f"warning: {results[0]['warning']}", err=True)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for r in results:
        click.echo(r["image"] + ("" if r["pretrained"] else "  (random weights: these labels mean nothing)"))
        if "resize" in r:
            click.echo(f"  ({r['resize']})")
        for t in r["top"]:
            click.echo(f"  {t['probability']:7.2%}  {t['label']} ({t['class']})")


def compare_text(summary: dict[str, Any]) -> str:
    """The human-readable report of :func:`~vit_deploy.compare.compare_artifact`."""
    from ..parity.metrics import bound_label, bound_text

    not_gated = summary.get("not_gated") or {}
    bounds = ", ".join(bound_text(k, v) + (" (not gated)" if k in not_gated else "")
                       for k, v in summary["tolerance"].items())
    gate = "" if summary["top1_agreement_gated"] or not_gated else " (top-1 not gated: random weights)"
    several = len(summary.get("image_sizes", [])) > 1
    head = ["size"] * several + ["batch", "max abs", "mean abs", "rel L2", "cosine", "top-1", "top-5"]
    has_acc = any("accuracy" in r["metrics"] for r in summary["rows"])
    if has_acc:
        head.append("accuracy (ref)")
    head.append("verdict")
    lines = [
        f"{summary['precision'].upper()} {summary['kind']} {summary['artifact']} on {summary['candidate']['backend']}",
        f"  reference {summary['reference']}",
        f"  inputs    {summary['inputs']}",
        f"  output    {summary['output']}; bounds: {bounds}{gate}",
        *(f"  not gated {', '.join(bound_label(k) for k, w in not_gated.items() if w == why)}: {why}"
          for why in dict.fromkeys(not_gated.values())),
        "",
    ]
    table = [head]
    for r in summary["rows"]:
        m = r["metrics"]
        cells = [f"{r['size'][0]}x{r['size'][1]}"] * several + [
            str(r["batch"]), f"{m['max_abs']:.3e}", f"{m['mean_abs']:.3e}", f"{m['rel_l2']:.3e}",
            f"{m['min_cosine']:.7f}", f"{m['top1_agreement']:.2%}", f"{m['top5_agreement']:.2%}",
        ]
        if has_acc:
            cells.append(f"{m['accuracy']:.2%} ({m['reference_accuracy']:.2%})")
        cells.append("PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"]))
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:  # right-aligned numbers; the verdict, last, left-aligned
        cells = [c.rjust(w) for c, w in zip(row[:-1], widths, strict=False)]
        lines.append("  " + "  ".join([*cells, row[-1]]))
    lines += ["", f"verdict: {'PASS' if summary['passed'] else 'FAIL'}"]
    return "\n".join(lines)


def inspection_text(s: dict[str, Any]) -> str:
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
    if s.get("dynamic_resolution"):
        d = s["dynamic_resolution"]
        lines.append(f"  sizes     height and width each a multiple of {d['step']} from {d['min']} to {d['max']} "
                     f"(native {d['native']})")
    if "onnx" in s:
        o = s["onnx"]
        lines.append(f"  graph     opset {o['opset']}, IR {o['ir_version']}, {o['nodes']} nodes, "
                     f"producer {o['producer']}")
        lines.append("  weights   " + ", ".join(f"{n} {t}" for t, n in o["initializer_types"].items()))
        if o["qdq_pairs"]:
            lines.append(f"  Q/DQ      {o['ops'].get('QuantizeLinear', 0)} Q, {o['ops'].get('DequantizeLinear', 0)} DQ")
        policy = s.get("precision_policy") or {}
        quantized = policy.get("quantized_weight_layers", policy.get("int8_weight_layers"))
        if quantized is not None:
            kept = policy.get("float_layer_names") or []
            lines.append(f"  {policy.get('format', 'int8').upper():<9} {quantized} of {quantized + len(kept)} weight "
                         "layers; " + (f"left in float: {', '.join(kept)}" if kept else "none left in float"))
        lines.append("  ops       " + ", ".join(f"{op} {n}" for op, n in o["ops"].items()))
        lines += readiness_lines(o["tensorrt_readiness"])
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


def sensitivity_text(r: dict[str, Any]) -> str:
    """The report as tables: the whole graph, layers by the error they add alone, then tensors."""
    has_acc = r["images"]["labels"]

    def cells(m: dict[str, float]) -> str:
        acc = f" {100 * m['accuracy']:6.1f}%" if has_acc else ""
        return f"{100 * m['top1_agreement']:6.1f}% {m['mean_cosine']:8.5f} {m['min_cosine']:7.4f}{acc}"

    head = "  agree   mean cos   worst" + ("     acc" if has_acc else "")
    fp32 = f", FP32 top-1 {100 * r['fp32']['accuracy']:.1f}%" if has_acc else ""
    label = r.get("precision", "int8").upper()
    lines = [
        f"{label} sensitivity of {r['artifact']} ({r['target']} target, {r['method']} ranges, "
        f"{r['images']['calibration']} calibration / {r['images']['validation']} scoring images{fp32})",
        f"  all {label}: {cells(r['quantized'])}",
        "",
        f"{'layer':<18}{f'only this layer {label}':<{len(head) + 2}}| all {label} but this layer",
        f"{'':<18}{head}  | {head}",
    ]
    for layer in sorted(r["layers"], key=lambda item: item["only"]["mean_cosine"]):
        lines.append(f"{layer['layer']:<18}{cells(layer['only'])}  | {cells(layer['all_but'])}")
    lines += ["", f"{'activation read by':<22}{'max|x|':>8}{'outliers':>9}{'alpha':>7}{'clip':>8}{'clipped':>10}"]
    for t in sorted(r["tensors"], key=lambda item: -item["max_abs"]):
        alpha = "-" if t["smoothquant_alpha"] is None else f"{t['smoothquant_alpha']:.2f}"
        lines.append(f"{','.join(t['read_by'])[:21]:<22}{t['max_abs']:>8.2f}{t['outlier_channels']:>9}{alpha:>7}"
                     f"{t['clip']:>8.3f}{100 * t['clipped_fraction']:>9.3f}%")
    lines.append("(outliers: channels whose max |x| is over 8x the median channel's, before SmoothQuant; "
                 f"clip: the {label} range after it)")
    return "\n".join(lines)


def readiness_lines(report: dict[str, Any]) -> list[str]:
    """What TensorRT will run the graph in (``onnx.readiness``): GEMMs, float ops, attention blocks."""
    from ..onnx.readiness import summary_line

    lines = [f"  tensorrt  {summary_line(report)}"]
    for op, types in report["float_ops"].items():
        lines.append(f"            {op:<20}" + ", ".join(f"{n} {t.upper()}" for t, n in types.items()))
    reasons = sorted({a["reason"] for a in report["attention"]})
    lines += [f"  attention {reason}" for reason in reasons]
    if report["fp32_compute_outside_policy"]:
        lines.append(f"  FP32      {report['fp32_compute_outside_policy']} compute ops outside the float policy, e.g. "
                     + ", ".join(report["fp32_compute_examples"][:3]))
    return lines
