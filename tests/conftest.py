"""Shared test helpers: run the CLI in-process, tiny Hugging Face reference models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vit_deploy.cli import main


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


def hf_vit(image_size: int = 32, num_labels: int = 5, seed: int = 0, **shape):
    """A randomly initialised Hugging Face ViTForImageClassification: the independent reference.

    Default shape = vit-deploy's ``test`` variant (patch 8, dim 32, depth 2, heads 2, mlp 64).
    """
    from transformers import ViTConfig, ViTForImageClassification

    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8)
    cfg.update(shape)
    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(image_size=image_size, num_labels=num_labels, hidden_act="gelu", **cfg))
    return model.eval()


def hf_logits(model, images, interpolate: bool = False):
    with torch.no_grad():
        return model(pixel_values=torch.as_tensor(images), interpolate_pos_encoding=interpolate).logits.numpy()


PHOTOS = Path(__file__).resolve().parent.parent / "calibration" / "photos.txt"


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A calibration/timing cache of the test's own, so no test reuses another's cached ranges."""
    monkeypatch.setenv("VIT_DEPLOY_CACHE", str(tmp_path / "cache"))


def assert_concurrent_calls_match_sequential(runner, inputs: list, threads: int = 8) -> None:
    """``runner.infer`` from ``threads`` threads at once gives exactly the sequential results."""
    import threading

    import numpy as np

    sequential = [runner.infer(x) for x in inputs]
    results: dict[int, object] = {}
    barrier = threading.Barrier(threads)

    def work(worker: int) -> None:
        barrier.wait()
        for i in range(worker, len(inputs), threads):
            results[i] = runner.infer(inputs[i])

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for i, expected in enumerate(sequential):
        np.testing.assert_array_equal(results[i], expected)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict[str, Path]:
    """The ``test`` variant at 32 px, 5 classes: its FP32 export and FP16/INT8 graphs (read-only: copy to alter)."""
    from vit_deploy.steps.export import ExportOptions, export_artifact
    from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

    root = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIT_DEPLOY_CACHE", str(root / "cache"))
        fp32 = root / "test-32"
        export_artifact(ExportOptions("test", 32, num_classes=5, out_dir=fp32))
        out = {"fp32": fp32}
        for precision in ("fp16", "int8"):
            out[precision] = root / f"test-32-{precision}"
            opts = PrecisionOptions(precision, fp32, out[precision], calib=str(PHOTOS), calib_batch=4)
            build_precision_artifact(opts)
    return out


def engine_manifest_without_plan(graph: Path, dst: Path) -> Path:
    """An engine-kind artifact folder for testing refusals on machines without TensorRT.

    Its "plan" is the graph's bytes renamed: nothing here runs it or pretends it is an engine;
    only the manifest-driven paths (refusal with exit 3, inspect's manifest view) are tested.
    """
    import shutil

    from vit_deploy.artifact import read_manifest, write_manifest

    shutil.copytree(graph, dst)
    manifest = read_manifest(dst)
    precision = manifest["precision"]
    onnx_file = manifest["files"][0]["path"]
    (dst / onnx_file).rename(dst / f"model.{precision}.plan")
    manifest.update(kind="tensorrt", parent={"path": str(graph), "sha256": manifest["files"][0]["sha256"]},
                    tensorrt={"version": "11.0.0", "compute_capability": "9.0", "gpu": "NVIDIA H100",
                              "profile": {"images": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32],
                                                     "max": [64, 3, 32, 32]}}})
    manifest["files"][0]["path"] = f"model.{precision}.plan"
    write_manifest(dst, manifest)
    return dst
