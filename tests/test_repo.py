"""The README opens with the two set-up commands, and CI runs the second one verbatim, then the slow tests."""

from __future__ import annotations

import re

from helpers import ROOT


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split("\n", 1)[1].lstrip()  # after the title line
    block = re.match(r"```(?:bash|sh)?\n(.*?)```", body, re.S)
    assert block, "README must open (after its title) with the set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands():
    install_run, install_test = setup_commands()
    assert "vit-deploy export --model b16 --res 384" in install_run
    assert "pytest" in install_test


def test_ci_runs_the_readme_test_command_and_then_the_slow_tests():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_commands()[1] in ci
    # the README's `pytest` runs the fast tests (addopts deselects slow); CI also runs the slow ones after it
    assert ci.index("pytest -m slow") > ci.index(setup_commands()[1])


def test_default_pytest_deselects_the_slow_tests():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m 'not slow'" in config["addopts"]


def test_ruff_clean():
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    if ruff is None:
        import pytest

        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    r = subprocess.run([ruff, "check", "vit_deploy", "tests", "tools"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
