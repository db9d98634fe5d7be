"""What several test modules share that is not a fixture: paths, reference models, checks, artifact fakes.

Imported as ``from helpers import ...`` (pyproject puts tests/ on the path); fixtures live in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "calibration" / "photos.txt"


def cpu_int8_floor(exact: float, saturating: float) -> float:
    """The bound a CPU INT8 kernel (OpenVINO, a peer's IR) is held to on this machine: ``exact`` where the CPU
    has VNNI/AMX, ``saturating`` where oneDNN falls back to 16-bit saturating multiply-adds and 7-bit weights
    (an AVX2-only CPU: ``vit_deploy.doctor.probe_cpu``; the graph itself is not less accurate there)."""
    from vit_deploy.doctor import probe_cpu

    return saturating if probe_cpu()["int8_exact"] is False else exact


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
