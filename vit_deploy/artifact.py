"""The one artifact-metadata schema: ``manifest.json`` beside every artifact.

Standard library only. A manifest says what the artifact is (model config, preprocessing,
I/O names/shapes/dtypes, precision), where it came from (checkpoint provenance, parent
artifact hash, package versions), and how it was checked (validation numbers). It is written
last, atomically, so a directory with a manifest is a finished artifact; later steps read it
instead of asking the user again, and refuse an artifact whose files no longer match it.

Schema (version 1), top-level keys::

    schema, schema_version, kind ("onnx" | "tensorrt"), precision ("fp32" | "fp16" | "int8"),
    created_at, model (ModelConfig fields without preprocessing), preprocessing,
    io {inputs: [{name, shape, dtype}], outputs: [...]}  (symbolic dims are strings, e.g. "batch"),
    files [{role ("model" | "external_data"), path (relative), sha256, bytes}],
    parent (null | {path, sha256}), checkpoint {...}, versions {...}, validation {...}
    + kind-specific sections (e.g. "onnx": {opset, nodes, ...}).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .fileio import atomic_write_text

SCHEMA = "vit-deploy/manifest"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("schema", "schema_version", "kind", "precision", "model", "preprocessing", "io", "files")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(directory: Path, name: str, role: str) -> dict[str, Any]:
    path = directory / name
    return {"role": role, "path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def new_manifest(kind: str, precision: str, **sections: Any) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "precision": precision,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **sections,
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:  # a programming error, not a user error: fail loudly before writing anything
        raise ValueError(f"manifest lacks required keys: {missing}")
    path = directory / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check ``directory/manifest.json``; ArtifactError says what is wrong."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{directory} is not a finished vit-deploy artifact (no {MANIFEST_NAME}); "
            "re-run the step that makes it"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is unreadable ({e}); re-run the step that makes it") from e
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ArtifactError(f"{path} is not a vit-deploy manifest")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has manifest schema version {version}, this vit-deploy reads up to "
            f"{SCHEMA_VERSION}; upgrade vit-deploy"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}; re-run the step that makes it")
    return manifest


def verify_files(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Check every file the manifest lists against its recorded sha256 (names both sides)."""
    directory = Path(directory)
    for entry in manifest["files"]:
        path = directory / entry["path"]
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in the manifest but missing; re-create the artifact")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise ArtifactError(
                f"{path} was changed after it was made: sha256 {actual[:12]}... on disk, "
                f"{entry['sha256'][:12]}... in the manifest; re-create the artifact"
            )


def model_file(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Path of the artifact's main file (role "model")."""
    for entry in manifest["files"]:
        if entry["role"] == "model":
            return Path(directory) / entry["path"]
    raise ArtifactError(f"the manifest in {directory} lists no model file; re-create the artifact")


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` (plus Python and vit-deploy), "absent" when not installed."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("vit-deploy", *names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions
