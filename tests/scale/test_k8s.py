"""``vit-deploy k8s``: every manifest passes strict schema validation, and a typo fails it.

Schemas: KServe's InferenceService CRD (read from ../shared/third_party/kserve, never copied
here) and Kubernetes' own (the kubernetes-validate package). "Strict" as ``kubectl apply
--validate=strict``: a field the schema does not define is an error, not silently pruned.
The Deployment's tritonserver arguments run against the real server in test_triton_s3.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="needs PyYAML: pip install 'vit-deploy[k8s]'")
pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient: pip install 'vit-deploy[serve]'")

KSERVE = Path(__file__).resolve().parents[3] / "shared" / "third_party" / "kserve"
K8S_VERSION = "1.30.0"  # a Kubernetes release KServe supports; kubernetes-validate ships its schemas


def _strict(schema):
    """``schema`` with unknown fields refused wherever it lists the fields (CRD schemas leave that to pruning)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def kserve_validator():
    if not (KSERVE / "serving.kserve.io_inferenceservices.yaml").is_file():
        pytest.skip(f"needs KServe's CRDs in {KSERVE} (../shared/third_party/kserve)")
    import jsonschema

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 2 MB of YAML: libyaml's parser when there is one
    crd = yaml.load((KSERVE / "serving.kserve.io_inferenceservices.yaml").read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object", "additionalProperties": False, "required": ["name"],
                                        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                                       "labels": {"type": "object"},
                                                       "annotations": {"type": "object"}}}
    return jsonschema.Draft7Validator(schema)


def _check_kserve(validator, doc) -> None:
    errors = sorted(validator.iter_errors(doc), key=str)
    assert not errors, "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:3])
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"


def _check_core(doc) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


@pytest.fixture
def manifests(tiny_artifacts, bucket, tmp_path, run_cli):
    url = f"s3://{bucket}/vit/tiny-models"
    code, _, err = run_cli("triton-repo", str(tiny_artifacts["fp32"]), "--backend", "python", "--name", "tiny",
                           "--out", url)
    assert code == 0, err
    out = tmp_path / "k8s"
    code, stdout, err = run_cli("k8s", url, "--out", str(out), "--gpus", "1", "--namespace", "ml",
                                "--s3-secret", "s3-creds", "--max-replicas", "4")
    assert code == 0, err
    return out, url


def test_every_manifest_passes_strict_validation(manifests, kserve_validator, s3_server):
    out, url = manifests
    [isvc] = list(yaml.safe_load_all((out / "inferenceservice.yaml").read_text()))
    _check_kserve(kserve_validator, isvc)
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == url and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] == "triton" and model["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert isvc["spec"]["predictor"]["maxReplicas"] == 4

    docs = list(yaml.safe_load_all((out / "triton.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    for doc in docs:
        _check_core(doc)
        assert doc["metadata"]["namespace"] == "ml"
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    host = s3_server.removeprefix("http://")
    assert f"--model-repository=s3://{host}/{url.removeprefix('s3://')}" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["runAsNonRoot"] and container["envFrom"][0]["secretRef"]["name"] == "s3-creds"
    assert docs[2]["spec"]["metrics"][0]["pods"]["metric"]["name"] == "avg_time_queue_us"
    readme = (out / "README.md").read_text()
    assert "kubectl apply -n ml -f inferenceservice.yaml" in readme and "nv_inference_queue_duration_us" in readme


def test_validation_fails_on_a_typo(manifests, kserve_validator):
    import jsonschema
    import kubernetes_validate

    out, _ = manifests
    [isvc] = list(yaml.safe_load_all((out / "inferenceservice.yaml").read_text()))
    typo = copy.deepcopy(isvc)
    model = typo["spec"]["predictor"]["model"]
    model["storageUrl"] = model.pop("storageUri")
    with pytest.raises(AssertionError, match="storageUrl"):
        _check_kserve(kserve_validator, typo)
    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["minReplicas"] = "one"
    assert any(isinstance(e, jsonschema.ValidationError) for e in kserve_validator.iter_errors(wrong_type))

    deployment = next(yaml.safe_load_all((out / "triton.yaml").read_text()))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        _check_core(deployment)


def test_local_repository_and_bad_options_are_refused(tiny_artifacts, tmp_path, run_cli, s3_env):
    code, _, err = run_cli("k8s", str(tmp_path / "repo"), "--out", str(tmp_path / "k8s"))
    assert code == 1 and "is a local folder; a cluster reads the repository from object storage: publish it " \
                         "first (vit-deploy publish" in err
    code, _, err = run_cli("k8s", "s3://bkt/m", "--min-replicas", "3", "--max-replicas", "2")
    assert code == 1 and "--max-replicas 2 is below --min-replicas 3" in err
    code, _, err = run_cli("k8s", "s3://bkt/m", "--name", "Not_A_Name")
    assert code == 1 and "is not a usable Kubernetes name" in err
    assert not (tmp_path / "k8s").exists()


def test_an_existing_output_folder_needs_force(manifests, run_cli):
    out, url = manifests
    code, _, err = run_cli("k8s", url, "--out", str(out))
    assert code == 1 and "already holds a folder of vit-deploy Kubernetes manifests; pass --force" in err
    code, _, err = run_cli("k8s", url, "--out", str(out), "--force")
    assert code == 0, err
