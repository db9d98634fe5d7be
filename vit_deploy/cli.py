"""The ``vit-deploy`` command line: parse options, make one library call, print a summary.

Exit codes: 0 success; 1 a user error (one line on stderr, no traceback); 2 an artifact was
written but failed validation (it stays on disk); 130 interrupted.
Only this module exits; library code raises ``VitDeployError`` subclasses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import VitDeployError
from .progress import Progress
from .specs import DEFAULT_RESOLUTION, VARIANTS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vit-deploy")
def cli() -> None:
    """Take a Vision Transformer from PyTorch to ONNX and TensorRT, checked at every step."""


@cli.command()
@click.option("--model", "variant", required=True, help=f"ViT variant: {', '.join(VARIANTS)}.")
@click.option("--res", "img_size", type=int, default=DEFAULT_RESOLUTION, show_default=True,
              help="Input resolution (square); a multiple of the patch size.")
@click.option("--weights", default=None,
              help="Checkpoint: .pth/.pt/.safetensors (timm or Hugging Face), JAX .npz, a Hugging Face "
                   "folder, or a hub id (hf:ORG/NAME, timm:NAME; needs network). Omit for random init.")
@click.option("--num-classes", type=int, default=None, help="Classes of the head (default 1000).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17-20).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Artifact folder (default: artifacts/<model>-<res>).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim simplification.")
@click.option("--force", is_flag=True, help="Overwrite an existing artifact folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init and validation inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def export(
    variant: str, img_size: int, weights: str | None, num_classes: int | None, opset: int,
    out_dir: Path | None, no_simplify: bool, force: bool, seed: int, as_json: bool,
) -> None:
    """Export a ViT to a validated ONNX artifact with a dynamic batch dimension."""
    from .exporter import ExportOptions, export_artifact, preflight, raise_if_failed

    opts = ExportOptions(variant, img_size, num_classes, weights, opset, out_dir, not no_simplify, force, seed)
    preflight(opts)  # bad names, sizes, opsets and output folders fail before anything slow
    if weights is None:
        click.secho(
            f"WARNING: no --weights given: {variant} gets RANDOM weights (seed {seed}), it is NOT PRETRAINED "
            "and its predictions mean nothing. Pass --weights FILE or a hub id for a real model.",
            fg="yellow", bold=True, err=True,
        )
    summary = export_artifact(opts, Progress(enabled=True))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(_export_text(summary))
    raise_if_failed(summary)


def _export_text(s: dict[str, Any]) -> str:
    m, v = s["manifest"], s["validation"]
    model, io = m["model"], m["io"]
    pretrained = "pretrained" if m["checkpoint"]["pretrained"] else "NOT PRETRAINED"
    shape = lambda e: f"{e['name']} [{', '.join(map(str, e['shape']))}] {e['dtype']}"  # noqa: E731
    simplified = "onnxsim" if s["simplified"] else f"not simplified: {m['onnx']['simplify_note']}"
    w, tol = v["worst"], v["tolerance"]
    batches = ",".join(str(r["batch"]) for r in v["runs"])
    verdict = "PASS" if v["passed"] else "FAIL"
    return "\n".join([
        f"Exported {model['variant']} @ {model['img_size']} ({model['num_classes']} classes, {pretrained})",
        f"  file      {s['model_file']}",
        f"  size      {s['bytes'] / 1e6:.1f} MB in {len(s['files'])} file(s)",
        f"  nodes     {s['nodes_exported']} -> {s['nodes']} ({simplified})",
        f"  graph     opset {m['onnx']['opset']}: {shape(io['inputs'][0])} -> {shape(io['outputs'][0])}",
        f"  parity    ONNX Runtime vs PyTorch at batch {batches}: rel L2 {w['rel_l2']:.1e} "
        f"(<= {tol['max_rel_l2']:.0e}), max abs {w['max_abs']:.1e} (<= {tol['max_abs']:.0e}): {verdict}",
        f"  manifest  {Path(s['artifact']) / 'manifest.json'}",
    ])


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns library errors into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="vit-deploy", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:  # bad options: click's message, but exit 1 as for any user error
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(1)
    except click.exceptions.Abort as e:  # click turns Ctrl-C (and EOF at a prompt) into Abort
        if isinstance(e.__cause__, KeyboardInterrupt):
            click.echo("interrupted: nothing was left behind that looks finished", err=True)
            sys.exit(130)
        click.echo("error: aborted", err=True)
        sys.exit(1)
    except VitDeployError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
