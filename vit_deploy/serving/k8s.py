"""Kubernetes manifests for a Triton model repository on object storage: ``vit-deploy k8s``.

Data only: every manifest is a dict built here and written as YAML; nothing talks to a cluster.
Two ways to run the same repository, both read straight from ``s3://``:

- ``inferenceservice.yaml``: a KServe ``InferenceService`` (serving.kserve.io/v1beta1) on the
  ``kserve-tritonserver`` runtime: model format ``triton``, protocol v2, ``storageUri`` the
  repository, resources, min/max replicas and KServe's autoscaling fields.
- ``triton.yaml``: for clusters without KServe, a ``Deployment`` (Triton's own S3 client reads
  the repository), a ``Service``, a ``HorizontalPodAutoscaler`` (autoscaling/v2) on Triton's
  average queue time per request (``nv_inference_queue_duration_us`` /
  ``nv_inference_request_success`` through a Prometheus adapter, as NVIDIA's Helm chart does)
  and a ``PodDisruptionBudget``.

Sizing comes from the repository: memory from the bytes of its model files (the marker lists
them), GPUs from its configs (a ``KIND_GPU`` instance group asks for ``nvidia.com/gpu``). The
Triton command line is :func:`triton_args`: the tests run exactly those arguments against the
local tritonserver on the same repository, so a manifest cannot name a flag or layout Triton
rejects.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import objectstore
from ..errors import ArtifactError, UsageError

DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver"
DEFAULT_TRITON_VERSION = "24.04-py3"  # Triton 2.45, the server the tests run (the nvidia-pytriton wheel's)
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
QUEUE_METRIC = "avg_time_queue_us"  # the Prometheus adapter's name for the queue time per request
EXIT_TIMEOUT_S = 30  # Triton drains in-flight requests this long on SIGTERM; the pod's grace period is longer
FILES = ("inferenceservice.yaml", "triton.yaml", "README.md")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")  # a DNS label, short enough for derived names
_GIB = 1 << 30


@dataclass
class K8sOptions:
    repository: str  # s3://bucket/folder, published with triton-repo --out or vit-deploy publish
    out: Path
    name: str | None = None  # default: the repository folder's last part
    namespace: str | None = None
    image: str = DEFAULT_IMAGE
    triton_version: str = DEFAULT_TRITON_VERSION
    gpus: int | None = None  # per replica; default 1 when a model runs on KIND_GPU, else 0
    min_replicas: int = 1
    max_replicas: int = 3
    queue_time_us: int = 50_000  # HPA target: mean queue time per request
    concurrency: int = 8  # KServe's scaleTarget: in-flight requests per replica
    cpu: str = "2"
    s3_secret: str | None = None  # a Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (plain Deployment)
    service_account: str | None = None  # e.g. IRSA, or KServe's S3 credentials service account
    force: bool = False


def check_options(opts: K8sOptions) -> str:
    """Every option checked before anything is read; returns the resource name."""
    location = _location(opts.repository)
    name = opts.name or re.sub(r"[^a-z0-9-]", "-", location.prefix.rsplit("/", 1)[-1].lower()).strip("-")
    if not _NAME_RE.match(name):
        raise UsageError(f"--name {name!r} is not a usable Kubernetes name: lowercase letters, digits and '-', "
                         "starting and ending with a letter or digit, at most 52 characters")
    for option, value, low in (("--min-replicas", opts.min_replicas, 1), ("--max-replicas", opts.max_replicas, 1),
                               ("--queue-time-us", opts.queue_time_us, 1), ("--concurrency", opts.concurrency, 1),
                               ("--gpus", opts.gpus, 0)):
        if value is not None and value < low:
            raise UsageError(f"{option} {value} must be >= {low}")
    if opts.max_replicas < opts.min_replicas:
        raise UsageError(f"--max-replicas {opts.max_replicas} is below --min-replicas {opts.min_replicas}")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$", opts.image) or ":" in opts.image.rsplit("/", 1)[-1]:
        raise UsageError(f"--image {opts.image!r}: give the image without its tag (the tag is --triton-version), "
                         f"e.g. {DEFAULT_IMAGE}")
    return name


def _location(repository: str) -> objectstore.S3Location:
    if not objectstore.is_url(repository):
        raise UsageError(f"{repository} is a local folder; a cluster reads the repository from object storage: "
                         f"publish it first (vit-deploy publish {repository} s3://BUCKET/FOLDER, or triton-repo ... "
                         "--out s3://BUCKET/FOLDER), then give that s3:// location")
    return objectstore.parse(repository, "REPOSITORY")


@dataclass
class Sizing:
    model_bytes: int
    gpus: int
    memory: str  # a Kubernetes quantity, e.g. "3Gi"


def size_repository(location: objectstore.S3Location, gpus: int | None) -> tuple[Sizing, list[str]]:
    """(sizing, models) from the published repository's marker and configs."""
    from .config import parse_config
    from .remote import config_texts

    configs = config_texts(location)
    s3 = objectstore.client()
    with objectstore.s3_errors(location, "read", s3):
        marker = objectstore.read_marker(s3, location)
    if marker is None:
        raise ArtifactError(f"{location} has no vit-deploy marker, so its size is unknown; publish it with "
                            "vit-deploy publish or triton-repo --out")
    model_bytes = sum(int(f.get("bytes", 0)) for f in marker.get("files", []) if isinstance(f, dict))
    uses_gpu = any(g.kind == g.Kind.Value("KIND_GPU") for text in configs.values()
                   for g in parse_config(text).instance_group)
    # weights once on disk and once in host memory while loading, plus the server and a runtime per model
    memory = math.ceil((2 * model_bytes + _GIB) / _GIB)
    return Sizing(model_bytes, int(uses_gpu) if gpus is None else gpus, f"{memory}Gi"), sorted(configs)


