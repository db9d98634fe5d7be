"""The ``vit-deploy`` command line: the group, the entry point and the exit-code table.

Each command family has its own module (export, build, artifacts, bench, serving, doctor) that
parses options, makes one library call and formats the result; options several commands share
are in ``options.py``. Only :func:`main` exits; library code raises ``VitDeployError`` subclasses
and this module turns them into one line on stderr and the exit code below.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import VitDeployError

# The exit-code table (README, "Exit codes"): every command, every outcome.
EXIT_CODES = {
    0: "success",
    1: "a user error: one line on stderr saying what to do",
    2: "the artifact was written but failed validation (it stays on disk, its manifest says \"passed\": false)",
    3: "the precision graph is ready but no TensorRT engine can be built on this machine",
    130: "interrupted",
}
EXIT_INTERRUPTED = 130

_EPILOG = "Exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + "."


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.version_option(__version__, prog_name="vit-deploy")
def cli() -> None:
    """Take a Vision Transformer from PyTorch to ONNX and TensorRT, checked at every step."""


def _add_commands() -> None:
    # importing a command module loads no numerical library: `vit-deploy --help` stays fast
    from .artifacts import compare, inspect, predict
    from .bench import bench, bench_build
    from .build import build_engine
    from .doctor import doctor
    from .export import export
    from .serving import serve, triton_load, triton_repo

    for command in (export, build_engine, compare, inspect, predict, doctor, bench, bench_build, triton_repo, serve,
                    triton_load):
        cli.add_command(command)


_add_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns library errors into one line and an exit code (:data:`EXIT_CODES`)."""
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
            sys.exit(EXIT_INTERRUPTED)
        click.echo("error: aborted", err=True)
        sys.exit(1)
    except VitDeployError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
