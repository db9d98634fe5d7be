"""tools/gpu_acceptance.sh: the dry run skips every GPU step with its reason and still writes both reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from helpers import ROOT

SCRIPT = ROOT / "tools" / "gpu_acceptance.sh"
GPU_STEPS = {"pytest-gpu", "bench-b16", "triton", "engine-b16-dyn", "compare-b16-dyn"} | {
    f"{kind}-{model}-{precision}"
    for kind in ("engine", "compare") for model in ("ti16", "b16") for precision in ("fp32", "fp16", "int8")
}


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_run_skips_gpu_steps_with_reasons_and_writes_both_reports(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "acc"), PYTHON=sys.executable)
    start = time.monotonic()
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=120)
    seconds = time.monotonic() - start
    assert r.returncode == 0, r.stderr[-3000:]
    assert seconds < 120, seconds
    out = tmp_path / "acc"
    report = json.loads((out / "gpu-report.json").read_text())
    assert report["dry_run"] is True and report["passed"] is False
    steps = {s["name"]: s for s in report["steps"]}
    assert GPU_STEPS <= set(steps), set(steps)
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skip" and steps[name]["reason"].startswith("needs a GPU: dry run"), name
        assert steps[name]["command"], name  # what would run on the GPU host
    assert "--sizes 224,384,320x448" in steps["compare-b16-dyn"]["command"]  # the dynamic engine at 3 sizes
    assert "--dynamic-res 224:512" in steps["prepare-b16-dyn"]["command"]
    assert steps["install"]["status"] == "skip" and "pip install" in steps["install"]["command"]
    assert "onnxruntime-gpu" in steps["install"]["command"] and "tensorrt-cu1" in steps["install"]["command"]
    assert steps["doctor"]["status"] == "pass" and report["doctor"]["tensorrt"] is not None
    assert steps["pytest-collect"]["status"] == "pass"  # the GPU test selection at least collects
    markdown = (out / "gpu-report.md").read_text()
    assert markdown.startswith("# GPU acceptance report: dry run")
    assert "| pytest-gpu | skip | 0 | needs a GPU: dry run" in markdown


def test_report_is_written_even_when_steps_failed_or_left_nothing(tmp_path):
    out = tmp_path / "acc"
    (out / "results").mkdir(parents=True)
    (out / "steps.tsv").write_text(
        "doctor\tpass\t2\t\tvit-deploy doctor\n"
        "engine-b16-fp16\ttimeout\t90\tstopped after its 90s limit\tvit-deploy build-engine\n")
    (out / "results" / "compare-b16-fp16.json").write_text("{not json")
    (out / "results" / "compare-ti16-fp32.json").write_text(json.dumps({"passed": True, "rows": [
        {"metrics": {"min_cosine": 0.99999, "rel_l2": 1e-6, "top1_agreement": 1.0, "accuracy": 0.8,
                     "reference_accuracy": 0.8}},
        {"metrics": {"min_cosine": 0.99998, "rel_l2": 2e-6, "top1_agreement": 1.0, "accuracy": 0.8,
                     "reference_accuracy": 0.8}}]}))
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_report.py"), str(out), "--seconds", "93"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "gpu-report.json").read_text())
    assert not report["passed"] and report["counts"] == {"pass": 1, "fail": 0, "timeout": 1, "skip": 0}
    assert report["results"]["compare-b16-fp16"]["error"].startswith("unreadable")
    assert report["compare"] == [{"engine": "ti16-fp32", "passed": True, "min_cosine": 0.99998, "rel_l2": 2e-6,
                                  "top1_agreement": 1.0, "accuracy": 0.8, "reference_accuracy": 0.8}]
    assert "NOT PASSED" in (out / "gpu-report.md").read_text()
