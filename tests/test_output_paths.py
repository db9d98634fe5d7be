"""No output option writes inside an artifact folder or a model repository, or replaces a file its command
did not write, without ``--force`` (issue: ``inspect --sensitivity --report ART/manifest.json`` destroyed
the artifact and exited 0). Every refusal is one line, exit 1, before any slow step, with nothing changed.

Output options checked: ``inspect --report``, ``bench --out``, ``bench-build --out`` and ``--work-dir``,
``serve --log``, ``build-engine --timing-cache``; and the folder outputs (``export``/``build-engine``/
``triton-repo --out``), which never nest inside an artifact or a repository.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from helpers import PHOTOS


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def art(tiny_artifacts, tmp_path) -> Path:
    """A private copy of the tiny FP32 export (the test may try to damage it)."""
    copy = tmp_path / "test-32"
    shutil.copytree(tiny_artifacts["fp32"], copy)
    return copy


def refused(run_cli, args: list[str], *needles: str) -> str:
    code, out, err = run_cli(*args)
    assert code == 1, (code, out, err)
    assert "Traceback" not in err and err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize("target", ["manifest.json", "model.onnx", "sens.json", "new/sens.json"])
def test_inspect_report_never_writes_inside_the_artifact(art, run_cli, target):
    before = digest(art)
    refused(run_cli, ["inspect", str(art), "--sensitivity", "--calib", str(PHOTOS), "--report", str(art / target),
                      "--force"], f"--report {art / target} is inside {art.resolve()}, a vit-deploy artifact")
    assert digest(art) == before


def test_inspect_report_replaces_only_its_own_report_without_force(art, run_cli, tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    refused(run_cli, ["inspect", str(art), "--sensitivity", "--calib", str(PHOTOS), "--report", str(notes)],
            "exists and is not a file inspect --sensitivity wrote", "--force")
    assert notes.read_text() == '{"mine": true}\n'
    report = tmp_path / "sens.json"
    for _ in range(2):  # the second run replaces the first one's report: no --force needed
        code, _, err = run_cli("inspect", str(art), "--sensitivity", "--calib", str(PHOTOS), "--calib-count", "8",
                               "--report", str(report))
        assert code == 0, err
        assert set(json.loads(report.read_text())) >= {"fp32_graph", "layers", "tensors", "quantized", "precision"}
    code, _, err = run_cli("inspect", str(art), "--sensitivity", "--calib", str(PHOTOS), "--calib-count", "8",
                           "--report", str(notes), "--force")
    assert code == 0 and "layers" in json.loads(notes.read_text()), err


def test_bench_out_refuses_artifacts_and_files_bench_did_not_write(art, run_cli, tmp_path):
    before = digest(art)
    quick = ["--backends", "ort-fp32", "--batch-sizes", "1", "--repeats", "1", "--min-time", "0.01", "--warmup", "1",
             "--no-ceiling", "--threads", "1"]
    refused(run_cli, ["bench", str(art), *quick, "--out", str(art)], f"--out {art} is a vit-deploy artifact")
    refused(run_cli, ["bench", str(art), *quick, "--out", str(art / "bench")], "is inside")
    assert digest(art) == before
    out = tmp_path / "results"
    out.mkdir()
    (out / "bench.md").write_text("my notes\n")
    refused(run_cli, ["bench", str(art), *quick, "--out", str(out)], f"--out {out / 'bench.md'} exists and is not a "
            "file vit-deploy bench wrote; pass --force")
    assert (out / "bench.md").read_text() == "my notes\n"
    (out / "bench.md").unlink()
    for _ in range(2):  # a second run replaces the first one's files
        code, _, err = run_cli("bench", str(art), *quick, "--out", str(out), "--json")
        assert code == 0, err
    assert json.loads((out / "bench.json").read_text())["schema"] == "vit-deploy/bench"


def test_bench_build_out_and_work_dir_stay_out_of_artifacts(art, run_cli, tmp_path):
    before = digest(art)
    refused(run_cli, ["bench-build", "--model", "test", "--res", "32", "--out", str(art)],
            f"--out {art} is a vit-deploy artifact")
    refused(run_cli, ["bench-build", "--model", "test", "--res", "32", "--work-dir", str(art / "work")],
            "--work-dir", "is inside")
    (tmp_path / "build-cost.json").write_text("{}")
    refused(run_cli, ["bench-build", "--model", "test", "--res", "32", "--out", str(tmp_path)],
            "build-cost.json exists and is not a file vit-deploy bench-build wrote")
    assert digest(art) == before and (tmp_path / "build-cost.json").read_text() == "{}"


def test_serve_log_never_replaces_a_file_it_did_not_write(art, run_cli, tmp_path):
    before = digest(art)
    refused(run_cli, ["serve", str(tmp_path), "--log", str(art / "manifest.json")], "--log", "is inside")
    assert digest(art) == before
    readme = tmp_path / "README.md"
    readme.write_text("# mine\n")
    refused(run_cli, ["serve", str(tmp_path), "--log", str(readme)], "is not a file tritonserver wrote", "--force")
    assert readme.read_text() == "# mine\n"
    from vit_deploy.serving.server import is_server_log

    log = tmp_path / "server.log"
    log.write_text("W1206 11:28:37.315321 13164 pinned_memory_manager.cc:271] Unable to allocate pinned memory\n")
    assert is_server_log(log) and not is_server_log(readme)


def test_timing_cache_never_lands_in_an_artifact(art, tiny_artifacts, run_cli):
    graph = art.parent / "test-32-fp16"
    shutil.copytree(tiny_artifacts["fp16"], graph)
    before = digest(graph)
    refused(run_cli, ["build-engine", str(graph), "--timing-cache", str(graph / "manifest.json")],
            "--timing-cache", "is inside")
    assert digest(graph) == before


@pytest.mark.parametrize("command", [
    ["export", "--model", "test", "--res", "32", "--num-classes", "5", "--out"],
    ["build-engine", "{art}", "--fp16", "--out"],
    ["triton-repo", "{art}", "--backend", "python", "--out"],
])
def test_no_folder_output_nests_inside_an_artifact(art, run_cli, command):
    before = digest(art)
    args = [a.format(art=art) for a in command] + [str(art / "inner")]
    refused(run_cli, args, f"{art / 'inner'} is inside {art.resolve()}, a vit-deploy artifact")
    assert digest(art) == before
