"""Publishing a model repository to S3 (a real moto server on 127.0.0.1): what lands, what is refused, faults.

The reference for what must land is the repository written to a local folder by the same
command: every object's bytes must hash like the local file at the same path.
"""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient: pip install 'vit-deploy[serve]'")
boto3 = pytest.importorskip("boto3", reason="needs boto3: pip install 'vit-deploy[s3]'")

from vit_deploy import objectstore  # noqa: E402


def _objects(bucket: str, prefix: str = "") -> dict[str, str]:
    """Every object in ``bucket`` under ``prefix``: key -> sha256 of its bytes, read back from the server."""
    s3 = boto3.client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"]] = hashlib.sha256(body).hexdigest()
    return out


def _local(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def _repo(run_cli, artifact, out, *extra):
    code, stdout, err = run_cli("triton-repo", str(artifact), "--backend", "python", "--out", str(out), *extra)
    return code, stdout, err


def test_triton_repo_to_s3_lands_the_local_repository_and_nothing_else(tiny_artifacts, bucket, tmp_path, run_cli):
    local = tmp_path / "local"
    assert _repo(run_cli, tiny_artifacts["fp32"], local, "--name", "tiny")[0] == 0
    code, out, err = _repo(run_cli, tiny_artifacts["fp32"], f"s3://{bucket}/team/models", "--name", "tiny")
    assert code == 0, err
    assert f"Wrote s3://{bucket}/team/models" in out
    landed = _objects(bucket)
    want = {f"team/models/{k}": v for k, v in _local(local).items() if not k.startswith(".vit-deploy")}
    marker_key = "team/models/.vit-deploy-repository.json"
    assert {k: v for k, v in landed.items() if k != marker_key} == want  # no staging, no lock left behind
    marker = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=marker_key)["Body"].read())
    assert marker["state"] == "published"
    assert {f["path"]: f["sha256"] for f in marker["files"]} == {k.removeprefix("team/models/"): v
                                                                 for k, v in want.items()}


def test_overwrite_rules_match_local_folders(tiny_artifacts, bucket, run_cli):
    url = f"s3://{bucket}/models"
    assert _repo(run_cli, tiny_artifacts["fp32"], url, "--name", "one")[0] == 0
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], url, "--name", "two")
    assert code == 1 and "already holds a vit-deploy model repository; pass --force" in err
    before = _objects(bucket)
    # --force replaces it whole: model "one" is gone, "two" is there
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], url, "--name", "two", "--force")
    assert code == 0, err
    after = _objects(bucket)
    assert not any(k.startswith("models/one/") for k in after) and "models/two/config.pbtxt" in after
    assert after["models/two/1/artifact/model.onnx"] == before["models/one/1/artifact/model.onnx"]

    # something we did not write, inside the repository: refused even with --force, and left alone
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="models/notes.txt", Body=b"mine")
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], url, "--name", "three", "--force")
    assert code == 1 and "also holds objects vit-deploy did not write (notes.txt)" in err
    assert _objects(bucket) == {**after, "models/notes.txt": hashlib.sha256(b"mine").hexdigest()}

    # a prefix that is not ours at all
    s3.put_object(Bucket=bucket, Key="data/x.csv", Body=b"1,2")
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], f"s3://{bucket}/data", "--force")
    assert code == 1 and "is not a vit-deploy model repository (it holds x.csv)" in err


