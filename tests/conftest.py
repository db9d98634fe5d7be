"""Shared fixtures (run the CLI in-process, the tiny artifacts, a private cache) and the one skip hook.

Tests marked ``gpu`` need TensorRT and a CUDA GPU, tests marked ``triton`` a tritonserver binary:
:func:`pytest_collection_modifyitems` skips them, with the reason, where those are missing, so no
test module carries its own skip condition. Helpers that are not fixtures are in helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import PHOTOS

from vit_deploy.cli import main


def _gpu_missing() -> str | None:
    from vit_deploy.trt.probe import unavailable_reason

    reason = unavailable_reason()
    return None if reason is None else f"needs TensorRT and a CUDA GPU: {reason}"


def _tritonserver_missing() -> str | None:
    try:
        from vit_deploy.serving.server import ServerError, find_tritonserver
    except ImportError as e:
        return f"no tritonserver: {e}"
    try:
        find_tritonserver()
    except ServerError as e:
        return f"no tritonserver: {e}"
    return None


REQUIREMENTS = {"gpu": _gpu_missing, "triton": _tritonserver_missing}


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` and ``triton`` tests, saying what is missing, where this machine lacks it."""
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker, probe in REQUIREMENTS.items():
            if marker in item.keywords:
                if marker not in reasons:
                    reasons[marker] = probe()  # probed once, and only when such a test was collected
                if reasons[marker] is not None:
                    item.add_marker(pytest.mark.skip(reason=reasons[marker]))


@pytest.fixture
def run_cli(capsys):
    """Run ``vit-deploy ARGS`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A calibration/timing cache of the test's own, so no test reuses another's cached ranges."""
    monkeypatch.setenv("VIT_DEPLOY_CACHE", str(tmp_path / "cache"))


def _tiny_set(root: Path, name: str, dynamic_res: str | None = None) -> dict[str, Path]:
    """The ``test`` variant at 32 px, 5 classes, exported to ``root/name`` with its FP16/INT8 graphs beside it."""
    from vit_deploy.steps.export import ExportOptions, export_artifact
    from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIT_DEPLOY_CACHE", str(root / "cache"))
        fp32 = root / name
        export_artifact(ExportOptions("test", 32, num_classes=5, out_dir=fp32, dynamic_res=dynamic_res))
        out = {"fp32": fp32}
        for precision in ("fp16", "int8"):
            out[precision] = root / f"{name}-{precision}"
            opts = PrecisionOptions(precision, fp32, out[precision], calib=str(PHOTOS), calib_batch=4)
            build_precision_artifact(opts)
    return out


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict[str, Path]:
    """The ``test`` variant at 32 px, 5 classes: its FP32 export and FP16/INT8 graphs (read-only: copy to alter)."""
    return _tiny_set(tmp_path_factory.mktemp("tiny"), "test-32")


@pytest.fixture(scope="session")
def tiny_dynamic(tmp_path_factory) -> dict[str, Path]:
    """The same exported with ``--dynamic-res 16:64``, and its FP16/INT8 graphs (read-only: copy to alter)."""
    return _tiny_set(tmp_path_factory.mktemp("tiny-dynamic"), "test-32-dyn", "16:64")
