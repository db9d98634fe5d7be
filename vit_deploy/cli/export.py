"""``vit-deploy export``: a checkpoint (or a random init) -> a validated FP32 ONNX artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..artifact import Artifact
from ..progress import Progress
from ..specs import DEFAULT_RESOLUTION, VARIANTS
from .options import (
    NumClasses,
    Resolution,
    aliased,
    echo_json,
    failing_with,
    out_option,
    writer_options,
)


@click.command()
@click.option("--model", "variant", required=True, help=f"ViT variant: {', '.join(VARIANTS)}.")
@click.option("--res", "img_size", type=Resolution, default=DEFAULT_RESOLUTION, show_default=True,
              help="Input resolution (square); a multiple of the patch size.")
@click.option("--weights", default=None,
              help="Checkpoint: .pth/.pt/.safetensors (timm or Hugging Face), JAX .npz, a Hugging Face "
                   "folder, or a hub id (hf:ORG/NAME, timm:NAME; needs network). Omit for random init.")
@click.option("--num-classes", type=NumClasses, default=None, help="Classes of the head (default 1000).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17-20).")
@click.option("--dynamic-res", "dynamic_res", default=None, metavar="MIN:MAX",
              help="One graph for every image size: height and width each any multiple of the patch size in "
                   "[MIN, MAX] (--res, the native size, inside); position embeddings resampled in the graph.")
@out_option("Artifact folder (default: artifacts/<model>-<res>, with -dyn<MIN>-<MAX> for --dynamic-res).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim simplification.")
@click.option("--resize", type=int, default=None,
              help="Preprocessing: resize the shorter side to N px before the center crop of --res "
                   "(default: the checkpoint's config, else 256 at 224 and --res elsewhere).")
@click.option("--crop-pct", type=float, default=None,
              help="Preprocessing: the center crop's fraction of the resize, timm's crop_pct: "
                   "--resize = floor(res / crop_pct), e.g. 0.9 at 224 is 248.")
@click.option("--mean", default=None, callback=lambda ctx, param, value: _channels(param, value),
              help="Preprocessing: per-channel mean on 0..1 pixels, 1 or 3 comma-separated numbers "
                   "(e.g. 0.485,0.456,0.406).")
@click.option("--std", default=None, callback=lambda ctx, param, value: _channels(param, value),
              help="Preprocessing: per-channel std on 0..1 pixels, 1 or 3 comma-separated numbers above 0.")
@writer_options("random init and validation inputs")
@click.pass_context
def export(
    ctx: click.Context, variant: str, img_size: int, weights: str | None, num_classes: int | None, opset: int,
    dynamic_res: str | None, out: Path | None, no_simplify: bool, resize: int | None, crop_pct: float | None,
    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, force: bool, seed: int, as_json: bool,
) -> None:
    """Export a ViT to a validated ONNX artifact with a dynamic batch dimension (and, with --dynamic-res, dynamic
    image height and width)."""
    from ..steps.export import ExportOptions, export_artifact, preflight
    from ..steps.validate import raise_if_failed

    opts = ExportOptions(variant=variant, img_size=img_size, num_classes=num_classes, weights=weights, opset=opset,
                         out_dir=aliased(ctx, "out", out), simplify=not no_simplify, force=force, seed=seed,
                         resize=resize, crop_pct=crop_pct, mean=mean, std=std, dynamic_res=dynamic_res)
    preflight(opts)  # bad names, sizes, opsets and output folders fail before anything slow
    if weights is None:
        click.secho(
            f"WARNING: no --weights given: {variant} gets RANDOM weights (seed {seed}), it is NOT PRETRAINED "
            "and its predictions mean nothing. Pass --weights FILE or a hub id for a real model.",
            fg="yellow", bold=True, err=True,
        )
    summary = export_artifact(opts, Progress(enabled=True))
    if not as_json:
        click.echo(export_text(summary))
    with failing_with(summary):
        raise_if_failed(summary)
    if as_json:
        echo_json(summary)


def _channels(param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """"0.485,0.456,0.406" -> floats; the values themselves are checked with the rest of the preprocessing."""
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not comma-separated numbers, e.g. 0.5,0.5,0.5", param=param) from None


def export_text(s: dict[str, Any]) -> str:
    art, v = Artifact(Path(s["artifact"]), s["manifest"]), s["validation"]
    io, onnx_section = art.io, art.section("onnx")
    pretrained = "pretrained" if art.pretrained else "NOT PRETRAINED"
    shape = lambda e: f"{e['name']} [{', '.join(map(str, e['shape']))}] {e['dtype']}"  # noqa: E731
    simplified = "onnxsim" if s["simplified"] else f"not simplified: {onnx_section['simplify_note']}"
    w, tol = v["metrics"], v["tolerance"]
    batches = ",".join(str(b) for b in v["batch_sizes"])
    verdict = "PASS" if v["passed"] else "FAIL"
    sizes = art.resolution_range
    lines = [
        f"Exported {art.variant} @ {art.img_size} ({art.num_classes} classes, {pretrained})",
        f"  file      {s['model_file']}",
        f"  size      {s['bytes'] / 1e6:.1f} MB in {len(s['files'])} file(s)",
        f"  nodes     {s['nodes_exported']} -> {s['nodes']} ({simplified})",
        f"  graph     opset {onnx_section['opset']}: {shape(io['inputs'][0])} -> {shape(io['outputs'][0])}",
    ]
    if sizes:
        checked = ", ".join(f"{h}x{w}" for h, w in v["image_sizes"])
        lines.append(f"  sizes     {sizes.describe()} (native {sizes.native}); checked at {checked}")
    lines += [
        f"  parity    ONNX Runtime vs PyTorch at batch {batches}: rel L2 {w['rel_l2']:.1e} "
        f"(<= {tol['max_rel_l2']:.0e}), max abs {w['max_abs']:.1e} (<= {tol['max_abs']:.0e}): {verdict}",
        f"  manifest  {Path(s['artifact']) / 'manifest.json'}",
    ]
    return "\n".join(lines)
