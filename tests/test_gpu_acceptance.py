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
GPU_STEPS = {"pytest-gpu", "bench-b16-224", "bench-b16-384", "triton", "engine-b16-dyn", "compare-b16-dyn"} | {
    f"engine-{model}-{precision}" for model in ("ti16", "b16-224", "b16-384") for precision in ("fp16", "int8", "fp8")
} | {f"compare-ti16-{precision}" for precision in ("fp16", "int8", "fp8")}


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


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: the step that must be interrupted sleeps (recording its pid); the rest is real python.
case "$*" in
  *"vit_deploy.cli {slow}"*) echo $$ >> "{pids}"; exec sleep 600 ;;
esac
exec "{python}" "$@"
"""


def _alive(pid: int) -> bool:
    try:
        state = next(line for line in open(f"/proc/{pid}/status") if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return " Z " not in state and "zombie" not in state  # a zombie has stopped: only its exit status is left


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None or not os.path.isdir("/proc"),
                    reason="needs bash, timeout and /proc")
@pytest.mark.parametrize(("slow", "signal_name"), [("export", "SIGINT"), ("doctor", "SIGTERM")])
def test_an_interrupt_stops_every_step_at_once_and_still_writes_the_report(tmp_path, slow, signal_name):
    """Ctrl-C (SIGINT to the whole foreground group) or the time limit (SIGTERM to the script) left the
    background prepare jobs running after exit 130, and waited for a foreground step to finish first."""
    import signal

    pids = tmp_path / "pids"
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(slow=slow, pids=pids, python=sys.executable))
    fake.chmod(0o755)
    out = tmp_path / "acc"
    env = dict(os.environ, OUT=str(out), PYTHON=str(fake), REALDATA=str(tmp_path / "no-realdata"), BUDGET="450")
    script = subprocess.Popen(["bash", str(SCRIPT), "--skip-install"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    started: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not started and time.monotonic() < deadline and script.poll() is None:
            time.sleep(0.2)
            started = [int(p) for p in pids.read_text().split()] if pids.exists() else []
        assert started, f"the {slow} step never started: {script.communicate(timeout=30)[0].decode()[-2000:]}"
        time.sleep(0.5)
        sent = time.monotonic()
        if signal_name == "SIGINT":
            os.killpg(script.pid, signal.SIGINT)  # what Ctrl-C does: the terminal signals its foreground group
        else:
            script.send_signal(signal.SIGTERM)
        code = script.wait(timeout=20)
        seconds = time.monotonic() - sent
        assert code == 130, script.stdout.read().decode()[-2000:]
        assert seconds < 10, f"the script took {seconds:.1f}s to stop"
        assert not [p for p in started if _alive(p)], "a step's process outlived the script"
        report = json.loads((out / "gpu-report.json").read_text())
        steps = {s["name"]: s for s in report["steps"]}
        interrupted = "prepare-b16-224" if slow == "export" else "doctor"
        assert steps[interrupted]["status"] == "fail" and "interrupted" in steps[interrupted]["reason"], steps
        assert steps["interrupted"]["status"] == "fail" and (out / "gpu-report.md").is_file()
    finally:
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()


def test_report_reads_speedups_peaks_layers_and_fused_attention(tmp_path):
    """The figures the acceptance run is read by, computed by hand from made-up results: img/s per engine, the
    speed-up over FP16 at the same batch, the share of the H100's dense peak, layer precisions, fused attention."""
    out = tmp_path / "acc"
    (out / "results").mkdir(parents=True)
    (out / "steps.tsv").write_text("doctor\tpass\t2\t\tvit-deploy doctor\n")
    (out / "results" / "doctor.json").write_text(json.dumps({"gpu": {"gpus": [
        {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory": "81559 MiB"}]}, "tensorrt": {}}))

    def bench(gflop, speeds):
        return {"model": {"flops": {"gflop": gflop}}, "rows": [
            {"name": f"tensorrt-{p}", "status": "ok",
             "results": [{"batch": b, "status": "ok", "img_per_s": v} for b, v in by_batch.items()]}
            for p, by_batch in speeds.items()] + [{"name": "pytorch-fp32", "status": "ok", "results": []}]}

    (out / "results" / "bench-b16-224.json").write_text(json.dumps(bench(35.0, {
        "fp16": {1: 900.0, 64: 10000.0}, "int8": {64: 14000.0}, "fp8": {64: 14500.0}})))
    (out / "results" / "bench-b16-384.json").write_text(json.dumps(bench(111.0, {"fp16": {64: 5000.0}})))
    (out / "results" / "engine-b16-224-fp8.json").write_text(json.dumps({"engine": {
        "built": True, "validation": {"passed": True}, "tensorrt": {"inspector": {
            "precision_counts": {"fp8": 61, "fp16": 40, "fp32": 25},
            "fused_attention": {"layers": 12, "precisions": {"fp16": 12}, "names": []}}}}}))
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_report.py"), str(out)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "gpu-report.json").read_text())
    rows = {(x["model"], x["engine"], x["batch"]): x for x in report["bench"]}
    assert rows[("b16-224", "int8", 64)]["vs_fp16"] == 1.4 and rows[("b16-224", "fp8", 64)]["vs_fp16"] == 1.45
    assert rows[("b16-224", "fp16", 1)]["vs_fp16"] == 1.0
    # 5000 img/s x 111 GFLOP = 555 TFLOP/s of the H100 SXM's 989.4 dense FP16
    assert rows[("b16-384", "fp16", 64)]["peak_fraction"] == round(555 / 989.4, 4)
    met = {t["target"].split(",")[0]: t["met"] for t in report["targets"]}
    assert met == {"INT8 engine vs FP16": True, "FP8 engine vs FP16": False,
                   "FP16 b16@384 share of the dense FP16 peak": False}
    (engine,) = report["engines"]
    assert engine["engine"] == "b16-224-fp8" and engine["fused_attention_layers"] == 12
    text = (out / "gpu-report.md").read_text()
    assert "| b16-224-fp8 | True | True | fp8 61, fp16 40, fp32 25 | 12 (fp16 12) |" in text
    assert "| FP8 engine vs FP16, b16@224, batch 64 | 1.45 | 1.5 | NO |" in text
