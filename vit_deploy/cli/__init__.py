"""The ``vit-deploy`` command line: the group, the entry point and the exit-code table.

Each command family has its own module (export, build, artifacts, bench, serving, doctor) that
parses options, makes one library call and formats the result; options several commands share
are in ``options.py``. Only :func:`main` exits; library code raises ``VitDeployError`` subclasses
and this module turns them into one line on stderr and the exit code below.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

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
    from .bench import bench, bench_build, bench_res
    from .build import build_engine
    from .doctor import doctor
    from .export import export
    from .scale import k8s, publish
    from .serving import serve, triton_load, triton_repo

    for command in (export, build_engine, compare, inspect, predict, doctor, bench, bench_res, bench_build,
                    triton_repo, serve, triton_load, publish, k8s):
        cli.add_command(command)


_add_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns library errors into one line and an exit code (:data:`EXIT_CODES`).

    With ``--json``, every failure also prints ``{"ok": false, "error": ..., "exit_code": ...}`` on
    stdout (merged into the summary when the work ran and then failed a check), so a script can
    parse every outcome; successes print the command's summary with ``"ok": true``.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = _wants_json(args)
    try:
        cli.main(args=args, prog_name="vit-deploy", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:  # bad options: click's message, but exit 1 as for any user error
        ctx = getattr(e, "ctx", None)
        hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        _fail(e.format_message().rstrip(".") + hint, 1, as_json)
    except click.exceptions.Abort as e:  # click turns Ctrl-C (and EOF at a prompt) into Abort
        if isinstance(e.__cause__, KeyboardInterrupt):
            _fail("nothing was left behind that looks finished", EXIT_INTERRUPTED, as_json, prefix="interrupted")
        _fail("aborted", 1, as_json)
    except VitDeployError as e:
        _fail(str(e), e.exit_code, as_json, summary=getattr(e, "summary", None))


def _wants_json(args: list[str]) -> bool:
    """Whether ``args`` run a command that takes ``--json`` and pass it (options end at ``--``)."""
    options = args[:args.index("--")] if "--" in args else args
    name = next((a for a in options if not a.startswith("-")), None)
    command = cli.commands.get(name) if name else None
    return command is not None and "--json" in options and any(p.name == "as_json" for p in command.params)


def _fail(message: str, code: int, as_json: bool, summary: dict | None = None, prefix: str = "error") -> NoReturn:
    click.echo(f"{prefix}: {message}", err=True)
    if as_json:
        click.echo(json.dumps({**(summary or {}), "ok": False, "error": message, "exit_code": code}, indent=2))
    sys.exit(code)
