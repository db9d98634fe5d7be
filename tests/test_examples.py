"""The embedding examples in examples/python (and the C++ example's input writer) on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT

from vit_deploy import runtime
from vit_deploy.artifact import Artifact, read_manifest
from vit_deploy.images.decode import load_batch
from vit_deploy.parity.reference import reference_model

sys.path.insert(0, str(ROOT / "examples" / "python"))


@pytest.fixture(scope="module")
def photo() -> Path:
    from skimage import data

    return Path(data.__file__).parent / "chelsea.png"


def post(url: str, body: bytes) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST")) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_service_answers_with_the_models_top5(tiny_artifacts, photo):
    from http_service import make_handler

    artifact = tiny_artifacts["fp32"]
    with runtime.open(artifact) as runner:
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(runner))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            status, body = post(url + "/predict", photo.read_bytes())
            assert status == 200
            manifest = read_manifest(artifact)
            x = load_batch([photo], runner.preprocessing)
            with torch.no_grad():
                model = reference_model(Artifact(Path(artifact), manifest))
                probs = torch.softmax(model(torch.from_numpy(x)).double(), -1)[0]
            expected = torch.topk(probs, 5)
            assert [t["class"] for t in body["top"]] == expected.indices.tolist()
            np.testing.assert_allclose([t["probability"] for t in body["top"]], expected.values, rtol=1e-4)
            status, body = post(url + "/predict", b"not an image")
            assert status == 400 and "cannot read image" in body["error"]
            with ThreadPoolExecutor(4) as pool:  # concurrent requests share the runner
                assert {s for s, _ in pool.map(lambda _: post(url + "/predict", photo.read_bytes()), range(8))} == {200}
            with urllib.request.urlopen(url + "/health") as r:
                assert json.loads(r.read())["status"] == "ready"
        finally:
            server.shutdown()
            server.server_close()


def test_batch_worker_batches_and_matches_single_calls(tiny_artifacts):
    from batch_worker import BatchWorker

    from vit_deploy.images.synthetic import random_images

    artifact = tiny_artifacts["int8"]
    images = random_images(12, 32, runtime.open(artifact).preprocessing, seed=5)
    with runtime.open(artifact) as runner:
        expected = runner.infer(images)
    with BatchWorker(str(artifact), max_batch=4, max_delay_ms=20) as worker:
        batches = []
        run = worker.runner.infer
        worker.runner.infer = lambda x: batches.append(len(x)) or run(x)
        with ThreadPoolExecutor(6) as pool:
            futures = list(pool.map(worker.submit, images))
        results = np.stack([f.result(timeout=30) for f in futures])
        bad = worker.submit(np.zeros((3, 16, 16), np.float32))
        with pytest.raises(Exception, match="16x16"):
            bad.result(timeout=30)
    np.testing.assert_allclose(results, expected, rtol=1e-5, atol=1e-5)
    assert max(batches) > 1 and sum(batches[:-1]) == 12  # requests were batched; the last call was the bad one


def test_cpp_example_input_writer(tiny_artifacts, photo, tmp_path):
    out = tmp_path / "images.f32"
    subprocess.run([sys.executable, str(ROOT / "examples" / "cpp" / "make_input.py"), str(tiny_artifacts["fp32"]),
                    str(photo), str(photo), "-o", str(out)], check=True, capture_output=True)
    prep = runtime.open(tiny_artifacts["fp32"]).preprocessing
    np.testing.assert_array_equal(np.fromfile(out, dtype="<f4").reshape(2, 3, 32, 32), load_batch([photo] * 2, prep))


def test_cpp_example_input_writer_at_a_size_of_a_dynamic_artifact(tiny_dynamic, photo, tmp_path):
    from vit_deploy.images.decode import load_rgb, resize_to

    out = tmp_path / "images.f32"
    script = str(ROOT / "examples" / "cpp" / "make_input.py")
    subprocess.run([sys.executable, script, str(tiny_dynamic["fp32"]), str(photo), "--size", "24x40", "-o", str(out)],
                   check=True, capture_output=True)
    prep = runtime.open(tiny_dynamic["fp32"]).preprocessing
    np.testing.assert_array_equal(np.fromfile(out, dtype="<f4").reshape(1, 3, 24, 40),
                                  resize_to(load_rgb(photo), 24, 40, prep)[None])
    r = subprocess.run([sys.executable, script, str(tiny_dynamic["fp32"]), str(photo), "--size", "20x40",
                        "-o", str(tmp_path / "bad.f32")], capture_output=True, text=True)
    assert r.returncode == 1 and "height 20 -> 16 or 24" in r.stderr and not (tmp_path / "bad.f32").exists()
