"""The artifact folder and its ``manifest.json``: the schema, and the one typed view every reader uses.

Standard library only. :class:`Artifact` is the only code that reads a manifest's keys and the only
code that turns a path a manifest names into a file path (refusing any that resolves outside the
artifact folder, symlinks included); steps, runtime, compare, inspect, bench and serving all read
artifacts through it. A manifest says what the artifact is (model config, preprocessing,
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

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .fileio import atomic_write_text
from .specs import ModelConfig, Preprocessing

SCHEMA = "vit-deploy/manifest"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("schema", "schema_version", "kind", "precision", "model", "preprocessing", "io", "files")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
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


@dataclass(frozen=True)
class Artifact:
    """A finished artifact folder, read through its manifest.

    Args:
        directory: the artifact folder (the one holding ``manifest.json``).
        manifest: the parsed manifest; :func:`open` reads and checks it. A step may also wrap the
            manifest it is about to write (its draft) to run the staged files before they land.
    """

    directory: Path
    manifest: dict[str, Any]

    # -- what it is ------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"onnx"`` or ``"tensorrt"``."""
        return self.manifest["kind"]

    @property
    def precision(self) -> str:
        """``"fp32"``, ``"fp16"`` or ``"int8"``."""
        return self.manifest["precision"]

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict({**self.manifest["model"], "preprocessing": self.manifest["preprocessing"]})

    @property
    def model(self) -> dict[str, Any]:
        """The ``model`` section as recorded (ModelConfig fields without preprocessing)."""
        return dict(self.manifest["model"])

    @property
    def variant(self) -> str:
        return self.manifest["model"]["variant"]

    @property
    def img_size(self) -> int:
        return int(self.manifest["model"]["img_size"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["model"]["num_classes"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.manifest["preprocessing"])

    @property
    def input_name(self) -> str:
        return self.manifest["io"]["inputs"][0]["name"]

    @property
    def output_name(self) -> str:
        return self.manifest["io"]["outputs"][0]["name"]

    @property
    def input_shape(self) -> list[Any]:
        """The graph's input shape, e.g. ``["batch", 3, 384, 384]`` (symbolic dimensions are strings)."""
        return list(self.manifest["io"]["inputs"][0]["shape"])

    @property
    def chw(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input image: the graph's own contract."""
        c, h, w = self.input_shape[1:]
        return int(c), int(h), int(w)

    @property
    def has_single_image_input(self) -> bool:
        """One NCHW input: what every runner and the engine builder take."""
        inputs = self.manifest["io"]["inputs"]
        return len(inputs) == 1 and len(inputs[0]["shape"]) == 4

    @property
    def io(self) -> dict[str, Any]:
        """The ``io`` section (inputs and outputs with names, shapes and dtypes), as a child copies it."""
        return self.manifest["io"]

    def same_model(self, other: Artifact) -> bool:
        """True when ``other`` is the same network (config and outputs) at any precision."""
        return (self.manifest["model"], self.manifest["io"]["outputs"]) == (
            other.manifest["model"], other.manifest["io"]["outputs"])

    def inherited(self) -> dict[str, Any]:
        """The sections a child artifact (a precision graph, an engine) copies from this one."""
        return {k: self.manifest[k] for k in ("model", "preprocessing", "checkpoint")}

    def section(self, name: str) -> dict[str, Any]:
        """A kind-specific section (``onnx``, ``tensorrt``, ``precision_policy``, ``calibration``); {} if absent."""
        return dict(self.manifest.get(name) or {})

    # -- where it came from and how it was checked -----------------------------------------
    @property
    def checkpoint(self) -> dict[str, Any]:
        return dict(self.manifest.get("checkpoint") or {})

    @property
    def pretrained(self) -> bool:
        """Trained weights (top-1 agreement is gated only for these; a random init's logits are near-tied)."""
        return bool(self.checkpoint.get("pretrained"))

    @property
    def parent(self) -> dict[str, Any]:
        """The parent record ``{path, file, sha256, precision, kind}``; {} for an export."""
        return dict(self.manifest.get("parent") or {})

    @property
    def parent_dir(self) -> Path | None:
        path = self.parent.get("path")
        return Path(path) if path else None

    def parent_ref(self) -> dict[str, Any]:
        """What a child artifact records as its parent: this folder, its model file and that file's sha256."""
        entry = self._model_entry()
        return {"path": str(self.directory), "kind": self.kind, "precision": self.precision,
                "file": entry["path"], "sha256": entry["sha256"]}

    @property
    def validation(self) -> dict[str, Any]:
        return dict(self.manifest.get("validation") or {})

    @property
    def passed(self) -> bool | None:
        """Whether the step that made it validated it; None when the manifest does not say."""
        return self.validation.get("passed")

    @property
    def engine_profile(self) -> dict[str, Any]:
        """An engine's optimization profile ``{input: {min, opt, max}}``; {} for a graph."""
        return dict(self.section("tensorrt").get("profile") or {})

    @property
    def engine_max_batch(self) -> int | None:
        """The largest batch an engine's profile takes (the smallest over its inputs); None for a graph."""
        maxima = [shapes["max"][0] for shapes in self.engine_profile.values() if shapes.get("max")]
        return int(min(maxima)) if maxima else None

    # -- files -----------------------------------------------------------------------------
    def path(self, name: str, what: str = "a file") -> Path:
        """``name`` (as a manifest records it) resolved inside the folder; ArtifactError if it leaves it.

        Absolute names, ``..`` and symlinks that point outside the folder are all refused, so a
        manifest can never make vit-deploy read or hash a file elsewhere on the machine.
        """
        root = self.directory.resolve()
        candidate = Path(name)
        resolved = (root / candidate).resolve()
        if candidate.is_absolute() or (resolved != root and root not in resolved.parents):
            raise ArtifactError(
                f"{self.directory / MANIFEST_NAME} names {what} {name!r} that resolves outside the artifact folder "
                f"({resolved}); refusing to read it: re-create the artifact"
            )
        return self.directory / candidate

    def _model_entry(self) -> dict[str, Any]:
        for entry in self.manifest["files"]:
            if entry["role"] == "model":
                return entry
        raise ArtifactError(f"the manifest in {self.directory} lists no model file; re-create the artifact")

    @property
    def model_file(self) -> Path:
        """The main file (role ``"model"``): the ONNX graph or the TensorRT plan."""
        return self.path(self._model_entry()["path"], "the model file")

    @property
    def model_sha256(self) -> str:
        return self._model_entry()["sha256"]

    @property
    def files(self) -> list[tuple[str, Path]]:
        """(role, resolved path) of every file the manifest lists."""
        return [(e["role"], self.path(e["path"], f"the {e['role']} file")) for e in self.manifest["files"]]

    @property
    def total_bytes(self) -> int:
        return sum(int(e["bytes"]) for e in self.manifest["files"])

    def verify(self) -> None:
        """Check every listed file against its recorded sha256 (ArtifactError names both sides)."""
        for entry in self.manifest["files"]:
            path = self.path(entry["path"], f"the {entry['role']} file")
            if not path.is_file():
                raise ArtifactError(f"{path} is listed in the manifest but missing; re-create the artifact")
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise ArtifactError(
                    f"{path} was changed after it was made: sha256 {actual[:12]}... on disk, "
                    f"{entry['sha256'][:12]}... in the manifest; re-create the artifact"
                )


def open(path: str | os.PathLike[str], verify: bool = True) -> Artifact:  # noqa: A001 - artifact.open(path)
    """The artifact at ``path``: a folder, or a file inside one (e.g. ``.../model.fp16.onnx``).

    Args:
        path: the artifact folder or one of its files.
        verify: check every file against the sha256 in the manifest first (ArtifactError on a mismatch).
    """
    path = Path(path)
    directory = path.parent if path.is_file() and (path.parent / MANIFEST_NAME).is_file() else path
    if not directory.exists():
        raise ArtifactError(
            f"{directory} does not exist; pass an artifact folder made by vit-deploy export/build-engine"
        )
    artifact = Artifact(directory, read_manifest(directory))
    if verify:
        artifact.verify()
    return artifact


def latest_export(root: Path = Path("artifacts")) -> Path:
    """The newest FP32 ONNX artifact under ``root`` (by the manifest's creation time)."""
    found = []
    for manifest_path in root.glob(f"*/{MANIFEST_NAME}"):
        with contextlib.suppress(ArtifactError):
            m = read_manifest(manifest_path.parent)
            if m["kind"] == "onnx" and m["precision"] == "fp32":
                found.append((m.get("created_at", ""), manifest_path.stat().st_mtime, manifest_path.parent))
    if not found:
        raise ArtifactError(
            f"no exported model under {root.absolute()}; "
            "run `vit-deploy export --model ...` first or pass the artifact folder"
        )
    return max(found)[2]
