"""``vit-deploy publish`` and ``k8s``: beyond one machine (a repository on object storage, Kubernetes manifests).

Bulk prediction on Ray is ``vit-deploy predict ARTIFACT --source ... --output ...`` (cli/artifacts.py
hands it to :func:`bulk_predict` here). Importing this module loads no numerical or cloud library.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import PathType, echo_json, force_option, json_option

AT_LEAST_1 = click.IntRange(min=1)


@click.command("publish")
@click.argument("repository", type=PathType)
@click.argument("destination")
@force_option
@json_option
def publish(repository: Path, destination: str, force: bool, as_json: bool) -> None:
    """Upload a local Triton model REPOSITORY to DESTINATION (s3://BUCKET/FOLDER): staged, verified, then made visible.

    Credentials, region and endpoint come from the standard AWS settings (AWS_ENDPOINT_URL for
    S3-compatible stores such as MinIO). --force replaces only a repository vit-deploy published.
    """
    from ..serving.publish import publish_repository

    summary = publish_repository(repository, destination, force=force)
    if as_json:
        echo_json(summary)
        return
    click.echo(f"Published {summary['repository']}: {', '.join(summary['models'])} "
               f"({summary['objects']} objects, {summary['bytes'] / 1e6:.1f} MB)")


@click.command("k8s")
@click.argument("repository")
@click.option("--out", type=PathType, default=Path("k8s"), show_default=True, help="The folder to write.")
@click.option("--name", default=None, help="Resource name (default: the repository folder's name).")
@click.option("--namespace", default=None, help="Namespace (default: none, kubectl's current).")
@click.option("--image", default="nvcr.io/nvidia/tritonserver", show_default=True,
              help="Triton image for the plain Deployment, without its tag.")
@click.option("--triton-version", default="24.04-py3", show_default=True,
              help="Triton image tag (the KServe runtimeVersion).")
@click.option("--gpus", type=click.IntRange(min=0), default=None,
              help="nvidia.com/gpu per replica (default: 1 when a model runs on KIND_GPU, else 0).")
@click.option("--cpu", default="2", show_default=True, help="CPU request and limit per replica.")
@click.option("--min-replicas", type=AT_LEAST_1, default=1, show_default=True)
@click.option("--max-replicas", type=AT_LEAST_1, default=3, show_default=True)
@click.option("--queue-time-us", type=AT_LEAST_1, default=50_000, show_default=True,
              help="HPA target: Triton's mean queue time per request (microseconds).")
@click.option("--concurrency", type=AT_LEAST_1, default=8, show_default=True,
              help="KServe scaleTarget: in-flight requests per replica.")
@click.option("--s3-secret", default=None, help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (Deployment).")
@click.option("--service-account", default=None, help="Service account of the pods (e.g. for S3 access).")
@force_option
@json_option
def k8s(repository: str, out: Path, name: str | None, namespace: str | None, image: str, triton_version: str,
        gpus: int | None, cpu: str, min_replicas: int, max_replicas: int, queue_time_us: int, concurrency: int,
        s3_secret: str | None, service_account: str | None, force: bool, as_json: bool) -> None:
    """Kubernetes manifests for a REPOSITORY on object storage (s3://BUCKET/FOLDER): KServe and plain Kubernetes."""
    from ..serving.k8s import K8sOptions, write_manifests

    summary = write_manifests(K8sOptions(
        repository, out, name=name, namespace=namespace, image=image, triton_version=triton_version, gpus=gpus,
        cpu=cpu, min_replicas=min_replicas, max_replicas=max_replicas, queue_time_us=queue_time_us,
        concurrency=concurrency, s3_secret=s3_secret, service_account=service_account, force=force))
    if as_json:
        echo_json(summary)
        return
    click.echo(f"Wrote {summary['out']}: {', '.join(summary['files'])}")
    click.echo(f"  {summary['name']}: models {', '.join(summary['models'])}; memory {summary['memory']}, "
               f"GPUs {summary['gpus']} per replica; Triton reads {summary['triton_source']}")


def bulk_predict(artifact: Path, source: str, output: Path, *, ray_address: str | None, top_k: int,
                 batch_size: int, workers: int | None, logits: bool, backend: str | None,
                 labels_file: str | None, as_json: bool, embedding: bool = False) -> None:
    """``predict --source``: every image of SOURCE into a Parquet dataset, in-process or on a Ray cluster."""
    from ..bulk import BulkOptions, run_bulk

    summary = run_bulk(BulkOptions(artifact, source, output, ray_address=ray_address, top_k=top_k,
                                   batch_size=batch_size, workers=workers, logits=logits, embedding=embedding,
                                   backend=backend, labels_file=labels_file))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['done']} images predicted into {summary['output']} ({summary['failed']} failed, "
               f"{summary['skipped']} already done) on {summary['engine']} in {summary['wall_s']:.1f} s")
