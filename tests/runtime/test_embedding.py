"""The pre-head embedding (``runner.embed``, ``infer(images, outputs=...)``) against references.

References: the PyTorch module's own pieces applied by hand (patch embedding, class token, position
embeddings, blocks, final norm: the class token the head reads), and the head's own weights
(``embedding @ W.T + b`` must give the graph's logits). Nothing is compared with the code under test alone.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading

import numpy as np
import pytest
import torch

from vit_deploy import artifact as artifact_view
from vit_deploy import runtime
from vit_deploy.errors import UsageError
from vit_deploy.images.synthetic import random_images
from vit_deploy.parity.reference import reference_model
from vit_deploy.runtime.embedding import head_input

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
OPENVINO = pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed"))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    from vit_deploy.specs import model_config

    return random_images(6, 32, model_config("test", 32, 5).preprocessing, seed=5)


def by_hand(directory, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(class token after the final norm, computed from the module's parts; logits; head weight; head bias)."""
    model = reference_model(artifact_view.open(directory))
    with torch.no_grad():
        t = torch.from_numpy(x)
        tokens = model.patch_embed.proj(t).flatten(2).transpose(1, 2)
        tokens = torch.cat([model.cls_token.expand(len(t), -1, -1), tokens], dim=1) + model.pos_embed
        for block in model.blocks:
            tokens = block(tokens)
        cls = model.norm(tokens)[:, 0]
        logits = model(t)
    w, b = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    np.testing.assert_allclose(cls.numpy() @ w.T + b, logits.numpy(), rtol=1e-5, atol=1e-6)  # what the head reads
    return cls.numpy(), logits.numpy(), w, b


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("backend", ["onnxruntime", OPENVINO, "pytorch"])
def test_fp32_embedding_is_the_class_token_the_head_reads(tiny_artifacts, images, backend):
    want, logits, w, b = by_hand(tiny_artifacts["fp32"], images)
    with runtime.open(tiny_artifacts["fp32"], backend) as runner:
        assert runner.embedding_dim == 32
        alone = runner.infer(images)
        both = runner.infer(images, outputs=("logits", "embedding"))
        embedded = runner.embed(images)
    assert both["embedding"].dtype == np.float32 and both["embedding"].shape == (6, 32)
    np.testing.assert_allclose(both["embedding"], want, rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(embedded, both["embedding"])
    np.testing.assert_array_equal(both["logits"], alone)  # asking for the embedding changes no logit
    np.testing.assert_allclose(both["embedding"] @ w.T + b, both["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both["logits"], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", OPENVINO])
def test_fp16_embedding_comes_back_float32_and_reproduces_the_logits(tiny_artifacts, images, backend):
    want, _, w, b = by_hand(tiny_artifacts["fp32"], images)
    with runtime.open(tiny_artifacts["fp16"], backend) as runner:
        found = runner.infer(images, outputs=["embedding", "logits"])
    assert found["embedding"].dtype == np.float32
    np.testing.assert_allclose(found["embedding"], want, rtol=1e-2, atol=5e-3)
    # the FP16 graph's own head (weights rounded to fp16) reads this tensor: fp16-level agreement
    np.testing.assert_allclose(found["embedding"] @ w.T + b, found["logits"], rtol=1e-2, atol=5e-3)


@pytest.mark.parametrize("backend", ["onnxruntime", OPENVINO])
def test_int8_embedding_undoes_smoothquant_and_is_close_to_fp32(tiny_artifacts, images, backend):
    want, _, _, _ = by_hand(tiny_artifacts["fp32"], images)
    head = head_input(artifact_view.open(tiny_artifacts["int8"]))
    assert head.scales is not None and not np.allclose(head.scales, 1)  # the head's group was smoothed here
    with runtime.open(tiny_artifacts["int8"], backend) as runner:
        got = runner.embed(images)
    assert cosine(got, want).min() >= 0.98
    # left scaled, the same tensor would be far off: the factors are what makes it the embedding
    assert cosine(got / head.scales, want).min() < cosine(got, want).min()


def test_smoothed_int8_without_its_parent_is_refused_not_faked(tiny_artifacts, tmp_path, images):
    copy = tmp_path / "int8"
    shutil.copytree(tiny_artifacts["int8"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["parent"]["path"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with runtime.open(copy) as runner, runtime.open(tiny_artifacts["int8"]) as original:
        np.testing.assert_array_equal(runner.infer(images), original.infer(images))  # the logits still run
        with pytest.raises(UsageError, match="needs the parent FP32 graph, which is not at .*gone.*'pytorch'"):
            runner.embed(images)


def test_a_tensorrt_engine_refuses_in_one_line_naming_what_gives_it(tiny_artifacts, tmp_path):
    from helpers import engine_manifest_without_plan

    from vit_deploy.runtime.tensorrt_runner import TensorRTRunner

    engine = artifact_view.open(engine_manifest_without_plan(tiny_artifacts["fp16"], tmp_path / "plan"), verify=False)
    with pytest.raises(UsageError) as e:
        runtime.check_embedding(engine, None)
    message = str(e.value)
    assert "\n" not in message and "logits binding" in message
    assert str(tiny_artifacts["fp16"]) in message and "--backend pytorch" in message
    runtime.check_embedding(engine, "pytorch")  # its PyTorch reference gives it
    # the runner itself says the same (built without TensorRT here: only the refusal path is exercised)
    runner = object.__new__(TensorRTRunner)
    runner.artifact, runner.directory = engine, engine.directory
    with pytest.raises(UsageError, match="logits binding"):
        runner.check_outputs(("logits", "embedding"))


@pytest.mark.parametrize("outputs", ["embedding", ("logits", "features"), (), [1]])
def test_unknown_outputs_are_refused(tiny_artifacts, images, outputs):
    with runtime.open(tiny_artifacts["fp32"]) as runner, pytest.raises(UsageError, match="logits, embedding"):
        runner.infer(images, outputs=outputs)


def test_checks_splitting_and_torch_in_torch_out_hold_for_the_embedding(tiny_artifacts, images):
    with runtime.open(tiny_artifacts["fp32"], max_batch=4) as runner:
        whole = runner.embed(images)  # 6 images: 4 + 2
        assert isinstance(whole, np.ndarray) and whole.shape == (6, 32)
        np.testing.assert_allclose(whole, np.concatenate([runner.embed(images[:3]), runner.embed(images[3:])]),
                                   rtol=1e-6, atol=1e-6)
        from_torch = runner.embed(torch.from_numpy(images))
        assert isinstance(from_torch, torch.Tensor)
        np.testing.assert_array_equal(from_torch.numpy(), whole)
        with pytest.raises(UsageError, match="dtype float64"):
            runner.embed(images.astype(np.float64))
    runner.close()
    with pytest.raises(UsageError, match="closed"):
        runner.embed(images)


def test_concurrent_first_calls_match_sequential_ones(tiny_artifacts, images):
    """The first embedding call swaps the session while other threads run logits and embeddings."""
    with runtime.open(tiny_artifacts["int8"]) as reference:
        want = reference.infer(images, outputs=("logits", "embedding"))
    results: dict[int, dict] = {}
    with runtime.open(tiny_artifacts["int8"]) as runner:
        barrier = threading.Barrier(8)

        def work(i: int) -> None:
            barrier.wait()
            results[i] = runner.infer(images, outputs=("logits", "embedding") if i % 2 else ("logits",))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 8
    for i, found in results.items():
        np.testing.assert_array_equal(found["logits"], want["logits"])
        if i % 2:
            np.testing.assert_array_equal(found["embedding"], want["embedding"])


def test_dynamic_resolution_sizes_each_give_their_embedding(tiny_dynamic):
    from vit_deploy.specs import model_config

    prep = model_config("test", 32, 5).preprocessing
    small, large = random_images(2, 16, prep, seed=1), random_images(3, 48, prep, seed=2)
    with runtime.open(tiny_dynamic["fp32"]) as runner, runtime.open(tiny_dynamic["fp32"], "pytorch") as reference:
        mixed = runner.embed([large, small[0], small[1]])
        assert mixed.shape == (5, 32)
        np.testing.assert_allclose(mixed[:3], reference.embed(large), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mixed[3:], reference.embed(small), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", OPENVINO])
def test_a_graph_with_external_weights_gives_the_same_embedding(tiny_artifacts, tmp_path, images, monkeypatch,
                                                                 backend):
    """A graph over 2 GB keeps its weights in a side file: the in-memory graph must still find them."""
    import onnx

    from vit_deploy.artifact import file_entry, write_manifest
    from vit_deploy.onnx.graph import save_model

    copy = tmp_path / "external"
    shutil.copytree(tiny_artifacts["fp32"], copy)
    assert save_model(onnx.load(str(copy / "model.onnx")), copy / "model.onnx", external_threshold=1) == [
        "model.onnx", "model.onnx.data"]
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"] = [file_entry(copy, "model.onnx", "model"), file_entry(copy, "model.onnx.data", "external_data")]
    write_manifest(copy, manifest)
    monkeypatch.chdir(tmp_path.parent)  # the side file is found beside the graph, not in the working directory
    with runtime.open(copy, backend) as runner, runtime.open(tiny_artifacts["fp32"]) as inline:
        np.testing.assert_allclose(runner.embed(images), inline.embed(images), rtol=1e-5, atol=2e-6)
