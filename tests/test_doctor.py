"""``vit-deploy doctor``: every probe answers without a GPU, and every "can't" has a reason and a fix."""

from __future__ import annotations

import json

from vit_deploy import doctor
from vit_deploy.cli.doctor import format_report
from vit_deploy.trt import probe as trt_probe


def test_report_has_every_topic_and_every_cant_has_reason_and_install():
    r = doctor.report()
    assert set(r) == {"gpu", "tensorrt", "onnxruntime", "openvino", "triton", "cpu"}
    for topic, probe in r.items():
        assert isinstance(probe["ok"], bool), topic
        if not probe["ok"]:
            assert probe["reason"] and "\n" not in probe["reason"], topic
            assert probe["install"], topic
    json.dumps(r)  # plain data


def test_tensorrt_reason_is_the_one_every_command_uses():
    from vit_deploy.trt.probe import unavailable_reason

    assert trt_probe.probe_tensorrt()["reason"] == unavailable_reason()


def test_text_report_says_yes_or_no_with_fixes():
    r = doctor.report()
    text = format_report(r)
    for heading in ("GPU", "TensorRT", "ONNX Runtime", "OpenVINO", "Triton"):
        assert heading in text.splitlines()
    if not r["tensorrt"]["ok"]:
        assert f"no   TensorRT engines: {r['tensorrt']['reason']}" in text
        assert f"fix: {r['tensorrt']['install']}" in text


def test_onnxruntime_providers_match_onnxruntime_itself():
    import onnxruntime

    o = doctor.probe_onnxruntime()
    assert o["ok"] and o["providers"] == onnxruntime.get_available_providers()
    assert o["cuda"] == ("CUDAExecutionProvider" in o["providers"])
    if not o["cuda"]:
        assert o["gpu_install"] == "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"


def test_no_driver_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(trt_probe.shutil, "which", lambda name: None)
    trt_probe.probe_gpu.cache_clear()
    try:
        g = trt_probe.probe_gpu()
    finally:
        trt_probe.probe_gpu.cache_clear()
    assert not g["ok"] and "nvidia-smi not found" in g["reason"] and g["install"] == trt_probe.DRIVER_INSTALL


def test_doctor_command(run_cli):
    code, out, err = run_cli("doctor", "--json")
    assert code == 0, err
    assert set(json.loads(out)) == {"gpu", "tensorrt", "onnxruntime", "openvino", "triton", "cpu"}
    code, out, err = run_cli("doctor")
    assert code == 0 and out.startswith("GPU"), err


def test_native_precisions_follow_the_tensor_core_generations(monkeypatch):
    """Per GPU: FP16 from Volta, INT8 from Turing, FP8 only from Ada/Hopper (8.9); the text says what FP8 needs."""
    assert doctor.native_precisions("6.1") == []
    assert doctor.native_precisions("7.5") == ["fp16", "int8"]  # T4
    assert doctor.native_precisions("8.6") == ["fp16", "int8"]  # A10: no FP8
    assert doctor.native_precisions("8.9") == ["fp16", "int8", "fp8"]  # L4
    assert doctor.native_precisions("9.0") == ["fp16", "int8", "fp8"]  # H100
    assert doctor.native_precisions("10.0") == ["fp16", "int8", "fp8"]  # B200: 10 > 9 as numbers, not strings
    assert doctor.native_precisions("n/a") is None
    gpus = [{"name": "NVIDIA A10", "compute_capability": "8.6", "memory": "23028 MiB"},
            {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory": "81559 MiB"}]
    monkeypatch.setattr(doctor, "probe_gpu", lambda: {"ok": True, "gpus": [dict(g) for g in gpus], "driver": "580",
                                                       "cuda": "13.0", "torch": "2.13", "torch_cuda": "13.0",
                                                       "reason": None, "install": None})
    text = format_report(doctor.report())
    assert "runs natively: FP16, INT8; FP8 needs compute capability 8.9+" in text
    assert "runs natively: FP16, INT8, FP8\n" in text


def test_non_utf8_output_of_nvidia_smi_is_a_finding_not_a_traceback(tmp_path):
    """doctor --json died with UnicodeDecodeError when nvidia-smi printed bytes that are not UTF-8."""
    import os
    import subprocess
    import sys

    from helpers import ROOT

    smi = tmp_path / "nvidia-smi"
    smi.write_bytes(b'#!/bin/sh\nif [ -n "$1" ]; then printf "NVIDIA \\377\\376 GPU, 550.54, 9.0, 81559 MiB\\n"; '
                    b'else printf "Treiber \\344 CUDA Version: 12.4 \\377\\n"; fi\n')
    smi.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "vit_deploy.cli", "doctor", "--json"], capture_output=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
    gpu = json.loads(r.stdout)["gpu"]
    assert gpu["gpus"] == [{"name": "NVIDIA \ufffd\ufffd GPU", "compute_capability": "9.0", "memory": "81559 MiB",
                            "precisions": ["fp16", "int8", "fp8"]}]
    assert gpu["driver"] == "550.54" and gpu["cuda"] == "12.4"


def test_cpu_int8_exactness_is_read_from_the_flags(tmp_path):
    """VNNI or AMX: exact INT8 dot products; without them the CPU INT8 kernels saturate (said, with why)."""
    def probe(flags: str) -> dict:
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
        return doctor.probe_cpu(str(info))

    assert probe("avx2 avx512f avx512_vnni")["int8_exact"] is True
    assert probe("avx2 amx_int8 amx_bf16")["int8_flags"] == ["amx_int8"]
    epyc = probe("avx2 fma")
    assert epyc["int8_exact"] is False and "saturate" in epyc["int8_note"]
    assert doctor.probe_cpu(str(tmp_path / "absent"))["int8_exact"] is None
    assert "warn no VNNI/AMX" in format_report({**doctor.report(), "cpu": epyc})
