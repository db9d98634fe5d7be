"""An artifact whose manifest records a failed validation (``"passed": false``) is never used silently.

The rule (README, "Artifacts and the manifest"): what only looks at an artifact (``predict``,
``bench``) still runs it and warns in one line, also in ``--json``; what hands it to others
(``triton-repo``) refuses unless ``--allow-failed``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from vit_deploy.artifact import read_manifest, write_manifest

FAILURE = "cosine 0.912345 < 0.9999"


@pytest.fixture
def failed(tiny_artifacts, tmp_path) -> dict[str, Path]:
    """A copy of the tiny export and, beside it as build-engine names it, an FP16 graph whose validation failed."""
    fp32, fp16 = tmp_path / "test-32", tmp_path / "test-32-fp16"
    shutil.copytree(tiny_artifacts["fp32"], fp32)
    shutil.copytree(tiny_artifacts["fp16"], fp16)
    manifest = read_manifest(fp16)
    manifest["validation"].update(passed=False, failures=[FAILURE, "top-1 agreement 90.00% < 99.5%"])
    write_manifest(fp16, manifest)
    return {"fp32": fp32, "fp16": fp16}


def test_predict_warns_in_one_line_and_in_json(failed, run_cli):
    from skimage import data

    cat = str(Path(data.__file__).parent / "chelsea.png")
    code, out, err = run_cli("predict", str(failed["fp16"]), cat)
    assert code == 0, err
    warning = f"warning: {failed['fp16']} failed its validation ({FAILURE}; and more)"
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        f"{warning}: its manifest records \"passed\": false; these predictions may be wrong (vit-deploy compare "
        "says how far)"]
    code, out, err = run_cli("predict", str(failed["fp16"]), cat, cat, "--json")
    assert code == 0, err
    assert [r["warning"].startswith(warning[len("warning: "):]) for r in json.loads(out)] == [True, True]
    code, out, err = run_cli("predict", str(failed["fp32"]), cat, "--json")  # a good artifact: nothing added
    assert code == 0 and "warning" not in out + err and "warning" not in json.loads(out)[0]


def test_bench_warns_about_a_failed_sibling_it_found(failed):
    from vit_deploy.bench.backends import find_artifacts

    found, notes = find_artifacts([failed["fp32"]])
    assert found["fp16"] == failed["fp16"].absolute()
    assert f"warning: fp16: {failed['fp16'].absolute()} failed its validation ({FAILURE}; and more): its manifest " \
           "records \"passed\": false; its row measures speed only" in notes
    assert not any(n.startswith("warning") and "fp32" in n.split(":")[1] for n in notes)


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                    reason="needs tritonclient: pip install 'vit-deploy[serve]'")
def test_triton_repo_refuses_unless_allowed(failed, run_cli, tmp_path):
    repo = tmp_path / "repo"
    code, out, err = run_cli("triton-repo", str(failed["fp16"]), "--backend", "python", "--out", str(repo))
    assert code == 1 and not repo.exists()
    assert f"{failed['fp16']} failed its validation ({FAILURE}; and more)" in err and "--allow-failed" in err
    code, out, err = run_cli("triton-repo", str(failed["fp16"]), "--backend", "python", "--out", str(repo),
                             "--allow-failed", "--json")
    assert code == 0, err
    assert any("serving it anyway (--allow-failed)" in n and FAILURE in n for n in json.loads(out)["notes"])
