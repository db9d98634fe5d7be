"""The real tritonserver reading a repository from S3 (moto on 127.0.0.1), with the manifests' own arguments.

One server start proves three things: ``triton-repo --out s3://`` publishes what Triton loads,
``serve``'s TritonServer reads ``s3://`` locations, and the plain Deployment's tritonserver
arguments (from ``vit-deploy k8s``) are accepted by Triton on that repository. A second start runs
KServe's runtime arguments on the layout KServe's storage initializer makes (the prefix copied to
a folder). Parity: logits against the PyTorch reference, as the local repository tests check.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

yaml = pytest.importorskip("yaml", reason="needs PyYAML: pip install 'vit-deploy[k8s]'")
pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient: pip install 'vit-deploy[serve]'")

from vit_deploy.serving.server import TritonServer  # noqa: E402

KSERVE_RUNTIME = Path(__file__).resolve().parents[3] / "shared" / "third_party" / "kserve" / "kserve-tritonserver.yaml"
PORT_FLAG = re.compile(r"^--(http|grpc|metrics)-port=(\d+)$")


def _split(args: list[str]) -> tuple[str, dict[str, int], tuple[str, ...]]:
    """(model store, {port flag: port}, every other flag) of a tritonserver argument list."""
    store = [a.split("=", 1)[1] for a in args if a.startswith(("--model-repository=", "--model-store="))]
    ports = {m[1]: int(m[2]) for a in args if (m := PORT_FLAG.match(a))}
    rest = tuple(a for a in args if not a.startswith(("--model-repository=", "--model-store=")) and
                 not PORT_FLAG.match(a))
    assert len(store) == 1, args
    return store[0], ports, rest


def _parity(server: TritonServer, artifact: Path) -> None:
    from vit_deploy import runtime
    from vit_deploy.serving.client import TritonClient

    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with runtime.open(artifact, "pytorch") as reference:
        expected = reference.infer(images)
    with TritonClient(server.http_url, "tiny") as client:
        np.testing.assert_allclose(client.infer(images), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.triton
def test_triton_serves_the_published_repository_with_the_manifests_arguments(tiny_artifacts, bucket, tmp_path,
                                                                             run_cli, s3_server):
    url = f"s3://{bucket}/models"
    code, _, err = run_cli("triton-repo", str(tiny_artifacts["fp32"]), "--backend", "python", "--name", "tiny",
                           "--threads", "1", "--out", url)
    assert code == 0, err
    code, _, err = run_cli("k8s", url, "--out", str(tmp_path / "k8s"))
    assert code == 0, err
    deployment = next(yaml.safe_load_all((tmp_path / "k8s" / "triton.yaml").read_text()))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["tritonserver"]
    store, ports, rest = _split(container["args"])
    assert ports == {p["name"]: p["containerPort"] for p in container["ports"]}
    assert store == f"s3://{s3_server.removeprefix('http://')}/{bucket}/models"

    # the same flags on this machine (ports: free ones instead of 8000-8002, which may be taken here)
    with TritonServer(url, http_port=0, grpc_port=0, metrics_port=0, ready_timeout=90, extra_args=rest) as server:
        assert server.source == store and server.models == ["tiny"]
        _parity(server, tiny_artifacts["fp32"])
        assert server._get("/v2/health/live") == 200  # the liveness probe's path

    if not KSERVE_RUNTIME.is_file():
        pytest.skip(f"KServe's runtime arguments need {KSERVE_RUNTIME}")
    runtime_spec = yaml.safe_load(KSERVE_RUNTIME.read_text())["spec"]["containers"][0]
    assert runtime_spec["args"][0] == "tritonserver"
    store, _, rest = _split(runtime_spec["args"][1:])
    assert store == "/mnt/models"
    # KServe's storage initializer copies storageUri's objects to /mnt/models: the same layout here
    import boto3

    s3, mnt = boto3.client("s3"), tmp_path / "mnt" / "models"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="models/"):
        for obj in page["Contents"]:
            target = mnt / obj["Key"].removeprefix("models/")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
    with TritonServer(mnt, http_port=0, grpc_port=0, metrics_port=0, ready_timeout=90, extra_args=rest) as server:
        _parity(server, tiny_artifacts["fp32"])
