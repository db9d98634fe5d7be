"""Writing a Triton model repository to object storage: ``triton-repo --out s3://...`` and ``vit-deploy publish``.

The repository is written locally exactly as for a folder (:mod:`.repository`, in a temporary
folder), then published with :class:`vit_deploy.objectstore.Publisher` (staged, verified, made
visible; the lock and the overwrite checks are taken before the slow local steps). Reading it back
(``serve s3://...``) is :mod:`.remote`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from .. import objectstore
from ..errors import ArtifactError
from ..fileio import REPOSITORY_MARKER
from . import repository
from .config import parse_config


def write_repository_anywhere(opts) -> dict[str, Any]:
    """:func:`.repository.write_repository` to a local folder, or to ``s3://`` when ``opts.out`` is a URL."""
    if not objectstore.is_url(str(opts.out)):
        return repository.write_repository(dataclasses.replace(opts, out=Path(opts.out)))
    location = objectstore.parse(str(opts.out))
    with _publisher(location, opts.force) as publisher, tempfile.TemporaryDirectory(prefix="vit-deploy-repo-") as tmp:
        summary = repository.write_repository(dataclasses.replace(opts, out=Path(tmp) / "repository", force=False))
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
