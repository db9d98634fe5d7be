"""Malformed manifests: a wrong type or value in any field the Artifact view reads is one
ArtifactError naming that field (never a KeyError or TypeError later), through the library and
through the CLI; a hypothesis layer drops and retypes random fields of a real manifest.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vit_deploy import artifact as artifact_view
from vit_deploy.artifact import MANIFEST_NAME, read_manifest
from vit_deploy.errors import ArtifactError


@pytest.fixture(scope="module")
def folder(tiny_artifacts, tmp_path_factory) -> Path:
    """A copy of the tiny FP32 export whose manifest each test rewrites."""
    return Path(shutil.copytree(tiny_artifacts["fp32"], tmp_path_factory.mktemp("manifest") / "a"))


@pytest.fixture(scope="module")
def valid(tiny_artifacts) -> dict:
    return read_manifest(tiny_artifacts["fp32"])


def write(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def read_everything(art: artifact_view.Artifact) -> None:
    """Every property and method of the view a command or runner reads."""
    for name in ("kind", "precision", "model_config", "model", "variant", "img_size", "num_classes", "preprocessing",
                 "input_name", "output_name", "input_shape", "chw", "has_single_image_input", "io", "checkpoint",
                 "pretrained", "parent", "validation", "passed", "made_for_backend", "model_file", "model_sha256",
                 "files", "total_bytes"):
        getattr(art, name)
    art.inherited()
    art.parent_ref()
    art.same_model(art)
    for section in ("onnx", "tensorrt", "precision_policy", "calibration", "runtime"):
        art.section(section)
    art.verify()


def mutate(manifest: dict, path: tuple, value=None, drop: bool = False) -> dict:
    m = copy.deepcopy(manifest)
    parent = m
    for key in path[:-1]:
        parent = parent[key]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return m


CASES = [  # (path, value or DROP, the field the message names, what it says)
    (("kind",), "pdf", "kind", "must be one of 'onnx', 'tensorrt', got 'pdf'"),
    (("precision",), 8, "precision", "must be one of 'fp32', 'fp16', 'int8', 'fp8', got 8"),
    (("files",), {}, "files", "must be a non-empty list of objects, got {}"),
    (("files", 0, "path"), 3, "files[0].path", "must be a relative file path (a string), got 3"),
    (("files", 0, "bytes"), "12", "files[0].bytes", "must be a non-negative integer, got '12'"),
    (("files", 0, "sha256"), None, "files[0].sha256", "must be 64 lowercase hex digits"),
    (("files", 0, "role"), "weights", "files[0].role", "must be one of 'model', 'external_data'"),
    (("files", 0), "model.onnx", "files[0]", "must be an object, got 'model.onnx'"),
    (("model",), [], "model", "must be an object, got []"),
    (("model", "img_size"), "32", "model.img_size", "must be a positive integer, got '32'"),
    (("model", "num_classes"), True, "model.num_classes", "must be a positive integer, got True"),
    (("model", "dim"), "DROP", "model.dim", "must be a positive integer, got nothing (the field is missing)"),
    (("model", "colour"), "red", "model.colour", "must be absent (not a known field)"),
    (("model", "layer_norm_eps"), float("nan"), "model.layer_norm_eps", "must be a positive finite number"),
    (("preprocessing", "std"), [0.5, 0.5], "preprocessing.std", "must be a list of 3 positive finite numbers"),
    (("preprocessing", "resize"), -1, "preprocessing.resize", "must be a positive integer, got -1"),
    (("io",), "images", "io", "must be an object with inputs and outputs"),
    (("io", "inputs"), [], "io.inputs", "must be a non-empty list of objects"),
    (("io", "inputs", 0, "shape"), "batch,3,32,32", "io.inputs[0].shape", "must be a list of dimensions"),
    (("io", "outputs", 0, "name"), 7, "io.outputs[0].name", "must be a non-empty string, got 7"),
    (("checkpoint",), ["x"], "checkpoint", "must be an object or null"),
    (("validation", "passed"), "yes", "validation.passed", "must be true, false or null, got 'yes'"),
    (("runtime",), {"backend": "tvm"}, "runtime.backend", "must be one of 'tensorrt', 'onnxruntime'"),
]


@pytest.mark.parametrize(("path", "value", "field", "says"), CASES, ids=[c[2] for c in CASES])
def test_a_wrong_field_is_one_error_naming_it(folder, valid, run_cli, path, value, field, says):
    write(folder, mutate(valid, path, value, drop=value == "DROP"))
    with pytest.raises(ArtifactError) as e:
        artifact_view.open(folder)
    assert f"{folder / MANIFEST_NAME}: {field} {says}" in str(e.value)
    code, out, err = run_cli("inspect", str(folder))  # the CLI: that line, exit 1, no traceback
    assert (code, out, err.strip()) == (1, "", f"error: {e.value}")


@pytest.mark.parametrize(("content", "says"), [
    ("[" * 100_000 + "]" * 100_000, "maximum recursion depth"),
    (b"\xff\xfe{}", "can't decode byte 0xff"),
    (None, "a manifest is a few KB"),  # a 20 MB (sparse) file is not read whole
    ("[1, 2]", "is not a vit-deploy manifest"),
], ids=["deep", "not-utf8", "huge", "a-list"])
def test_an_unreadable_manifest_is_one_error(folder, run_cli, content, says):
    path = folder / MANIFEST_NAME
    if content is None:
        path.write_text("{}")
        os.truncate(path, 20 << 20)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = run_cli("inspect", str(folder))
    assert code == 1 and out == "" and says in err and len(err.strip().splitlines()) == 1, err


def test_an_input_that_is_not_an_image_is_refused_by_the_runner(folder, valid):
    write(folder, mutate(valid, ("io", "inputs", 0, "shape"), ["batch", 3, 32]))
    with pytest.raises(ArtifactError, match=r"io.inputs\[0\].shape must be \[batch, channels, height, width\]"):
        assert artifact_view.open(folder).chw is None  # never reached: reading chw raises


def test_the_valid_manifest_reads(folder, valid):
    write(folder, valid)
    read_everything(artifact_view.open(folder))


# -- property: random drops and retypes never give anything but a working view or ArtifactError --
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def field_paths(manifest: dict) -> list[tuple]:
    """The paths of every field the view reads (and a few it does not), down to list items."""
    paths: list[tuple] = [(k,) for k in manifest]
    paths += [("runtime",), ("runtime", "backend")] if "runtime" in manifest else [("runtime",)]
    for section in ("model", "preprocessing"):
        paths += [(section, k) for k in manifest[section]]
    for role in ("inputs", "outputs"):
        paths += [("io", role), ("io", role, 0), ("io", role, 0, "shape", 1)]
        paths += [("io", role, 0, k) for k in ("name", "shape", "dtype")]
    paths += [("files", 0), ("preprocessing", "mean", 0)] + [("files", 0, k) for k in ("role", "path", "sha256",
                                                                                         "bytes")]
    return paths


@st.composite
def mutated(draw, manifest: dict) -> dict:
    m, paths = manifest, field_paths(manifest)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        try:
            m = mutate(m, path, None if (drop := draw(st.booleans())) else draw(JSON), drop=drop)
        except (KeyError, IndexError, TypeError, AttributeError):  # an earlier mutation removed or retyped the parent
            continue
    return m


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_manifests_read_or_refuse(folder, valid, data):
    write(folder, data.draw(mutated(valid)))
    try:
        read_everything(artifact_view.open(folder))
    except ArtifactError as e:
        assert str(folder) in str(e)


@pytest.mark.parametrize("field, value", [("std", [0.5, 0.0, 0.5]), ("crop", 0), ("resize", -3), ("crop", 4000)])
def test_preprocessing_values_are_checked_when_the_manifest_is_read(folder, valid, field, value):
    """A hand-edited std of 0 (or a crop of 0) is refused naming the manifest, before any image is scaled by it."""
    write(folder, mutate(valid, ("preprocessing", field), value))
    with pytest.raises(ArtifactError, match=rf"{MANIFEST_NAME}: preprocessing\W.*{field}"):
        read_manifest(folder)
