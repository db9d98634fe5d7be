"""The options several commands share, so each is spelled, typed and explained the same way everywhere.

Choices come from ``specs`` (cheap to import: no numerical library loads for ``--help``). Old
spellings stay as hidden aliases for a release; :func:`artifact_argument` takes an artifact both
as the first positional argument and as the old ``--artifact DIR`` option. Every numeric option
takes one of the bounded types below, so a bad value fails while parsing, before any slow step.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError, VitDeployError
from ..specs import (
    CALIBRATION_METHODS,
    MAX_NUM_CLASSES,
    MAX_RESOLUTION,
    MAX_SEED,
    ORT_PROVIDERS,
    RUNTIME_BACKENDS,
)

PathType = click.Path(path_type=Path)

# The bounded numeric types. Seeds: what numpy and torch both accept. Counts (images, batch sizes,
# repeats, threads): at least 1. Resolutions and classes: the bounds model_config enforces too.
Seed = click.IntRange(0, MAX_SEED)
Count = click.IntRange(min=1)
NonNegative = click.IntRange(min=0)
Resolution = click.IntRange(1, MAX_RESOLUTION)
NumClasses = click.IntRange(1, MAX_NUM_CLASSES)
MAX_BATCH = 4096  # larger batches only exhaust memory: every batch is held in memory at once
BatchSize = click.IntRange(1, MAX_BATCH)


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses NaN and Inf (click's range compares, and NaN passes every comparison)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
force_option = click.option("--force", is_flag=True, help="Replace an output folder that vit-deploy wrote before.")
backend_option = click.option(
    "--backend", type=click.Choice(RUNTIME_BACKENDS), default=None,
    help="Run the artifact on this backend (default: the one its manifest names when installed, e.g. OpenVINO "
         "for a --target cpu INT8 graph; else TensorRT for an engine, ONNX Runtime for a graph); pytorch runs "
         "its reference model.",
)
provider_option = click.option(
    "--provider", type=click.Choice(ORT_PROVIDERS), default="cpu", show_default=True,
    help="ONNX Runtime execution provider for ONNX artifacts.",
)
calib_method_option = click.option(
    "--calib-method", type=click.Choice(CALIBRATION_METHODS), default=None,
    help="How each activation range is chosen from its histogram (default: mse for INT8, minmax for FP8; "
         "entropy is INT8 only).",
)


def echo_json(result: dict[str, Any]) -> None:
    """Print a command's ``--json`` summary on success, with ``"ok": true`` (failures: see :func:`failing_with`)."""
    click.echo(json.dumps({"ok": True, **result}, indent=2))


@contextlib.contextmanager
def failing_with(summary: dict[str, Any]) -> Iterator[None]:
    """A VitDeployError raised inside carries ``summary``.

    With ``--json``, ``cli.main`` prints it merged with ``"ok": false``, the error and the exit
    code: one JSON document for every outcome, also when the work ran and then failed a check.
    """
    try:
        yield
    except VitDeployError as e:
        e.summary = summary  # type: ignore[attr-defined]
        raise


def seed_option(what: str) -> Callable[[Any], Any]:
    return click.option("--seed", type=Seed, default=0, show_default=True, help=f"Seed for {what}.")


def writer_options(seed_what: str) -> Callable[[Any], Any]:
    """``--force``, ``--seed`` and ``--json``, in that order: the options every command that writes an artifact
    ends with (export, build-engine)."""

    def decorate(f: Any) -> Any:
        return force_option(seed_option(seed_what)(json_option(f)))

    return decorate


def out_option(help: str, default: Path | None = None, old: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """``--out DIR`` (with ``old`` spellings as hidden aliases)."""

    def decorate(f: Any) -> Any:
        f = click.option("--out", "out", type=PathType, default=default, show_default=default is not None,
                         help=help)(f)
        for name in old:  # either spelling works; the old one is hidden from --help
            f = alias(name, "out", type=PathType)(f)
        return f

    return decorate


def alias(old: str, new: str, type: Any = None) -> Callable[[Any], Any]:
    """A hidden old spelling ``old`` of the option whose parameter name is ``new``."""
    dest = "alias_" + old.lstrip("-").replace("-", "_")
    return click.option(old, dest, type=type, default=None, hidden=True, expose_value=False, callback=_alias_to(new))


def _alias_to(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.meta.setdefault("aliases", {})[name] = (param.opts[0], value)

    return callback


def aliased(ctx: click.Context, name: str, value: Any, default: Any = None) -> Any:
    """``value`` of option ``name``, or the value its hidden old spelling was given (not both)."""
    old = ctx.meta.get("aliases", {}).get(name)
    if old is None:
        return value
    if value not in (None, default) and value != old[1]:
        raise UsageError(f"{old[0]} is the old spelling of --{name.replace('_', '-')}; give one of them")
    return old[1]


def artifact_argument() -> Callable[[Any], Any]:
    """ARTIFACT as the first positional argument, and the old ``--artifact DIR`` as a hidden alias."""

    def decorate(f: Any) -> Any:
        f = click.argument("artifact", type=PathType, required=False)(f)
        f = alias("--artifact", "artifact", type=PathType)(f)
        return f

    return decorate


def artifact_of(ctx: click.Context, artifact: Path | None, required: bool = True) -> Path | None:
    """The artifact given positionally or as ``--artifact`` (UsageError when required and neither)."""
    artifact = aliased(ctx, "artifact", artifact)
    if artifact is None and required:
        raise UsageError(f"give the artifact folder: vit-deploy {ctx.info_name} ARTIFACT ...")
    return artifact


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> tuple[int, ...]:
    """``"1,8"`` -> (1, 8); UsageError for anything else."""
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a comma-separated list of integers, e.g. 1,8") from None
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_BATCH:
        raise UsageError(f"{option} {text!r}: give batch sizes from 1 to {MAX_BATCH}, e.g. 1,8")
    return sizes


def parse_image_sizes(text: str, option: str = "--sizes") -> tuple[tuple[int, int], ...]:
    """``"224,320x448"`` -> ((224, 224), (320, 448)); UsageError for anything else (the range is checked later)."""
    sizes = []
    for item in (t.strip().lower() for t in text.split(",") if t.strip()):
        parts = item.split("x")
        if len(parts) not in (1, 2) or not all(p.isdigit() and 0 < int(p) <= MAX_RESOLUTION for p in parts):
            raise UsageError(f"{option} {text!r}: {item!r} is not N or HxW (1 to {MAX_RESOLUTION} px), "
                             "e.g. 224,384,320x448")
        sizes.append((int(parts[0]), int(parts[-1])))
    if not sizes:
        raise UsageError(f"{option} is empty; give sizes like 224,384,320x448")
    return tuple(sizes)
