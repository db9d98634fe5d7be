"""Triton serving: generated configs parse against Triton's real schema; the real server end to end.

The end-to-end tests start a real ``tritonserver`` on loopback (from the nvidia-pytriton wheel or
a Triton install) and skip, saying why, where none can be found.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import engine_manifest_without_plan

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient: pip install 'vit-deploy[serve]'")

from vit_deploy.serving import triton_model  # noqa: E402
from vit_deploy.serving.config import parse_config  # noqa: E402
from vit_deploy.serving.repository import PREPROCESSING_PARAM  # noqa: E402
from vit_deploy.serving.server import ServerError, TritonServer, find_tritonserver  # noqa: E402


def _config(repo: Path, model: str):
    return parse_config((repo / model / "config.pbtxt").read_text())


def test_every_config_parses_against_the_real_schema(tiny_artifacts, tmp_path, run_cli, monkeypatch):
    from vit_deploy.serving import repository

    # auto as for a full Triton install (no local server to follow: test_serving_checks.py covers that)
    monkeypatch.setattr(repository, "local_server_backends", lambda: None)
    plan = engine_manifest_without_plan(tiny_artifacts["fp16"], tmp_path / "test-32-fp16-trt")  # config only
    repo = tmp_path / "repo"
    code, out, err = run_cli("triton-repo", str(plan), str(tiny_artifacts["fp16"]), str(tiny_artifacts["int8"]),
                             "--out", str(repo), "--instances", "2", "--queue-delay-us", "500")
    assert code == 0, err
    trt = _config(repo, "vit-test-32-fp16-trt")
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 64  # from the engine's profile
    assert trt.optimization.cuda.graphs and trt.instance_group[0].count == 2
    assert trt.instance_group[0].kind == trt.instance_group[0].Kind.Value("KIND_GPU")
    assert (repo / "vit-test-32-fp16-trt" / "1" / "model.plan").is_file()
    for name in ("vit-test-32-fp16", "vit-test-32-int8"):
        onnx = _config(repo, name)
        assert onnx.platform == "onnxruntime_onnx" and onnx.max_batch_size == 32
        assert onnx.dynamic_batching.max_queue_delay_microseconds == 500
        assert list(onnx.input[0].dims) == [3, 32, 32] and list(onnx.output[0].dims) == [5]
        assert (repo / name / "1" / "model.onnx").is_file()

    # python backend; FP16 and INT8 as two versions of one model
    repo2 = tmp_path / "repo2"
    code, _, err = run_cli("triton-repo", str(tiny_artifacts["fp16"]), str(tiny_artifacts["int8"]), "--out",
                           str(repo2), "--backend", "python", "--name", "tiny", "--as-versions",
                           "--max-batch-size", "8")
    assert code == 0, err
    py = _config(repo2, "tiny")
    assert py.backend == "python" and py.max_batch_size == 8 and list(py.dynamic_batching.preferred_batch_size) == [
        2, 4, 8]
    assert PREPROCESSING_PARAM in py.parameters
    for version in ("1", "2"):
        # the model Triton runs is vit_deploy/serving/triton_model.py itself, byte for byte
        assert (repo2 / "tiny" / version / "model.py").read_bytes() == Path(triton_model.__file__).read_bytes()
        assert (repo2 / "tiny" / version / "artifact" / "manifest.json").is_file()


def test_a_bad_config_is_refused_by_the_schema():
    from vit_deploy.errors import ArtifactError

    with pytest.raises(ArtifactError, match="ModelConfig"):
        parse_config('name: "x"\nmax_batch_sise: 4\n')


def test_changed_artifact_and_overwrite_are_refused(tiny_artifacts, tmp_path, run_cli):
    changed = tmp_path / "changed"
    shutil.copytree(tiny_artifacts["fp32"], changed)
    with open(changed / "model.onnx", "ab") as f:
        f.write(b"\0")
    code, _, err = run_cli("triton-repo", str(changed), "--out", str(tmp_path / "repo"))
    assert code == 1 and "changed after it was made" in err
    assert not (tmp_path / "repo").exists()

    code, _, err = run_cli("triton-repo", str(tiny_artifacts["fp32"]), "--out", str(tmp_path / "repo"))
    assert code == 0, err
    code, _, err = run_cli("triton-repo", str(tiny_artifacts["fp32"]), "--out", str(tmp_path / "repo"))
    assert code == 1 and "--force" in err
    code, _, err = run_cli("triton-repo", str(tiny_artifacts["fp32"]), "--out", str(tmp_path / "repo"), "--force")
    assert code == 0, err


def test_busy_port_is_named(tmp_path, run_cli):
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = run_cli("serve", str(tmp_path / "repo"), "--grpc-port", str(port))
    assert code == 1 and f"port {port} (--grpc-port) is already in use" in err


@pytest.fixture(scope="module")
def served(tiny_artifacts, tmp_path_factory):
    from vit_deploy.serving.repository import RepoOptions, write_repository

    repo = tmp_path_factory.mktemp("serve") / "repo"
    # a long queue delay makes batching certain on a slow CI machine; preferred 8 so batches form
    write_repository(RepoOptions([tiny_artifacts["fp32"]], repo, backend="python", name="tiny",
                                 max_batch=16, preferred_batch=(8, 16), queue_delay_us=20000, threads=1))
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout=90) as server:
        yield server


@pytest.mark.triton
def test_end_to_end_concurrent_http_and_grpc(served, tiny_artifacts):
    from vit_deploy import runtime
    from vit_deploy.serving.client import TritonClient

    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1 + i % 3, 3, 32, 32), dtype=np.float32) for i in range(48)]
    with runtime.open(tiny_artifacts["fp32"], "pytorch") as reference:
        expected = [reference.infer(b) for b in batches]
    stats_client = TritonClient(served.http_url, "tiny")
    before = stats_client.statistics()
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        protocol, url = ("http", served.http_url) if k % 2 else ("grpc", served.grpc_url)
        try:
            with TritonClient(url, "tiny", protocol=protocol) as client:
                for i in range(k, len(batches), 8):
                    results[i] = client.infer(batches[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i, want in enumerate(expected):
        np.testing.assert_allclose(results[i], want, rtol=1e-4, atol=1e-4)
    after = stats_client.statistics()
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == sum(len(b) for b in batches)
    assert executions < inferences, "the dynamic batcher never put requests together"


@pytest.mark.triton
def test_bad_requests_get_errors_and_the_server_keeps_serving(served):
    from vit_deploy.serving.client import InferError, TritonClient

    good = np.zeros((2, 3, 32, 32), np.float32)
    for protocol, url in (("http", served.http_url), ("grpc", served.grpc_url)):
        with TritonClient(url, "tiny", protocol=protocol) as client:
            with pytest.raises(InferError, match="unexpected shape"):
                client.infer(np.zeros((1, 3, 16, 16), np.float32))
            with pytest.raises(InferError, match="datatype|FP64|FP32"):
                client.infer(np.zeros((1, 3, 32, 32), np.float64), datatype="FP64")
            with pytest.raises(InferError, match="NaN"):  # reaches the model: vit_deploy's runtime refuses it
                client.infer(np.full((1, 3, 32, 32), np.nan, np.float32))
            assert client.infer(good).shape == (2, 5)

    # a client that disconnects mid-request (half a body sent) does not disturb the others
    with socket.create_connection(("127.0.0.1", int(served.http_url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"inputs\":")
    time.sleep(0.2)
    with TritonClient(served.http_url, "tiny") as client:
        assert client.infer(good).shape == (2, 5)
    assert served.process.poll() is None


@pytest.mark.triton
def test_a_nan_request_fails_alone_when_batched_with_good_ones(served, tiny_artifacts):
    from vit_deploy import runtime
    from vit_deploy.serving.client import InferError, TritonClient

    rng = np.random.default_rng(2)
    good = [rng.standard_normal((1, 3, 32, 32), dtype=np.float32) for _ in range(7)]
    with runtime.open(tiny_artifacts["fp32"]) as reference:
        expected = [reference.infer(g) for g in good]
    stats = TritonClient(served.http_url, "tiny")
    before = stats.statistics()["execution_count"]
    answers: dict[int, object] = {}
    barrier = threading.Barrier(8)  # all at once, inside the 20 ms queue delay: the batcher joins them

    def send(k: int) -> None:
        images = np.full((1, 3, 32, 32), np.nan, np.float32) if k == 7 else good[k]
        with TritonClient(served.http_url, "tiny") as client:
            barrier.wait()
            try:
                answers[k] = client.infer(images)
            except InferError as e:
                answers[k] = e

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.statistics()["execution_count"] - before < 8, "no batch formed: the test would prove nothing"
    assert isinstance(answers[7], InferError) and "NaN" in str(answers[7])
    for k, want in enumerate(expected):
        np.testing.assert_allclose(answers[k], want, rtol=1e-4, atol=1e-4)


@pytest.mark.triton
def test_load_refuses_a_batch_above_the_models_max(served, run_cli):
    for protocol, url in (("http", served.http_url), ("grpc", served.grpc_url)):
        code, _, err = run_cli("triton-load", "--name", "tiny", "--url", url, "--protocol", protocol, "--batch", "17")
        assert code == 1 and err.strip().splitlines() == ["error: --batch 17 exceeds model tiny's max_batch_size 16; "
                                                          "give --batch 1..16"], err


@pytest.mark.triton
def test_load_and_predict_through_the_server(served, tiny_artifacts, tmp_path):
    from vit_deploy.cli.serving import format_load
    from vit_deploy.serving.client import TritonClient
    from vit_deploy.serving.load import run_load

    result = run_load(served.grpc_url, "tiny", protocol="grpc", clients=4, requests=10,
                      artifact=str(tiny_artifacts["fp32"]), threads=1)
    assert result["errors"] == 0 and result["completed"] == 40
    assert result["server"]["inference_count"] == 40 and result["ratio_triton_over_direct"] > 0
    assert "Triton / direct" in format_load(result)

    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(photo)
    with TritonClient(served.http_url, "tiny") as client:
        top = client.predict([photo], top_k=3)
    assert len(top[0]["top"]) == 3 and top[0]["top"][0]["name"].startswith("class ")


@pytest.mark.triton
def test_a_model_needing_a_missing_backend_is_refused_clearly(tiny_artifacts, tmp_path):
    from vit_deploy.serving.repository import RepoOptions, write_repository
    from vit_deploy.serving.server import available_backends

    binary, root = find_tritonserver()
    have = available_backends(root / "backends" if root else None)
    if have is None or "onnxruntime" in have:
        pytest.skip("this tritonserver has the onnxruntime backend (or its backends are unknown)")
    repo = tmp_path / "repo"
    write_repository(RepoOptions([tiny_artifacts["fp32"]], repo, backend="onnxruntime"))
    with pytest.raises(ServerError, match="lacks .*onnxruntime|onnxruntime backend"):
        TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0).start()
