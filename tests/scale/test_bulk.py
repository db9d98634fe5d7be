"""Bulk prediction into Parquet: in this process (fast) and on a real local Ray cluster with a worker killed (slow).

References: the PyTorch model the artifact was exported from (logits per image), and for Ray the
in-process run on the same images (the same rows).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow: pip install 'vit-deploy[scale]'")

DIGITS = Path(__file__).resolve().parents[2] / "assets" / "digits" / "heldout"


def _rows(out: Path) -> dict[str, dict]:
    rows = pq.read_table(out).to_pylist()
    images = [r["image"] for r in rows]
    assert len(images) == len(set(images)), "an image was written twice"
    return {r["image"]: r for r in rows}


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(DIGITS.glob("*.png"))[:12]:
        shutil.copy(path, folder / path.name)
    (folder / "truncated.png").write_bytes((DIGITS / sorted(os.listdir(DIGITS))[0]).read_bytes()[:60])
    # hostile: a valid PNG header claiming 1 x 100000 pixels (refused before any pixel is decoded)
    from PIL import Image

    Image.new("L", (1, 100000)).save(folder / "strip.png")
    return folder


def _reference_logits(artifact: Path, images: list[str]) -> np.ndarray:
    from vit_deploy import runtime
    from vit_deploy.images.decode import load_batch

    with runtime.open(artifact, "pytorch") as reference:
        return reference.infer(load_batch(images, reference.preprocessing))


def test_in_process_matches_the_pytorch_reference_and_records_failures(tiny_artifacts, image_folder, tmp_path,
                                                                       run_cli):
    out = tmp_path / "out"
    code, stdout, err = run_cli("predict", str(tiny_artifacts["fp32"]), "--source", str(image_folder), "--output",
                                str(out), "--logits", "--batch-size", "4", "--top", "3")
    assert code == 0, err
    assert "14 images predicted" in stdout and "2 failed" in stdout
    rows = _rows(out)
    assert len(rows) == 14
    assert "cannot read image" in rows[str(image_folder / "truncated.png")]["error"]
    assert "aspect" in rows[str(image_folder / "strip.png")]["error"]
    ok = sorted(k for k, r in rows.items() if r["error"] is None)
    assert len(ok) == 12
    want = _reference_logits(tiny_artifacts["fp32"], ok)
    got = np.array([rows[k]["logits"] for k in ok])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for image, logits in zip(ok, want, strict=True):
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert rows[image]["top_classes"] == np.argsort(-probs)[:3].tolist()
        np.testing.assert_allclose(rows[image]["top_scores"], np.sort(probs)[::-1][:3], rtol=1e-5)


def test_rerun_resumes_and_foreign_outputs_are_refused(tiny_artifacts, image_folder, tmp_path, run_cli):
    out, art = tmp_path / "out", str(tiny_artifacts["fp32"])
    images = sorted(p.name for p in image_folder.iterdir())
    half = tmp_path / "half.txt"
    half.write_text("# the first half\n" + "\n".join(f"images/{n}" for n in images[:7]) + "\n")
    code, stdout, err = run_cli("predict", art, "--source", str(half), "--output", str(out), "--json")
    assert code == 0, err
    code, stdout, err = run_cli("predict", art, "--source", str(image_folder), "--output", str(out), "--json")
    assert code == 0, err
    import json

    summary = json.loads(stdout)
    assert (summary["skipped"], summary["done"], summary["images"]) == (7, 7, 14)
    assert len(_rows(out)) == 14

    code, _, err = run_cli("predict", str(tiny_artifacts["fp16"]), "--source", str(image_folder), "--output", str(out))
    assert code == 1 and "holds predictions of another artifact" in err
    code, _, err = run_cli("predict", art, "--source", str(image_folder), "--output", str(out), "--top", "2")
    assert code == 1 and "was written with other settings (top_k: 5)" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    code, _, err = run_cli("predict", art, "--source", str(image_folder), "--output", str(tmp_path / "mine"))
    assert code == 1 and "holds files that are not vit-deploy predictions" in err


def test_embedding_column_only_with_the_option_and_a_changed_option_is_refused(tiny_artifacts, image_folder, tmp_path,
                                                                               run_cli):
    """The column holds what the head reads: the PyTorch model's class token after its final norm, and the
    head's own weights turn it into the logits column."""
    import torch

    from vit_deploy import artifact as artifact_view
    from vit_deploy.images.decode import load_batch
    from vit_deploy.parity.reference import reference_model

    art = str(tiny_artifacts["fp32"])
    out, plain = tmp_path / "out", tmp_path / "plain"
    code, _, err = run_cli("predict", art, "--source", str(image_folder), "--output", str(out), "--embedding",
                           "--logits", "--batch-size", "5")
    assert code == 0, err
    rows = _rows(out)
    assert str(pq.read_schema(next(out.glob("part-*.parquet"))).field("embedding").type) == "list<element: float>"
    ok = sorted(k for k, r in rows.items() if r["error"] is None)
    assert len(ok) == 12 and all(rows[k]["embedding"] is None for k in rows if k not in ok)
    model = reference_model(artifact_view.open(art))
    with torch.no_grad():
        x = torch.from_numpy(load_batch(ok, artifact_view.open(art).preprocessing))
        want = model.norm(model.blocks(torch.cat([model.cls_token.expand(len(x), -1, -1),
                                                  model.patch_embed.proj(x).flatten(2).transpose(1, 2)], 1)
                                       + model.pos_embed))[:, 0].numpy()
    got = np.array([rows[k]["embedding"] for k in ok], dtype=np.float32)
    assert got.shape == (12, 32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    w, b = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    np.testing.assert_allclose(got @ w.T + b, np.array([rows[k]["logits"] for k in ok]), rtol=1e-5, atol=1e-5)

    code, _, err = run_cli("predict", art, "--source", str(image_folder), "--output", str(plain))
    assert code == 0, err
    assert "embedding" not in pq.read_schema(next(plain.glob("part-*.parquet"))).names
    # a resume with the option changed either way is refused, as a --logits change is
    code, _, err = run_cli("predict", art, "--source", str(image_folder), "--output", str(out), "--logits")
    assert code == 1 and "was written with other settings (embedding: True)" in err
    code, _, err = run_cli("predict", art, "--source", str(image_folder), "--output", str(plain), "--embedding")
    assert code == 1 and "was written with other settings (embedding: False)" in err
    # an output written before the option existed (no key in _bulk.json) holds no embedding: resumes without it
    state = json.loads((plain / "_bulk.json").read_text())
    del state["embedding"]
    (plain / "_bulk.json").write_text(json.dumps(state))
    code, stdout, err = run_cli("predict", art, "--source", str(image_folder), "--output", str(plain), "--json")
    assert code == 0 and json.loads(stdout)["skipped"] == 14, err
    code, _, err = run_cli("predict", art, "a.png", "--embedding")
    assert code == 1 and "--embedding are for bulk mode" in err


def test_ray_actors_get_the_embedding_setting(tiny_artifacts, image_folder, tmp_path):
    """Ray's actors are made from predictor_kwargs: the same column as in this process (no cluster needed)."""
    from vit_deploy.bulk import BatchPredictor, BulkOptions, predictor_kwargs

    opts = BulkOptions(tiny_artifacts["int8"], str(image_folder), tmp_path / "out", embedding=True)
    predictor = BatchPredictor(**predictor_kwargs(opts, str(tiny_artifacts["int8"]), 1))
    try:
        table = predictor({"image": [str(p) for p in sorted(image_folder.glob("0*.png"))[:3]]})
    finally:
        predictor.runner.close()
    assert "embedding" in table.column_names and "logits" not in table.column_names
    assert [len(e) for e in table.column("embedding").to_pylist()] == [32, 32, 32]


def test_embedding_from_an_engine_is_refused_before_anything_is_written(tiny_artifacts, image_folder, tmp_path,
                                                                        run_cli):
    from helpers import engine_manifest_without_plan

    engine = engine_manifest_without_plan(tiny_artifacts["fp16"], tmp_path / "engine")
    out = tmp_path / "out"
    code, _, err = run_cli("predict", str(engine), "--source", str(image_folder), "--output", str(out), "--embedding")
    assert code == 1 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "only output is the logits binding" in err
    assert f"vit-deploy predict {tiny_artifacts['fp16']}" in err and "--backend pytorch" in err


def test_s3_source_gives_the_same_rows(tiny_artifacts, image_folder, bucket, tmp_path, run_cli):
    import boto3

    s3 = boto3.client("s3")
    for name in ("0021_1.png", "0024_4.png", "strip.png"):
        s3.upload_file(str(image_folder / name), bucket, f"photos/{name}")
    s3.put_object(Bucket=bucket, Key="photos/readme.txt", Body=b"not an image: not listed")
    code, _, err = run_cli("predict", str(tiny_artifacts["fp32"]), "--source", f"s3://{bucket}/photos", "--output",
                           str(tmp_path / "s3"), "--logits")
    assert code == 0, err
    code, _, err = run_cli("predict", str(tiny_artifacts["fp32"]), "--source", str(image_folder), "--output",
                           str(tmp_path / "local"), "--logits")
    assert code == 0, err
    remote, local = _rows(tmp_path / "s3"), _rows(tmp_path / "local")
    assert sorted(remote) == [f"s3://{bucket}/photos/{n}" for n in ("0021_1.png", "0024_4.png", "strip.png")]
    for key, row in remote.items():
        twin = local[str(image_folder / key.rsplit("/", 1)[1])]
        assert row["top_classes"] == twin["top_classes"] and row["logits"] == twin["logits"]
        assert (row["error"] is None) == (twin["error"] is None)


def test_ray_missing_or_unreachable_is_one_line(tiny_artifacts, image_folder, tmp_path, run_cli, monkeypatch):
    from vit_deploy.serving.server import free_port

    args = ("predict", str(tiny_artifacts["fp32"]), "--source", str(image_folder), "--output")
    code, _, err = run_cli(*args, str(tmp_path / "a"), "--ray", f"127.0.0.1:{free_port()}")
    assert code == 1 and "cannot reach the Ray cluster at 127.0.0.1:" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code, _, err = run_cli(*args, str(tmp_path / "b"), "--ray", "127.0.0.1:6379")
    assert code == 1 and "pip install 'vit-deploy[scale]'" in err
    code, _, err = run_cli("predict", str(tiny_artifacts["fp32"]), "--ray", "127.0.0.1:6379")
    assert code == 1 and "are for bulk mode: give --source and --output" in err


@pytest.fixture
def ray_cluster():
    """A real Ray cluster on 127.0.0.1: a head node and a second worker node, one CPU each; shut down after."""
    pytest.importorskip("ray.data", reason="needs Ray Data: pip install 'vit-deploy[scale]'")
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 80 << 20}
    with pytest.MonkeyPatch.context() as mp:
        # every Ray process (nodes, workers, this driver) takes 127.0.0.1 as its address, not the host's
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read by the processes Ray starts
        from ray._private import ray_constants

        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # this process read it when it imported ray
        cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
        try:
            worker = cluster.add_node(**small)
            cluster.wait_for_nodes()
            assert cluster.address.startswith("127.0.0.1:")
            yield cluster, worker
        finally:
            cluster.shutdown()