def test_second_writer_is_refused_and_a_failed_upload_leaves_the_old_repository(tiny_artifacts, bucket, run_cli,
                                                                                 monkeypatch):
    from botocore.exceptions import ConnectionClosedError

    url = f"s3://{bucket}/models"
    assert _repo(run_cli, tiny_artifacts["fp32"], url, "--name", "old")[0] == 0
    old = _objects(bucket)

    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=".models.lock", Body=json.dumps({"pid": 1, "host": "h", "since": 0}))
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], url, "--name", "new", "--force")
    assert code == 1 and "another vit-deploy is publishing to" in err and "pid 1 on h" in err
    s3.delete_object(Bucket=bucket, Key=".models.lock")

    # the network fails on the third upload (a real client and server; boto's own hook raises the fault)
    real_client = objectstore.client
    calls = []

    def failing_client(*args):
        s3 = real_client(*args)

        def drop(**kwargs):
            calls.append(kwargs.get("model") and kwargs["model"].name)
            if len([c for c in calls if c == "PutObject"]) == 3:
                raise ConnectionClosedError(endpoint_url="http://test")

        s3.meta.events.register("before-call.s3.PutObject", drop)
        return s3

    monkeypatch.setattr(objectstore, "client", failing_client)
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], url, "--name", "new", "--force")
    assert code == 1 and "failed (Connection was closed" in err and "nothing half-written is visible" in err
    assert _objects(bucket) == old  # old repository as it was; no staged objects, no lock left


@pytest.mark.parametrize("url, message", [
    ("gs://b/models", "gs:// locations are not supported"),
    ("s3://bkt", "give a folder inside the bucket"),
    ("s3://Bad_Bucket/m", "is not an S3 bucket name"),
])
def test_bad_locations_are_one_line(tiny_artifacts, run_cli, url, message):
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], url)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_store_faults_are_one_line(tiny_artifacts, s3_env, run_cli, monkeypatch):
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], "s3://no-such-bucket/models")
    assert code == 1 and "bucket 'no-such-bucket' does not exist" in err

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], "s3://any-bucket/models")
    assert code == 1 and "no usable AWS credentials" in err and "AWS_ACCESS_KEY_ID" in err


def test_unreachable_endpoint_is_one_line(tiny_artifacts, s3_env, run_cli, monkeypatch):
    from vit_deploy.serving.server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, err = _repo(run_cli, tiny_artifacts["fp32"], "s3://any-bucket/models")
    assert code == 1 and "the S3 endpoint http://127.0.0.1:" in err and "AWS_ENDPOINT_URL" in err


def test_access_denied_names_the_permissions():
    from botocore.exceptions import ClientError

    error = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                         "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
    text = objectstore._client_error(error, objectstore.parse("s3://bkt/m"), "publish to", "http://x")
    assert "access denied (AccessDenied: Access Denied)" in text and "s3:PutObject" in text


def _enforce_iam(endpoint: str, after: str) -> None:
    """moto checks IAM policies from the next request on (``after`` = "0"), or never again ("inf")."""
    import urllib.request

    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=after.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).read()


def test_access_denied_by_the_server_is_one_line_naming_the_permissions(tiny_artifacts, s3_env, bucket, run_cli,
                                                                        monkeypatch):
    """A user whose policy allows reading only, on a server that enforces IAM: the publish is refused in one line
    naming the permissions it needs, and nothing lands."""
    import uuid

    iam = boto3.client("iam")
    user = f"reader-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="read-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _enforce_iam(s3_env, "0")
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        code, out, err = _repo(run_cli, tiny_artifacts["fp32"], f"s3://{bucket}/models")
    finally:
        _enforce_iam(s3_env, "inf")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "access denied" in err and "s3:PutObject" in err, err
    assert _objects(bucket) == {}  # not even the lock


def test_publish_an_existing_local_repository(tiny_artifacts, bucket, tmp_path, run_cli):
    local = tmp_path / "repo"
    assert _repo(run_cli, tiny_artifacts["fp32"], local, "--name", "tiny")[0] == 0
    code, out, err = run_cli("publish", str(local), f"s3://{bucket}/served")
    assert code == 0, err
    assert "Published s3://" in out and "tiny" in out
    landed = {k.removeprefix("served/"): v for k, v in _objects(bucket).items()}
    assert {k: v for k, v in landed.items() if not k.startswith(".")} == \
        {k: v for k, v in _local(local).items() if not k.startswith(".")}

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    code, _, err = run_cli("publish", str(tmp_path / "junk"), f"s3://{bucket}/junk")
    assert code == 1 and "is not a Triton model repository (holds a.txt" in err
