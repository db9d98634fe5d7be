"""The manifest schema and the crash-safe file helpers."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from vit_deploy import artifact as artifact_view
from vit_deploy.artifact import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    Artifact,
    file_entry,
    new_manifest,
    read_manifest,
    sha256_file,
    write_manifest,
)
from vit_deploy.errors import ArtifactError
from vit_deploy.fileio import atomic_write_text, staged_directory
from vit_deploy.specs import model_config


def make_artifact(directory):
    (directory / "model.onnx").write_bytes(b"graph bytes")
    files = [file_entry(directory, "model.onnx", "model")]
    model = model_config("test", 32, 5).to_dict()
    tensor = {"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}
    io = {"inputs": [tensor], "outputs": [{"name": "logits", "shape": ["batch", 5], "dtype": "float32"}]}
    m = new_manifest("onnx", "fp32", model=model, preprocessing=model.pop("preprocessing"), io=io, files=files)
    write_manifest(directory, m)
    return m


def test_sha256_matches_hashlib(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 5_000_000)
    assert sha256_file(p, chunk=1 << 20) == hashlib.sha256(b"x" * 5_000_000).hexdigest()


def test_round_trip_and_verify(tmp_path):
    m = make_artifact(tmp_path)
    assert read_manifest(tmp_path) == m
    Artifact(Path(tmp_path), m).verify()


def test_changed_file_names_both_hashes(tmp_path):
    m = make_artifact(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError) as e:
        Artifact(Path(tmp_path), m).verify()
    assert hashlib.sha256(b"tampered").hexdigest()[:12] in str(e.value)
    assert m["files"][0]["sha256"][:12] in str(e.value)


def test_missing_listed_file(tmp_path):
    m = make_artifact(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        Artifact(Path(tmp_path), m).verify()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not a finished vit-deploy artifact"),
        ("{not json", "unreadable"),
        ('{"schema": "other"}', "not a vit-deploy manifest"),
        (json.dumps({"schema": "vit-deploy/manifest", "schema_version": SCHEMA_VERSION + 1}), "upgrade vit-deploy"),
        (json.dumps({"schema": "vit-deploy/manifest", "schema_version": 1, "kind": "onnx"}), "lacks precision"),
    ],
)
def test_bad_manifests(tmp_path, content, message):
    if content is not None:
        (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ArtifactError, match=message):
        read_manifest(tmp_path)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_staged_directory_failure_removes_everything(tmp_path):
    with pytest.raises(RuntimeError), staged_directory(tmp_path / "art", force=False) as stage:
        (stage / "model.onnx").write_bytes(b"half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_staged_directory_replaces_only_with_force(tmp_path):
    target = tmp_path / "art"
    marker = json.dumps({"schema": "vit-deploy/manifest", "files": [{"path": "v"}]})
    with staged_directory(target, force=False) as stage:
        (stage / "v").write_text("1")
        (stage / "manifest.json").write_text(marker)
    with pytest.raises(ArtifactError, match="--force"), staged_directory(target, force=False):
        pass
    with staged_directory(target, force=True) as stage:
        (stage / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.onnx", "link.onnx", "sub/../../outside.onnx"])
def test_manifest_paths_must_resolve_inside_the_folder(tmp_path, name):
    folder = tmp_path / "a"
    folder.mkdir()
    (tmp_path / "outside.onnx").write_bytes(b"graph bytes")
    (folder / "link.onnx").symlink_to(tmp_path / "outside.onnx")  # a symlink out of the folder counts as outside
    m = make_artifact(folder)
    m["files"][0]["path"] = name
    write_manifest(folder, m)
    for read in (lambda a: a.verify(), lambda a: a.model_file, lambda a: a.files):
        with pytest.raises(ArtifactError, match=re.escape(f"names the model file '{name}' that resolves outside")):
            read(Artifact(folder, m))
    with pytest.raises(ArtifactError, match="resolves outside the artifact folder"):
        artifact_view.open(folder)


def test_a_symlink_inside_the_folder_is_fine(tmp_path):
    m = make_artifact(tmp_path)
    (tmp_path / "alias.onnx").symlink_to(tmp_path / "model.onnx")
    m["files"][0]["path"] = "alias.onnx"
    art = Artifact(tmp_path, m)
    art.verify()
    assert art.model_file == tmp_path / "alias.onnx" and art.model_file.read_bytes() == b"graph bytes"


def test_open_takes_a_folder_or_a_file_in_it(tmp_path):
    m = make_artifact(tmp_path)
    assert artifact_view.open(tmp_path).manifest == m
    assert artifact_view.open(tmp_path / "model.onnx").directory == tmp_path
    with pytest.raises(ArtifactError, match="does not exist"):
        artifact_view.open(tmp_path / "nope")