def _map_workers(node) -> list:
    """The Ray Data actor processes (our BatchPredictor) under ``node``'s raylet."""
    import psutil

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return [p for p in raylet.children(recursive=True) if "MapWorker" in " ".join(p.cmdline())]


@pytest.mark.slow
def test_ray_cluster_matches_in_process_with_a_worker_killed(tiny_artifacts, tmp_path, ray_cluster, run_cli):
    from PIL import Image

    from vit_deploy import bulk

    cluster, worker_node = ray_cluster
    folder = tmp_path / "images"
    folder.mkdir()
    # big photos-like files (decoding takes tens of ms each), so the kill lands while batches are left
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1536, 1536, 3), dtype=np.uint8)).save(folder / "noise.jpg", quality=90)
    for i in range(64):
        os.link(folder / "noise.jpg", folder / f"copy-{i:03d}.jpg")
    for path in sorted(DIGITS.glob("*.png"))[:8]:
        shutil.copy(path, folder / path.name)

    code, _, err = run_cli("predict", str(tiny_artifacts["fp32"]), "--source", str(folder), "--output",
                           str(tmp_path / "local"), "--logits", "--embedding", "--batch-size", "4")
    assert code == 0, err

    first_result = threading.Event()
    killed: list[int] = []
    real_add = bulk.PartWriter.add

    def add(self, table):
        first_result.set()
        return real_add(self, table)

    def kill_a_worker():
        first_result.wait(120)
        for p in _map_workers(worker_node) or _map_workers(cluster.head_node):
            os.kill(p.pid, signal.SIGKILL)
            killed.append(p.pid)
            break

    killer = threading.Thread(target=kill_a_worker)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bulk.PartWriter, "add", add)
        killer.start()
        start = time.monotonic()
        code, stdout, err = run_cli("predict", str(tiny_artifacts["fp32"]), "--source", str(folder), "--output",
                                    str(tmp_path / "ray"), "--logits", "--embedding", "--batch-size", "4", "--ray",
                                    cluster.address, "--json")
        killer.join()
    assert code == 0, err
    assert killed, "no Ray Data worker was found to kill"
    import json

    summary = json.loads(stdout)
    assert summary["engine"].endswith("(2 workers)") and time.monotonic() - start < 300
    local, remote = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert sorted(remote) == sorted(local) and len(remote) == 73  # nothing lost, nothing twice
    for image, row in local.items():
        assert remote[image]["top_classes"] == row["top_classes"] and remote[image]["error"] == row["error"]
        if row["logits"] is not None:
            np.testing.assert_allclose(remote[image]["logits"], row["logits"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(remote[image]["embedding"], row["embedding"], rtol=1e-5, atol=1e-6)


def test_a_store_fault_stops_the_run_and_a_rerun_finishes_it(tiny_artifacts, image_folder, bucket, tmp_path, run_cli,
                                                            monkeypatch):
    """A failing store is not an image's fault: no row says "failed" for it, and the rerun predicts those images."""
    import boto3
    from botocore.exceptions import ConnectionClosedError

    from vit_deploy import objectstore

    s3 = boto3.client("s3")
    for name in ("0021_1.png", "0024_4.png"):
        s3.upload_file(str(image_folder / name), bucket, f"photos/{name}")
    real_client = objectstore.client

    def failing_client(*args):
        client = real_client(*args)

        def drop(**kwargs):
            raise ConnectionClosedError(endpoint_url="http://test")

        client.meta.events.register("before-call.s3.GetObject", drop)
        return client

    args = ("predict", str(tiny_artifacts["fp32"]), "--source", f"s3://{bucket}/photos", "--output",
            str(tmp_path / "out"))
    monkeypatch.setattr(objectstore, "client", failing_client)
    code, _, err = run_cli(*args)
    assert code == 1 and "the S3 endpoint" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(objectstore, "client", real_client)
    code, _, err = run_cli(*args)
    assert code == 0, err
    rows = _rows(tmp_path / "out")
    assert len(rows) == 2 and all(r["error"] is None for r in rows.values())
