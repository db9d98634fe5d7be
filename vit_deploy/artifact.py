"""The artifact folder and its ``manifest.json``: the schema, and the one typed view every reader uses.

Standard library only. :class:`Artifact` is the only code that reads a manifest's keys and the only
code that turns a path a manifest names into a file path (refusing any that resolves outside the
artifact folder, symlinks included); steps, runtime, compare, inspect, bench and serving all read
artifacts through it. :func:`read_manifest` checks the type of every field that view reads, so a
hand-edited or damaged manifest is one ArtifactError naming the field, never a KeyError later.

A manifest says what the artifact is (model config, preprocessing,
I/O names/shapes/dtypes, precision), where it came from (checkpoint provenance, parent
artifact hash, package versions), and how it was checked (validation numbers). It is written
last, atomically, so a directory with a manifest is a finished artifact; later steps read it
instead of asking the user again, and refuse an artifact whose files no longer match it.

Schema (version 1), top-level keys::

    schema, schema_version, kind ("onnx" | "tensorrt"), precision ("fp32" | "fp16" | "int8" | "fp8"),
    created_at, model (ModelConfig fields without preprocessing), preprocessing,
    io {inputs: [{name, shape, dtype}], outputs: [...]}  (symbolic dims are strings, e.g. "batch"),
    files [{role ("model" | "external_data"), path (relative), sha256, bytes}],
    parent (null | {path, sha256}), checkpoint {...}, versions {...}, validation {...}
    + kind-specific sections (e.g. "onnx": {opset, nodes, ...})
    + optional "runtime": {backend}: the backend the artifact was made for (e.g. "openvino" for a
      --target cpu INT8 graph); runtime.open uses it by default when it is installed.
    + optional "dynamic_resolution": {min, max, step, native, ...}: a ``--dynamic-res`` export (its
      input shape is [batch, C, "height", "width"]): the sizes it takes (``specs.ResolutionRange``),
      inherited by its precision graphs; an engine records the part of it its profile covers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ArtifactError, UsageError, VitDeployError
from .fileio import MANIFEST_NAME, SCHEMA, atomic_write_text
from .specs import RUNTIME_BACKENDS, ModelConfig, Preprocessing, ResolutionRange

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema", "schema_version", "kind", "precision", "model", "preprocessing", "io", "files")
MAX_MANIFEST_BYTES = 1 << 24  # read whole: a larger file is not ours
KINDS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
FILE_ROLES = ("model", "external_data")
# the optional sections, each an object (or null) when present
SECTIONS = ("parent", "checkpoint", "versions", "validation", "onnx", "tensorrt", "precision_policy", "calibration",
            "runtime", "tensorrt_readiness", "dynamic_resolution")


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
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes, a manifest is a few KB")
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON too (their base class)
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
    check_types(manifest, path)
    try:  # the values too: a hand-edited std of 0 is refused here, naming the file, not at the first image
        Preprocessing.from_dict(manifest["preprocessing"])
    except VitDeployError as e:
        raise ArtifactError(f"{path}: preprocessing: {e}; re-create the artifact") from e
    return manifest


# -- the types of the fields the Artifact view reads ---------------------------------------
# A rule is (test, what the value must be); check_types applies them and names the first field that fails.
Rule = tuple[Callable[[Any], bool], str]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _one_of(choices: tuple[str, ...]) -> Rule:
    return (lambda v: isinstance(v, str) and v in choices), "one of " + ", ".join(map(repr, choices))


def _triple(positive: bool) -> Rule:
    ok = (lambda x: _is_number(x) and x > 0) if positive else _is_number
    return (lambda v: isinstance(v, list) and len(v) == 3 and all(ok(x) for x in v),
            f"a list of 3 {'positive ' if positive else ''}finite numbers")


STRING: Rule = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
RELATIVE_PATH: Rule = (lambda v: isinstance(v, str) and v != "" and "\0" not in v, "a relative file path (a string)")
POSITIVE_INT: Rule = (lambda v: _is_int(v) and v > 0, "a positive integer")
SIZE: Rule = (lambda v: _is_int(v) and v >= 0, "a non-negative integer")
POSITIVE: Rule = (lambda v: _is_number(v) and v > 0, "a positive finite number")
SHA256: Rule = (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
                "64 lowercase hex digits (a sha256)")
DIM: Rule = (lambda v: (_is_int(v) and v >= 0) or (isinstance(v, str) and v != ""),
             "a non-negative integer or a symbolic name")
DIMS: Rule = (lambda v: isinstance(v, list) and all(DIM[0](d) for d in v), "a list of dimensions (integers or names)")

# field -> (rule, required); model and preprocessing take no other keys (they become dataclasses)
MODEL_FIELDS: dict[str, tuple[Rule, bool]] = {
    "variant": (STRING, True), "img_size": (POSITIVE_INT, True), "num_classes": (POSITIVE_INT, True),
    "patch_size": (POSITIVE_INT, True), "dim": (POSITIVE_INT, True), "depth": (POSITIVE_INT, True),
    "heads": (POSITIVE_INT, True), "mlp_dim": (POSITIVE_INT, True), "layer_norm_eps": (POSITIVE, False),
    "in_chans": (POSITIVE_INT, False), "pos_grid": (POSITIVE_INT, False),
}
PREPROCESSING_FIELDS: dict[str, tuple[Rule, bool]] = {
    "resize": (POSITIVE_INT, True), "crop": (POSITIVE_INT, True), "interpolation": (STRING, False),
    "mean": (_triple(positive=False), True), "std": (_triple(positive=True), True),
    "channel_order": (STRING, False), "layout": (STRING, False),
}
FILE_FIELDS: dict[str, tuple[Rule, bool]] = {
    "role": (_one_of(FILE_ROLES), True), "path": (RELATIVE_PATH, True), "sha256": (SHA256, True), "bytes": (SIZE, True),
}
TENSOR_FIELDS: dict[str, tuple[Rule, bool]] = {"name": (STRING, True), "shape": (DIMS, True), "dtype": (STRING, True)}
RESOLUTION_FIELDS: dict[str, tuple[Rule, bool]] = {
    "min": (POSITIVE_INT, True), "max": (POSITIVE_INT, True), "step": (POSITIVE_INT, True),
    "native": (POSITIVE_INT, True),
}


def check_types(manifest: dict[str, Any], path: Path | str = MANIFEST_NAME) -> None:
    """ArtifactError naming the first field of ``manifest`` whose type or value the Artifact view cannot read."""

    def fail(field: str, want: str, value: Any = None, absent: bool = False) -> None:
        got = "nothing (the field is missing)" if absent else _short_repr(value)
        raise ArtifactError(f"{path}: {field} must be {want}, got {got}; re-create the artifact")

    def check(value: Any, rule: Rule, field: str) -> None:
        if not rule[0](value):
            fail(field, rule[1], value)

    def check_object(value: Any, fields: dict[str, tuple[Rule, bool]], field: str, closed: bool) -> None:
        if not isinstance(value, dict):
            fail(field, "an object", value)
        for name, (rule, required) in fields.items():
            if name in value:
                check(value[name], rule, f"{field}.{name}")
            elif required:
                fail(f"{field}.{name}", rule[1], absent=True)
        extra = [k for k in value if k not in fields]
        if closed and extra:
            fail(f"{field}.{extra[0]}", "absent (not a known field)", value[extra[0]])

    def check_list(value: Any, fields: dict[str, tuple[Rule, bool]], field: str) -> None:
        if not isinstance(value, list) or not value:
            fail(field, "a non-empty list of objects", value)
        for i, item in enumerate(value):
            check_object(item, fields, f"{field}[{i}]", closed=False)

    check(manifest["kind"], _one_of(KINDS), "kind")
    check(manifest["precision"], _one_of(PRECISIONS), "precision")
    check_object(manifest["model"], MODEL_FIELDS, "model", closed=True)
    check_object(manifest["preprocessing"], PREPROCESSING_FIELDS, "preprocessing", closed=True)
    io = manifest["io"]
    if not isinstance(io, dict):
        fail("io", "an object with inputs and outputs", io)
    for role in ("inputs", "outputs"):
        check_list(io.get(role), TENSOR_FIELDS, f"io.{role}")
    check_list(manifest["files"], FILE_FIELDS, "files")
    if not any(entry["role"] == "model" for entry in manifest["files"]):
        fail("files", "a list with one entry of role 'model'", [e["role"] for e in manifest["files"]])
    for name in SECTIONS:
        if manifest.get(name) is not None and not isinstance(manifest[name], dict):
            fail(name, "an object or null", manifest[name])
    passed = (manifest.get("validation") or {}).get("passed")
    if passed is not None and not isinstance(passed, bool):
        fail("validation.passed", "true, false or null", passed)
    backend = (manifest.get("runtime") or {}).get("backend")
    if backend is not None:
        check(backend, _one_of(RUNTIME_BACKENDS), "runtime.backend")
    sizes = manifest.get("dynamic_resolution")
    if sizes is not None:
        check_object(sizes, RESOLUTION_FIELDS, "dynamic_resolution", closed=False)
        if not sizes["min"] <= sizes["native"] <= sizes["max"] or sizes["min"] % sizes["step"] or \
                sizes["max"] % sizes["step"]:
            fail("dynamic_resolution", "min <= native <= max, min and max multiples of step",
                 {k: sizes[k] for k in RESOLUTION_FIELDS})


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        """``"fp32"``, ``"fp16"``, ``"int8"`` or ``"fp8"``."""
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
    def resolution_range(self) -> ResolutionRange | None:
        """The sizes a dynamic-resolution artifact takes (its ``dynamic_resolution`` section); None: fixed size."""
        sizes = self.manifest.get("dynamic_resolution")
        return ResolutionRange.from_dict(sizes) if sizes else None

    @property
    def chw(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input image: the graph's own contract.

        A dynamic-resolution artifact takes any size in :attr:`resolution_range`; its ``chw`` is the
        native size (where its position embeddings are used as they are).
        """
        dims = self.input_shape[1:]
        sizes = self.resolution_range
        if sizes is not None and len(dims) == 3 and _is_int(dims[0]) and dims[0] > 0:
            return dims[0], sizes.native, sizes.native
        if len(dims) != 3 or not all(_is_int(d) and d > 0 for d in dims):
            raise ArtifactError(
                f"{self.directory / MANIFEST_NAME}: io.inputs[0].shape must be [batch, channels, height, width] "
                f"with positive sizes, got {self.input_shape}; re-create the artifact"
            )
        c, h, w = dims
        return c, h, w

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
        sections = {k: self.manifest.get(k) for k in ("model", "preprocessing", "checkpoint")}
        if self.manifest.get("dynamic_resolution"):
            sections["dynamic_resolution"] = dict(self.manifest["dynamic_resolution"])
        return sections

    @property
    def made_for_backend(self) -> str | None:
        """The runtime backend the artifact was made for (``"runtime": {"backend"}``); None: its kind's default."""
        return self.section("runtime").get("backend")

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
    def failed_note(self) -> str | None:
        """One line when the artifact's own validation failed (``"passed": false``), naming the first failure."""
        if self.passed is not False:
            return None
        failures = [str(f) for f in self.validation.get("failures") or []]
        why = f" ({failures[0]}{'; and more' if len(failures) > 1 else ''})" if failures else ""
        return f"{self.directory} failed its validation{why}: its manifest records \"passed\": false"

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
    if not isinstance(path, str | os.PathLike):
        raise UsageError(
            f"an artifact is a folder path (str or pathlib.Path), got {type(path).__name__} {_short_repr(path)}"
        )
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