def triton_args(source: str) -> list[str]:
    """The tritonserver command line of the plain Deployment (the tests run it against the local server)."""
    return ["tritonserver", f"--model-repository={source}",
            *(f"--{port}-port={number}" for port, number in PORTS.items()),
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--log-verbose=0"]


def _resources(opts: K8sOptions, sizing: Sizing) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": opts.cpu, "memory": sizing.memory}
    if sizing.gpus:
        amounts["nvidia.com/gpu"] = sizing.gpus  # extended resources: requests must equal limits
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _metadata(name: str, opts: K8sOptions, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    meta["labels"] = labels or {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "vit-deploy"}
    return meta


def inference_service(name: str, opts: K8sOptions, location: objectstore.S3Location, sizing: Sizing) -> dict:
    predictor: dict[str, Any] = {
        "minReplicas": opts.min_replicas,
        "maxReplicas": opts.max_replicas,
        "scaleMetric": "concurrency",
        "scaleTarget": opts.concurrency,
        "model": {
            "modelFormat": {"name": "triton", "version": "2"},
            "runtime": "kserve-tritonserver",
            "runtimeVersion": opts.triton_version,
            "protocolVersion": "v2",
            "storageUri": location.url,
            "resources": _resources(opts, sizing),
        },
    }
    if opts.service_account:
        predictor["serviceAccountName"] = opts.service_account
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _metadata(name, opts), "spec": {"predictor": predictor}}


def plain_kubernetes(name: str, opts: K8sOptions, source: str, sizing: Sizing) -> list[dict]:
    """Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget for tritonserver on ``source``."""
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "vit-deploy"}
    selector = {"app.kubernetes.io/name": name}
    env: list[dict[str, Any]] = [{"name": "AWS_DEFAULT_REGION", "value": "us-east-1"}]
    container: dict[str, Any] = {
        "name": "tritonserver",
        "image": f"{opts.image}:{opts.triton_version}",
        "command": triton_args(source)[:1],
        "args": triton_args(source)[1:],
        "ports": [{"name": port, "containerPort": number} for port, number in PORTS.items()],
        "env": env,
        "resources": _resources(opts, sizing),
        # Ready when every model is loaded; live while the server answers. Loading from S3 can take
        # minutes for big engines: the startup probe allows 10 minutes before liveness applies.
        "startupProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 10,
                         "failureThreshold": 60},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5,
                           "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "runAsNonRoot": True,
                            "runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
        # the python backend passes tensors through shared memory: the default 64 MiB /dev/shm is too small
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if opts.s3_secret:
        container["envFrom"] = [{"secretRef": {"name": opts.s3_secret}}]
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "terminationGracePeriodSeconds": EXIT_TIMEOUT_S + 10,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
    }
    if opts.service_account:
        pod["serviceAccountName"] = opts.service_account
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(name, opts, labels),
        "spec": {
            "replicas": opts.min_replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels, "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": str(PORTS["metrics"]),
                "prometheus.io/path": "/metrics"}}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _metadata(name, opts, labels),
        "spec": {"selector": selector, "ports": [{"name": port, "port": number, "targetPort": port}
                                                 for port, number in PORTS.items()]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _metadata(name, opts, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": opts.min_replicas, "maxReplicas": opts.max_replicas,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": QUEUE_METRIC},
                                                  "target": {"type": "AverageValue",
                                                             "averageValue": str(opts.queue_time_us)}}}],
        },
    }
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(name, opts, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    return [deployment, service, hpa, pdb]


def render(opts: K8sOptions) -> dict[str, Any]:
    """Every manifest as data: {"name", "models", "sizing", "inferenceservice", "triton": [...], "source"}."""
    name = check_options(opts)
    location = _location(opts.repository)
    sizing, models = size_repository(location, opts.gpus)
    from .remote import triton_url

    source = triton_url(location, objectstore.endpoint_url(objectstore.client()))
    return {"name": name, "models": models, "sizing": sizing, "source": source,
            "inferenceservice": inference_service(name, opts, location, sizing),
            "triton": plain_kubernetes(name, opts, source, sizing)}


def to_yaml(documents: list[dict]) -> str:
    try:
        import yaml
    except ImportError as e:
        raise UsageError(f"writing Kubernetes manifests needs PyYAML ({e}); pip install 'vit-deploy[k8s]'") from e
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # a shared labels dict is written out, not as &id001
            return True

    return yaml.dump_all(documents, Dumper=Dumper, sort_keys=False, default_flow_style=False)


def write_manifests(opts: K8sOptions) -> dict[str, Any]:
    """Render, then write ``FILES`` into ``opts.out`` (staged and published whole, as every vit-deploy folder)."""
    from ..fileio import MANIFESTS, check_can_write, mark_folder, staged_directory

    check_options(opts)
    check_can_write(Path(opts.out).absolute(), opts.force, kind=MANIFESTS)
    rendered = render(opts)
    with staged_directory(opts.out, opts.force, kind=MANIFESTS) as staging:
        (staging / "inferenceservice.yaml").write_text(to_yaml([rendered["inferenceservice"]]))
        (staging / "triton.yaml").write_text(to_yaml(rendered["triton"]))
        (staging / "README.md").write_text(readme(rendered, opts))
        mark_folder(staging, MANIFESTS, list(FILES))
    sizing = rendered["sizing"]
    return {"out": str(Path(opts.out).absolute()), "name": rendered["name"], "models": rendered["models"],
            "files": list(FILES), "repository": opts.repository, "triton_source": rendered["source"],
            "memory": sizing.memory, "gpus": sizing.gpus, "model_bytes": sizing.model_bytes}


def readme(rendered: dict[str, Any], opts: K8sOptions) -> str:
    name, sizing = rendered["name"], rendered["sizing"]
    ns = f" -n {opts.namespace}" if opts.namespace else ""
    adapter_rule = {
        "seriesQuery": "nv_inference_queue_duration_us{namespace!=\"\",pod!=\"\"}",
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "nv_inference_queue_duration_us", "as": QUEUE_METRIC},
        "metricsQuery": "avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s])/"
                        "(1+delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) by (<<.GroupBy>>)",
    }
    return f"""# Kubernetes manifests for {name}

Written by `vit-deploy k8s` for the Triton model repository `{opts.repository}`
(models: {', '.join(rendered['models'])}; {sizing.model_bytes / 1e6:.1f} MB of model files).
Triton reads it as `{rendered['source']}`.

## With KServe: `inferenceservice.yaml`

```bash
kubectl apply{ns} -f inferenceservice.yaml
kubectl get inferenceservice{ns} {name}     # READY True, then: POST $URL/v2/models/<model>/infer
```

Needs KServe with its `kserve-tritonserver` ClusterServingRuntime (installed with KServe). KServe's
storage initializer copies `storageUri` to `/mnt/models` and the runtime starts
`tritonserver --model-store=/mnt/models`; give it S3 credentials through a service account
(`--service-account`, annotated as KServe's S3 docs say, with `serving.kserve.io/s3-endpoint` for
an S3-compatible store).

| field | value | knob |
|---|---|---|
| `modelFormat` | `triton` v2: the whole repository is served as it is | |
| `runtimeVersion` | `{opts.triton_version}` (image tag of the runtime) | `--triton-version` |
| `protocolVersion` | `v2` (KServe's open inference protocol = Triton's HTTP/gRPC API) | |
| `resources` | cpu {opts.cpu}, memory {sizing.memory}, `nvidia.com/gpu` {sizing.gpus or 'none'} | `--cpu`, `--gpus` |
| `minReplicas` / `maxReplicas` | {opts.min_replicas} / {opts.max_replicas} | `--min-replicas`, `--max-replicas` |
| `scaleMetric` / `scaleTarget` | `concurrency` / {opts.concurrency} in-flight requests per replica | `--concurrency` |

Memory is sized from the repository: twice its model bytes (on disk and in memory while loading)
plus 1 GiB for the server and runtimes.

## Without KServe: `triton.yaml`

```bash
kubectl apply{ns} -f triton.yaml              # Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget
```

- **Deployment**: `{opts.image}:{opts.triton_version}` running `{' '.join(triton_args(rendered['source']))}`;
  Triton's own S3 client reads the repository (credentials from the Secret named by `--s3-secret`,
  keys `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, or from the pod's service account).
  Readiness on `/v2/health/ready` (every model loaded), liveness on `/v2/health/live`, a startup
  probe allowing 10 minutes for the first load; non-root (uid 1000, no capabilities, no privilege
  escalation); a memory-backed `/dev/shm` for the python backend; on SIGTERM Triton drains
  in-flight requests for {EXIT_TIMEOUT_S} s.
- **Service**: ports http {PORTS['http']}, grpc {PORTS['grpc']}, metrics {PORTS['metrics']}.
- **HorizontalPodAutoscaler** (autoscaling/v2): {opts.min_replicas}..{opts.max_replicas} replicas on the
  pods metric `{QUEUE_METRIC}`, target {opts.queue_time_us} µs of queue time per request
  (`--queue-time-us`). The metric comes from Triton's Prometheus metrics through the Prometheus
  adapter; its rule (prometheus-adapter Helm values, `rules.custom`), as NVIDIA's chart defines it:

```json
{json.dumps(adapter_rule, indent=2)}
```
- **PodDisruptionBudget**: at most one replica down at a time during node drains.

## What was checked where these were written
Every manifest passed strict schema validation in vit-deploy's tests (the KServe CRDs' OpenAPI
schemas; Kubernetes' own schemas via `kubernetes-validate`), and the Deployment's tritonserver
arguments ran against a real tritonserver reading the same repository layout from an S3-compatible
store. What only a real cluster shows: scheduling on GPU nodes, the adapter's metric, KServe's
storage initializer and its credentials, and load-based scaling.
"""
