"""Triton serving of a ``--dynamic-res`` artifact: -1 for height and width, two sizes from one artifact.

The configs are checked against Triton's real schema everywhere; the end-to-end test starts a real
``tritonserver`` (python backend) on loopback and skips, saying why, where none can be found.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from helpers import engine_manifest_without_plan

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient: pip install 'vit-deploy[serve]'")

from vit_deploy.serving.config import parse_config  # noqa: E402
from vit_deploy.serving.repository import SIZES_PARAM, RepoOptions, write_repository  # noqa: E402
from vit_deploy.serving.server import TritonServer  # noqa: E402


def test_configs_use_minus_one_for_height_and_width_and_carry_the_range(tiny_dynamic, tmp_path, monkeypatch):
    from vit_deploy.artifact import read_manifest, write_manifest
    from vit_deploy.serving import repository

    monkeypatch.setattr(repository, "local_server_backends", lambda: None)  # write for a full Triton install
    plan = engine_manifest_without_plan(tiny_dynamic["fp16"], tmp_path / "dyn-fp16-trt")  # config only: never run
    m = read_manifest(plan)
    m["tensorrt"]["profile"]["images"] = {"min": [1, 3, 16, 16], "opt": [8, 3, 32, 32], "max": [64, 3, 64, 64]}
    write_manifest(plan, m)
    repo = tmp_path / "repo"
    summary = write_repository(RepoOptions([plan, tiny_dynamic["fp16"], tiny_dynamic["int8"]], repo))
    assert summary["models"]["vit-dyn-fp16-trt"]["backend"] == "tensorrt"
    for name in summary["models"]:
        config = parse_config((repo / name / "config.pbtxt").read_text())
        assert list(config.input[0].dims) == [3, -1, -1] and list(config.output[0].dims) == [5]
        sizes = json.loads(config.parameters[SIZES_PARAM].string_value)
        assert (sizes["min"], sizes["max"], sizes["step"], sizes["native"]) == (16, 64, 8, 32)


def test_a_fixed_artifact_keeps_its_fixed_dims(tiny_artifacts, tmp_path):
    repo = tmp_path / "repo"
    write_repository(RepoOptions([tiny_artifacts["fp32"]], repo, backend="python", name="fixed"))
    config = parse_config((repo / "fixed" / "config.pbtxt").read_text())
    assert list(config.input[0].dims) == [3, 32, 32] and SIZES_PARAM not in config.parameters


@pytest.fixture(scope="module")
def served(tiny_dynamic, tmp_path_factory):
    repo = tmp_path_factory.mktemp("serve-dynamic") / "repo"
    write_repository(RepoOptions([tiny_dynamic["fp32"]], repo, backend="python", name="dyn", max_batch=8,
                                 preferred_batch=(8,), queue_delay_us=20000, threads=1))
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout=90) as server:
        yield server


@pytest.mark.triton
def test_one_artifact_serves_two_sizes_and_refuses_a_third_by_name(served, tiny_dynamic):
    from vit_deploy import runtime
    from vit_deploy.serving.client import InferError, TritonClient

    rng = np.random.default_rng(0)
    square, wide = rng.standard_normal((2, 3, 32, 32), np.float32), rng.standard_normal((3, 3, 24, 48), np.float32)
    with runtime.open(tiny_dynamic["fp32"], "pytorch") as reference:
        expected = [reference.infer(square), reference.infer(wide)]
    for protocol, url in (("http", served.http_url), ("grpc", served.grpc_url)):
        with TritonClient(url, "dyn", protocol=protocol) as client:
            assert client.sizes is not None and client.input_dims == (3, 32, 32)  # -1 shown as the native size
            for images, want in zip((square, wide), expected, strict=True):
                np.testing.assert_allclose(client.infer(images), want, rtol=1e-4, atol=1e-4)
            with pytest.raises(InferError, match="height 36 -> 32 or 40"):
                client.infer(rng.standard_normal((1, 3, 36, 32), np.float32))
            assert client.infer(square).shape == (2, 5)  # still serving


@pytest.mark.triton
def test_concurrent_requests_of_two_sizes_each_get_their_own_logits(served, tiny_dynamic):
    from vit_deploy import runtime
    from vit_deploy.serving.client import TritonClient

    rng = np.random.default_rng(1)
    requests = [rng.standard_normal((1, 3, *((32, 32) if k % 2 else (16, 56))), np.float32) for k in range(8)]
    with runtime.open(tiny_dynamic["fp32"]) as direct:
        expected = [direct.infer(r) for r in requests]
    answers: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(requests))  # all inside the 20 ms queue delay

    def send(k: int) -> None:
        with TritonClient(served.http_url, "dyn") as client:
            barrier.wait()
            answers[k] = client.infer(requests[k])

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, want in enumerate(expected):
        np.testing.assert_allclose(answers[k], want, rtol=1e-4, atol=1e-4)


@pytest.mark.triton
def test_client_predict_sends_each_photo_at_its_own_size(served, tiny_dynamic, tmp_path):
    from PIL import Image

    from vit_deploy.predict import predict
    from vit_deploy.serving.client import TritonClient

    paths = []
    for i, (h, w) in enumerate(((48, 40), (30, 90))):
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    with TritonClient(served.http_url, "dyn") as client:
        served_top = client.predict(paths, top_k=2)
    local = predict([str(p) for p in paths], tiny_dynamic["fp32"], top_k=2)
    for s, loc in zip(served_top, local, strict=True):
        assert [t["class"] for t in s["top"]] == [t["class"] for t in loc["top"]]
        assert s["top"][0]["prob"] == pytest.approx(loc["top"][0]["probability"], abs=1e-4)


def test_requests_of_several_sizes_in_one_execute_are_each_answered(tiny_dynamic):
    """What the python backend does when the batcher hands over requests of different sizes at once."""
    from vit_deploy import runtime
    from vit_deploy.serving.triton_model import answer_each

    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((2, 3, 32, 32), np.float32), rng.standard_normal((1, 3, 16, 56), np.float32),
              rng.standard_normal((1, 3, 36, 32), np.float32), rng.standard_normal((1, 3, 32, 32), np.float32)]
    with runtime.open(tiny_dynamic["fp32"]) as runner:
        answers = answer_each(runner, arrays)
        for i in (0, 1, 3):
            np.testing.assert_allclose(answers[i], runner.infer(arrays[i]), rtol=1e-5, atol=1e-6)
    assert "height 36 -> 32 or 40" in str(answers[2]) and "this request's images" in str(answers[2])
