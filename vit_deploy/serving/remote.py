"""Reading a Triton model repository on object storage: ``serve s3://...`` and the Kubernetes manifests.

Triton reads the repository straight from the store: :func:`triton_source` gives the
``--model-repository`` URL in Triton's own form (``s3://host:port/bucket/prefix`` for an
S3-compatible endpoint) and the credentials Triton's S3 client reads from its environment;
:func:`config_texts` reads each model's config. Writing one there is :mod:`.publish`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .. import objectstore


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
