"""The CLI's shared options: every old spelling the README used reaches the library exactly as the new one."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def captured(monkeypatch):
    """Replace a library call with one that records its arguments; returns the record."""
    def capture(target: str, result=None):
        calls: list = []

        def fake(*args, **kwargs):
            calls.append((args, kwargs))
            return result

        monkeypatch.setattr(target, fake)
        return calls

    return capture


def test_build_engine_old_spellings(run_cli, captured, tmp_path):
    calls = captured("vit_deploy.steps.pipeline.build")
    new = ["build-engine", str(tmp_path / "a"), "--int8", "--calib", "c", "--calib-count", "5", "--val", "v",
           "--out", str(tmp_path / "g")]
    old = ["build-engine", "--artifact", str(tmp_path / "a"), "--int8", "--calib", "c", "--calib-images", "5",
           "--val-images", "v", "--out", str(tmp_path / "g")]
    for args in (new, old):
        assert run_cli(*args, "--json")[0] == 0
    (graph_new, engine_new, *_), _ = calls[0]
    (graph_old, engine_old, *_), _ = calls[1]
    assert graph_new == graph_old and engine_new == engine_old
    assert (graph_new.artifact, graph_new.calib_images, graph_new.val_images) == (tmp_path / "a", 5, "v")


def test_build_engine_engine_out_alias(run_cli, captured, tmp_path):
    calls = captured("vit_deploy.steps.pipeline.build")
    assert run_cli("build-engine", str(tmp_path / "g"), "--engine-out", str(tmp_path / "e"), "--json")[0] == 0
    assert run_cli("build-engine", str(tmp_path / "g"), "--out", str(tmp_path / "e"), "--json")[0] == 0
    assert calls[0][0][1].out_dir == calls[1][0][1].out_dir == tmp_path / "e"


def test_old_and_new_spelling_together_must_agree(run_cli, captured, tmp_path):
    captured("vit_deploy.steps.pipeline.build")
    code, _, err = run_cli("build-engine", str(tmp_path / "a"), "--val", "x", "--val-images", "y")
    assert code == 1 and "--val-images is the old spelling of --val" in err


def test_predict_artifact_first_or_old_option(run_cli, captured):
    calls = captured("vit_deploy.predict.predict", result=[])
    assert run_cli("predict", "art", "a.jpg", "b.jpg")[0] == 0
    assert run_cli("predict", "a.jpg", "b.jpg", "--artifact", "art")[0] == 0
    assert calls[0] == calls[1] and calls[0][0] == (["a.jpg", "b.jpg"], Path("art"))
    code, _, err = run_cli("predict", "art")
    assert code == 1 and "one or more images" in err


def test_bench_out_dir_alias(run_cli, captured, monkeypatch, tmp_path):
    captured("vit_deploy.bench.run.run_bench", result={})
    calls = captured("vit_deploy.bench.report.write_outputs",
                     result={"json": "j", "markdown": "m", "plot": None, "plot_note": None})
    monkeypatch.setattr("vit_deploy.bench.report.format_table", lambda r: "")
    monkeypatch.setattr("vit_deploy.bench.report.targets", lambda r: [])
    monkeypatch.setattr("vit_deploy.bench.report.format_targets", lambda t: "")
    assert run_cli("bench", "a", "--out", str(tmp_path / "o"))[0] == 0
    assert run_cli("bench", "a", "--out-dir", str(tmp_path / "o"))[0] == 0
    assert calls[0][0][1] == calls[1][0][1] == tmp_path / "o"


def test_triton_commands_old_spellings(run_cli, captured):
    load = captured("vit_deploy.serving.load.run_load", result={})
    captured("vit_deploy.cli.serving.format_load", result="")
    assert run_cli("triton-load", "art", "--name", "m")[0] == 0
    assert run_cli("triton-load", "--model", "m", "--artifact", "art")[0] == 0
    assert load[0] == load[1] and load[0][0] == ("127.0.0.1:8000", "m") and load[0][1]["artifact"] == "art"
    repo = captured("vit_deploy.serving.repository.write_repository",
                    result={"repository": "r", "notes": [], "models": {}})
    assert run_cli("triton-repo", "a", "--max-batch-size", "4")[0] == 0
    assert run_cli("triton-repo", "a", "--max-batch", "4")[0] == 0
    assert repo[0][0][0].max_batch == repo[1][0][0].max_batch == 4


def test_choices_come_from_specs(run_cli):
    from vit_deploy.specs import CALIBRATION_METHODS, ORT_PROVIDERS, RUNTIME_BACKENDS

    for command, option, choices in [("build-engine", "--calib-method", CALIBRATION_METHODS),
                                     ("compare", "--backend", RUNTIME_BACKENDS),
                                     ("compare", "--provider", ORT_PROVIDERS),
                                     ("predict", "--backend", RUNTIME_BACKENDS)]:
        _, out, _ = run_cli(command, "--help")
        assert "[" + "|".join(choices) + "]" in " ".join(out.split()), (command, option)
