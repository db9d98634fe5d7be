"""Triton model repositories on object storage: ``triton-repo --out s3://...``, ``vit-deploy publish``, ``serve s3://...``.

The repository is written locally exactly as for a folder (:mod:`.repository`, in a temporary
folder), then published with :class:`vit_deploy.objectstore.Publisher` (staged, verified, made
visible; the lock and the overwrite checks are taken before the slow local steps). Triton reads
it straight from the store: :func:`triton_source` gives the ``--model-repository`` URL in Triton's
own form (``s3://host:port/bucket/prefix`` for an S3-compatible endpoint) and the credentials
Triton's S3 client reads from its environment.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import objectstore
from ..errors import ArtifactError
from ..fileio import REPOSITORY_MARKER
from .config import parse_config


def write_repository_anywhere(opts) -> dict[str, Any]:
    """:func:`.repository.write_repository` to a local folder, or to ``s3://`` when ``opts.out`` is a URL."""
    from .repository import write_repository

    if not objectstore.is_url(str(opts.out)):
        return write_repository(dataclasses.replace(opts, out=Path(opts.out)))
    location = objectstore.parse(str(opts.out))
    with _publisher(location, opts.force) as publisher, tempfile.TemporaryDirectory(prefix="vit-deploy-repo-") as tmp:
        summary = write_repository(dataclasses.replace(opts, out=Path(tmp) / "repository", force=False))
        published = publisher.publish(Path(tmp) / "repository")
    return {**summary, "repository": location.url, "published": published}


def _publisher(location: objectstore.S3Location, force: bool) -> objectstore.Publisher:
    from ..progress import Progress

    return objectstore.Publisher(location, force, progress=Progress(enabled=True))


def check_local_repository(folder: Path) -> list[str]:
    """The models of a local Triton repository (every top-level folder has a config.pbtxt that parses)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder; write a repository with vit-deploy triton-repo first")
    models, stray = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name == REPOSITORY_MARKER:
            continue
        config = entry / "config.pbtxt"
        if not config.is_file():
            stray.append(entry.name)
            continue
        parse_config(config.read_text(errors="replace"))
        models.append(entry.name)
    if stray or not models:
        what = f"holds {', '.join(stray[:3])}, which are not model folders with a config.pbtxt" if stray else \
            "holds no model"
        raise ArtifactError(f"{folder} is not a Triton model repository ({what}); write one with vit-deploy "
                            "triton-repo, or publish only the repository folder")
    return models


def publish_repository(local: Path, destination: str, force: bool = False) -> dict[str, Any]:
    """``vit-deploy publish``: an existing local repository to ``s3://bucket/folder``."""
    location = objectstore.parse(destination, "DESTINATION")
    models = check_local_repository(local)
    with _publisher(location, force) as publisher:
        published = publisher.publish(Path(local))
    return {**published, "models": models}


def triton_source(location: objectstore.S3Location) -> tuple[str, dict[str, str]]:
    """(``--model-repository`` value, environment) for a tritonserver reading ``location``.

    Triton's S3 client takes a custom endpoint in the URL (``s3://host:port/bucket/path``, with
    ``https://`` after ``s3://`` for TLS) and reads credentials and region from its environment,
    so the credentials boto3 found (profile, SSO, instance role included) are passed on there.
    """
    boto = objectstore.session()
    s3 = objectstore.client(boto)
    with objectstore.s3_errors(location, "serve", s3):
        credentials = boto.get_credentials()
        if credentials is None:
            from botocore.exceptions import NoCredentialsError

            raise NoCredentialsError()
        frozen = credentials.get_frozen_credentials()
    env = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
           "AWS_DEFAULT_REGION": boto.region_name or "us-east-1"}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    return triton_url(location, objectstore.endpoint_url(s3)), env


def triton_url(location: objectstore.S3Location, endpoint: str | None) -> str:
    """Triton's spelling of ``location`` at ``endpoint`` (None, or AWS's own: the plain ``s3://bucket/path``)."""
    parts = urlsplit(endpoint or "")
    if not parts.hostname or parts.hostname.endswith(".amazonaws.com"):
        return location.url
    port = parts.port or (443 if parts.scheme == "https" else 80)
    scheme = "https://" if parts.scheme == "https" else ""
    return f"{objectstore.SCHEME}{scheme}{parts.hostname}:{port}/{location.bucket}/{location.prefix}"


def config_texts(location: objectstore.S3Location) -> dict[str, str]:
    """Each model's config.pbtxt text at ``location`` (ArtifactError when it holds no model)."""
    models = objectstore.repository_models(location)
    s3 = objectstore.client()
    with objectstore.s3_errors(location, "read", s3):
        return {m: objectstore.read_text(s3, location, f"{m}/config.pbtxt") for m in models}
