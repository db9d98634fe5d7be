"""``vit-deploy doctor``: what this machine can do, and for every "no" why and the fix."""

from __future__ import annotations

import json

import click

from .options import json_option


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """What this machine can do: GPU/driver/CUDA, TensorRT, ONNX Runtime providers, OpenVINO, Triton.

    Every "can't" comes with the reason and the command that fixes it. Always exits 0.
    """
    from ..doctor import format_report, report

    r = report()
    click.echo(json.dumps(r, indent=2) if as_json else format_report(r))
