"""Hostile and careless options at the CLI's front door: one line, exit 1, before any work starts.

Every invocation below is refused while the options are parsed: the library calls that would do
the slow work are replaced by a trap that fails the test if reached. ``--json`` turns every
outcome into one parseable document on stdout, and progress written into a log stays one line per step.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from helpers import PHOTOS

from vit_deploy.progress import Progress
from vit_deploy.specs import Tolerance

# the library calls behind each command: none may run for a refused option
WORK = (
    "vit_deploy.steps.export.export_artifact", "vit_deploy.steps.export.preflight", "vit_deploy.steps.pipeline.build",
    "vit_deploy.compare.compare_artifact", "vit_deploy.inspection.inspect_artifact",
    "vit_deploy.sensitivity.sensitivity_for_artifact", "vit_deploy.predict.predict", "vit_deploy.bench.run.run_bench",
    "vit_deploy.bench.build_cost.run_build_cost",
)

EXPORT = ("export", "--model", "test", "--res", "32")
HOSTILE = {
    # seeds: numpy and torch take 0..2**32-1; -1 used to fail after the model was built
    "export seed -1": (*EXPORT, "--seed", "-1"),
    "export seed 2**32": (*EXPORT, "--seed", str(2**32)),
    "export seed text": (*EXPORT, "--seed", "x"),
    "export res huge": ("export", "--model", "test", "--res", "99999999"),
    "export res 0": ("export", "--model", "test", "--res", "0"),
    "export res negative": ("export", "--model", "test", "--res", "-32"),
    "export classes huge": (*EXPORT, "--num-classes", "10000000000"),
    "export classes 20 digits": (*EXPORT, "--num-classes", "1" * 20),
    "export classes 0": (*EXPORT, "--num-classes", "0"),
    "build calib-count 0": ("build-engine", "a", "--int8", "--calib", "c", "--calib-count", "0"),
    "build old calib-images -1": ("build-engine", "a", "--int8", "--calib", "c", "--calib-images", "-1"),
    "build calib-batch 0": ("build-engine", "a", "--int8", "--calib", "c", "--calib-batch", "0"),
    "build accuracy-budget nan": ("build-engine", "a", "--int8", "--accuracy-budget", "nan"),
    "build accuracy-budget inf": ("build-engine", "a", "--int8", "--accuracy-budget", "inf"),
    "build accuracy-budget -1": ("build-engine", "a", "--int8", "--accuracy-budget", "-1"),
    "build max-float-layers -1": ("build-engine", "a", "--int8", "--max-float-layers", "-1"),
    "build min-batch 0": ("build-engine", "a", "--min-batch", "0"),
    "build opt-batch huge": ("build-engine", "a", "--opt-batch", "1000000"),
    "build max-batch -4": ("build-engine", "a", "--max-batch", "-4"),
    "build workspace 0": ("build-engine", "a", "--workspace-mib", "0"),
    "build optimization-level 9": ("build-engine", "a", "--optimization-level", "9"),
    "build seed -1": ("build-engine", "a", "--seed", "-1"),
    "compare max-images 0": ("compare", "a", "--max-images", "0"),
    "compare batch 0": ("compare", "a", "--batch-sizes", "0"),
    "compare batch huge": ("compare", "a", "--batch-sizes", "1,1000000"),
    "compare seed -5": ("compare", "a", "--seed", "-5"),
    "inspect calib-count 0": ("inspect", "a", "--sensitivity", "--calib", "c", "--calib-count", "0"),
    "predict top 0": ("predict", "a", "img.png", "--top", "0"),
    "predict top -3": ("predict", "a", "img.png", "--top", "-3"),
    "bench threads -3": ("bench", "a", "--threads", "-3"),
    "bench repeats 0": ("bench", "a", "--repeats", "0"),
    "bench min-time 0": ("bench", "a", "--min-time", "0"),
    "bench min-time nan": ("bench", "a", "--min-time", "nan"),
    "bench warmup -1": ("bench", "a", "--warmup", "-1"),
    "bench seed -1": ("bench", "a", "--seed", "-1"),
    "bench calib-count 0": ("bench", "a", "--calib-count", "0"),
    "bench batch 0": ("bench", "a", "--batch-sizes", "0"),
    "bench-build res huge": ("bench-build", "--model", "test", "--res", "100000"),
    "bench-build classes 0": ("bench-build", "--num-classes", "0"),
    "bench-build threads 0": ("bench-build", "--threads", "0"),
}


@pytest.fixture
def no_work(monkeypatch):
    def trap(*args, **kwargs):
        raise AssertionError("a refused option reached the slow work")

    for target in WORK:
        monkeypatch.setattr(target, trap)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize("args", list(HOSTILE.values()), ids=list(HOSTILE))
def test_refused_before_any_work(run_cli, no_work, args):
    code, out, err = run_cli(*args)
    assert code == 1 and out == ""
    message = one_error_line(err)
    option = next(a for a in reversed(args) if a.startswith("--"))
    assert option in message, message


@pytest.mark.parametrize("args", [HOSTILE["export seed -1"], HOSTILE["bench min-time nan"],
                                  ("export", "--model", "nope", "--json")], ids=["click", "nan", "library"])
def test_json_failure_is_one_document(run_cli, no_work, monkeypatch, args):
    if "nope" in args:  # the library's own refusal (preflight), not click's
        monkeypatch.undo()
    code, out, err = run_cli(*args, "--json")
    assert code == 1
    assert json.loads(out) == {"ok": False, "error": one_error_line(err), "exit_code": 1}


def test_json_on_a_command_without_it_is_refused_without_json(run_cli):
    code, out, err = run_cli("serve", "repo", "--json")
    assert code == 1 and out == "" and "No such option" in one_error_line(err)


def test_json_success_says_ok(run_cli, tiny_artifacts):
    code, out, _ = run_cli("inspect", str(tiny_artifacts["fp32"]), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["ok"] is True and summary["precision"] == "fp32"


def test_json_exit_2_is_the_summary_with_the_error(run_cli, tiny_artifacts, monkeypatch):
    # bounds no graph can meet: the comparison runs, then fails its check (exit 2)
    monkeypatch.setattr("vit_deploy.compare.tolerance", lambda precision: Tolerance(max_abs=-1.0))
    code, out, err = run_cli("compare", str(tiny_artifacts["fp32"]), "--batch-sizes", "2", "--json")
    summary = json.loads(out)  # one document, not the summary followed by an error object
    assert code == 2 and summary["ok"] is False and summary["exit_code"] == 2
    assert summary["error"] == one_error_line(err.splitlines()[-1]) and "outside the fp32 bounds" in summary["error"]
    assert summary["passed"] is False and summary["rows"][0]["batch"] == 2


# -- progress in logs and pipes ---------------------------------------------------------------
STEP_LINE = re.compile(r"\[\d+/\d+\] .+ \.\.\. \d+\.\ds")


def test_progress_into_a_log_is_one_line_per_step(run_cli, tiny_artifacts):
    """stderr captured (not a terminal): no carriage-return frames of the image bar, one line per step."""
    code, _, err = run_cli("compare", str(tiny_artifacts["fp32"]), "--images", str(PHOTOS), "--max-images", "12",
                           "--batch-sizes", "4")
    assert code == 0 and "\r" not in err, err
    opening, loading, *steps = err.splitlines()
    assert re.fullmatch(r"  Loading comparison images: 12 in \d+\.\ds", loading), loading
    assert len(steps) == 2 and all(STEP_LINE.fullmatch(line) for line in (opening, *steps)), err


def test_progress_on_a_terminal_still_draws_bars():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = Progress(stream=stream)
    assert list(progress.bar(range(3), "images")) == [0, 1, 2]
    assert "images" in stream.getvalue() and "\r" in stream.getvalue()


def test_a_step_of_an_uncounted_run_shows_its_number_only():
    """inspect --sensitivity runs one step without setting a total: "[1] ...", never "[1/0] ..."."""
    stream = io.StringIO()
    progress = Progress(stream=stream)
    with progress.step("Measuring"):
        pass
    assert re.fullmatch(r"\[1\] Measuring \.\.\. \d+\.\ds\n", stream.getvalue()), stream.getvalue()


def test_too_few_sensitivity_images_name_an_option_inspect_has(run_cli, tiny_artifacts, tmp_path):
    """inspect --sensitivity told the user to lower --calib-batch, which inspect does not take."""
    import shutil

    from helpers import PHOTOS

    from vit_deploy.images.sets import list_sources

    few = tmp_path / "few"
    few.mkdir()
    for path, _ in list_sources(PHOTOS)[:3]:
        shutil.copy(path, few / path.name)
    code, out, err = run_cli("inspect", str(tiny_artifacts["fp32"]), "--sensitivity", "--calib", str(few))
    assert code == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "only 3 of 3 images are usable" in line, line
    assert "--calib-batch" not in line and "add images (--sensitivity calibrates on at least 8)" in line
    _, help_text, _ = run_cli("inspect", "--help")
    assert "--calib-batch" not in help_text  # the option the old message named
