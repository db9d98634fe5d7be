"""Hostile and careless checkpoints (issue 11): bad numbers are refused before anything is exported.

By class: tensors holding NaN/Inf in every format the loader reads; config.json and the processor
or timm configs with non-numbers, out-of-range values and wrong types; a timm hub id read from a
local Hugging Face cache (no network); provenance that lets the reference be rebuilt from any
directory and names the checkpoint file that moved or changed. What is checked is what the user
sees: the exception type or exit code, the one line naming the file and the field or tensor, and
no artifact folder left behind. The models are the tiny "test" variant.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import hf_vit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from vit_deploy.artifact import read_manifest, sha256_file
from vit_deploy.errors import CheckpointError
from vit_deploy.model.checkpoint import read_checkpoint
from vit_deploy.model.checkpoint.configs import read_config, read_preprocessing
from vit_deploy.model.vit import create_model
from vit_deploy.specs import Preprocessing, model_config


@pytest.fixture(scope="module")
def timm_sd() -> dict[str, torch.Tensor]:
    return create_model(model_config("test", 32, 5), seed=3).state_dict()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "vit"
    hf_vit(image_size=32, num_labels=5).save_pretrained(path)
    return path


def _one_line_exit_1(result: tuple[int, str, str]) -> str:
    code, _, err = result
    assert code == 1, err
    # progress lines may come first; the failure itself is the one last line
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    return errors[0]


# ---------------------------------------------------------------------------------------------
# NaN / Inf tensors: one check every format shares
# ---------------------------------------------------------------------------------------------


def _poisoned(sd: dict[str, torch.Tensor], name: str, value: float) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in sd.items()}
    sd[name].view(-1)[0] = value
    return sd


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_non_finite_tensor_is_refused_naming_tensor_and_file(timm_sd, tmp_path, suffix, value):
    path = tmp_path / f"w{suffix}"
    sd = _poisoned(timm_sd, "head.weight", value)
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(path) in str(e.value) and "head.weight (1 of" in str(e.value) and "NaN or infinite" in str(e.value)


def test_only_the_first_few_bad_tensors_are_named(timm_sd, tmp_path):
    sd = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in timm_sd.items()}
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=rf"{len(sd)} tensor\(s\) hold NaN.*\.\.\. and {len(sd) - 3} more"):
        read_checkpoint(tmp_path / "w.safetensors")


def test_hf_folder_sharded_folder_and_npz_are_checked_too(hf_dir, tmp_path):
    on_disk = load_file(hf_dir / "model.safetensors")
    bad_name = "classifier.bias"  # as stored in the file, not the reference's name for it
    folder = tmp_path / "hf"
    shutil.copytree(hf_dir, folder)
    save_file(_poisoned(on_disk, bad_name, float("nan")), folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: 1 tensor\(s\).*{bad_name}"):
        read_checkpoint(folder)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(on_disk)
    save_file({k: on_disk[k] for k in names[::2]}, sharded / "a.safetensors")
    poisoned = _poisoned({k: on_disk[k] for k in names[1::2]}, names[1], float("inf"))
    save_file(poisoned, sharded / "b.safetensors")
    weight_map = {k: "a.safetensors" for k in names[::2]} | {k: "b.safetensors" for k in names[1::2]}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=rf"b\.safetensors: 1 tensor\(s\).*{names[1]}"):
        read_checkpoint(sharded)

    npz = tmp_path / "vit.npz"
    np.savez(npz, **{"embedding/kernel": np.array([[np.nan, 1.0]], np.float32), "cls": np.zeros((1, 1, 2))})
    with pytest.raises(CheckpointError, match=r"vit\.npz: 1 tensor\(s\).*embedding/kernel"):
        read_checkpoint(npz)


def test_float64_beyond_float32_range_is_refused(timm_sd, tmp_path):
    # finite in float64, inf once the loader casts it to float32
    sd = {k: v.double() for k, v in timm_sd.items()}
    sd["pos_embed"].view(-1)[5] = 1e39
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="pos_embed"):
        read_checkpoint(tmp_path / "w.safetensors")


def test_export_of_a_nan_checkpoint_exits_1_and_writes_nothing(timm_sd, tmp_path, run_cli):
    path = tmp_path / "nan.safetensors"
    save_file(_poisoned(timm_sd, "head.weight", float("nan")), path)
    out = tmp_path / "out"
    err = _one_line_exit_1(run_cli("export", "--model", "test", "--res", "32", "--num-classes", "5",
                                   "--weights", str(path), "--out", str(out)))
    assert "head.weight" in err and str(path) in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["nan.safetensors"]


# ---------------------------------------------------------------------------------------------
# config.json: non-numbers, infinity, wrong types
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "raw"), [
    ("hidden_size", '"big"'),
    ("hidden_size", "null"),
    ("num_hidden_layers", "1e400"),  # json reads it as inf
    ("num_attention_heads", "true"),
    ("intermediate_size", "64.5"),
    ("intermediate_size", "100000000000000000000"),
    ("layer_norm_eps", '"1e-6"'),
    ("layer_norm_eps", "NaN"),
    ("layer_norm_eps", "0"),
    ("qkv_bias", '"no"'),
])
def test_config_json_bad_value_names_file_and_field(hf_dir, tmp_path, field, raw):
    folder = tmp_path / "hf"
    shutil.copytree(hf_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = "@@"
    (folder / "config.json").write_text(json.dumps(config).replace('"@@"', raw))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(folder)
    assert str(folder / "config.json") in str(e.value) and f"{field} = " in str(e.value)


def test_config_json_of_another_model_type_is_not_checked(hf_dir, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(hf_dir, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": "big"}))
    assert read_checkpoint(folder).format == "hf"  # ignored, as before: the tensors decide


def test_export_with_a_non_number_config_exits_1(hf_dir, tmp_path, run_cli):
    folder = tmp_path / "hf"
    shutil.copytree(hf_dir, folder)
    config = json.loads((folder / "config.json").read_text()) | {"hidden_size": "big"}
    (folder / "config.json").write_text(json.dumps(config))
    err = _one_line_exit_1(run_cli("export", "--model", "test", "--res", "32", "--num-classes", "5",
                                   "--weights", str(folder), "--out", str(tmp_path / "out")))
    assert "config.json: hidden_size = 'big' is not a number" in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# preprocessor_config.json (Hugging Face) and pretrained_cfg (timm)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "field"), [
    ({"image_std": [0.0, 0.5, 0.5]}, "image_std"),
    ({"image_std": [0.5, "x", 0.5]}, "image_std"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ({"image_mean": None}, "image_mean"),
    ({"size": {"height": 0, "width": 0}}, "size"),
    ({"size": {"height": "big", "width": "big"}}, "size"),
    ({"size": {"height": 224, "width": 200}}, "size"),
    ({"size": 100000}, "size"),
    ({"do_center_crop": True, "crop_size": 300}, "crop_size"),  # larger than the resize (224)
    ({"resample": 9}, "resample"),
    ({"resample": "cubic"}, "resample"),
    ({"do_resize": "yes"}, "do_resize"),
    ({"rescale_factor": 0}, "rescale_factor"),
    ({"rescale_factor": 1e-320}, "rescale_factor"),  # above 0, but the scaled mean and std overflow
])
def test_processor_config_bad_value_names_file_and_field(tmp_path, changes, field):
    config = {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2, "do_normalize": True,
              "image_mean": [0.5] * 3, "image_std": [0.5] * 3} | changes
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        read_preprocessing(tmp_path, None)
    assert str(tmp_path / "preprocessor_config.json") in str(e.value) and f"{field} = " in str(e.value)


@pytest.mark.parametrize(("changes", "field"), [
    ({"crop_pct": 0}, "pretrained_cfg.crop_pct"),
    ({"crop_pct": 1.5}, "pretrained_cfg.crop_pct"),
    ({"crop_pct": "0.9"}, "pretrained_cfg.crop_pct"),
    ({"input_size": "224"}, "pretrained_cfg.input_size"),
    ({"input_size": [3, 0, 0]}, "pretrained_cfg.input_size"),
    ({"std": [0.5, 0.5, 0.0]}, "pretrained_cfg.std"),
    ({"mean": [float("nan")] * 3}, "pretrained_cfg.mean"),
    ({"interpolation": "random"}, "pretrained_cfg.interpolation"),
])
def test_timm_pretrained_cfg_bad_value_names_file_and_field(tmp_path, changes, field):
    cfg = {"input_size": [3, 224, 224], "crop_pct": 0.9, "interpolation": "bicubic", "mean": [0.5] * 3,
           "std": [0.5] * 3} | changes
    config = {"architecture": "vit_tiny_patch16_224", "pretrained_cfg": cfg}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        read_preprocessing(tmp_path, read_config(tmp_path))
    assert str(tmp_path / "config.json") in str(e.value) and f"{field} = " in str(e.value)


def _hf_cache_snapshot(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """The folder layout huggingface_hub reads offline: refs/main names the snapshot holding the files."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def test_timm_hub_id_reads_pretrained_cfg_from_the_local_cache(timm_sd, tmp_path, monkeypatch, run_cli):
    import huggingface_hub.constants

    weights = tmp_path / "w.safetensors"
    save_file(timm_sd, weights)
    # the layout of a timm hub repo: model.safetensors + config.json holding pretrained_cfg
    pretrained_cfg = {"input_size": [3, 32, 32], "crop_pct": 0.9, "interpolation": "bilinear", "crop_mode": "center",
                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 5}
    config = {"architecture": "vit_test", "num_classes": 5, "pretrained_cfg": pretrained_cfg}
    snapshot = _hf_cache_snapshot(tmp_path / "hub", "timm/vit_test.local", {
        "model.safetensors": weights.read_bytes(), "config.json": json.dumps(config).encode()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    out = tmp_path / "out"
    code, _, err = run_cli("export", "--model", "test", "--res", "32", "--num-classes", "5",
                           "--weights", "timm:vit_test.local", "--out", str(out))
    assert code == 0, err
    manifest = read_manifest(out)
    # timm's eval transform: resize to floor(32 / 0.9) = 35, center crop 32
    assert manifest["preprocessing"] | {} == {
        "resize": 35, "crop": 32, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "channel_order": "RGB", "layout": "NCHW"}
    ckpt = manifest["checkpoint"]
    assert ckpt["source"] == "timm:vit_test.local" and "path" not in ckpt  # a hub id is rebuilt from the hub
    assert [f["sha256"] for f in ckpt["files"]] == [sha256_file(weights)]
    assert Path(ckpt["files"][0]["path"]).resolve() == (snapshot / "model.safetensors").resolve()


# ---------------------------------------------------------------------------------------------
# Provenance: the reference is rebuilt from any directory; a moved or changed file is named
# ---------------------------------------------------------------------------------------------


def test_reference_is_rebuilt_from_elsewhere_and_a_moved_or_changed_checkpoint_is_named(
    timm_sd, tmp_path, monkeypatch, run_cli
):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    save_file(timm_sd, work / "w.safetensors")
    monkeypatch.chdir(work)
    code, _, err = run_cli("export", "--model", "test", "--res", "32", "--num-classes", "5",
                           "--weights", "w.safetensors", "--out", "art")
    assert code == 0, err
    art = work / "art"
    ckpt = read_manifest(art)["checkpoint"]
    digest = sha256_file(work / "w.safetensors")
    assert ckpt["source"] == "w.safetensors" and ckpt["path"] == str(work / "w.safetensors")
    assert ckpt["files"] == [{"path": str(work / "w.safetensors"), "sha256": digest}]

    monkeypatch.chdir(elsewhere)
    compare = ("compare", str(art), "--batch-sizes", "2", "--max-images", "2")
    code, _, err = run_cli(*compare)
    assert code == 0, err

    moved = tmp_path / "moved.safetensors"
    (work / "w.safetensors").rename(moved)
    err = _one_line_exit_1(run_cli(*compare))
    assert f"checkpoint {work / 'w.safetensors'} (recorded in the manifest) is missing" in err and "--weights" in err
    code, _, err = run_cli(*compare, "--weights", str(moved))
    assert code == 0, err

    changed = _poisoned(timm_sd, "head.bias", 0.25)
    save_file(changed, moved)
    err = _one_line_exit_1(run_cli(*compare, "--weights", str(moved)))
    assert f"checkpoint file {moved} changed since the export" in err and digest[:12] in err


def test_sharded_checkpoint_records_every_shard(hf_dir, tmp_path):
    on_disk = load_file(hf_dir / "model.safetensors")
    names = sorted(on_disk)
    shutil.copy(hf_dir / "config.json", tmp_path / "config.json")
    for shard, keys in (("a.safetensors", names[::2]), ("b.safetensors", names[1::2])):
        save_file({k: on_disk[k] for k in keys}, tmp_path / shard)
    weight_map = {k: "a.safetensors" for k in names[::2]} | {k: "b.safetensors" for k in names[1::2]}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ckpt = read_checkpoint(tmp_path)
    assert ckpt.provenance()["files"] == [
        {"path": str(tmp_path / s), "sha256": sha256_file(tmp_path / s)} for s in ("a.safetensors", "b.safetensors")]

    weight_map[names[0]] = "../outside.safetensors"  # a shard index may not point out of its folder
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="not a file name in its folder"):
        read_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------
# Property layer: whatever JSON the config files hold, the reader returns checked values or
# refuses with CheckpointError, never anything else
# ---------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["height", "width", "shortest_edge"]), inner, max_size=3),
    max_leaves=8,
)
_plausible = st.sampled_from([0, 1, 8, 32, 224, 0.5, 1 / 255, [0.5] * 3, [0.2, 0.3, 0.4], True, False,
                              {"height": 32, "width": 32}, {"shortest_edge": 40}, "bicubic", 3])
_PROCESSOR_FIELDS = ["do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                     "do_normalize", "image_mean", "image_std"]
_CONFIG_FIELDS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "layer_norm_eps",
                  "qkv_bias", "image_size", "patch_size", "model_type", "pretrained_cfg"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(_PROCESSOR_FIELDS), _plausible | _json, max_size=len(_PROCESSOR_FIELDS)))
def test_any_processor_config_gives_valid_preprocessing_or_checkpoint_error(tmp_path, config):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    try:
        out = read_preprocessing(tmp_path, None)
    except CheckpointError as e:
        assert "\n" not in str(e) and "preprocessor_config.json: " in str(e)
        return
    # what was accepted builds a Preprocessing (whose own check would refuse a NaN, 0 or a bad crop)
    Preprocessing.from_dict(Preprocessing(4096, 1).to_dict() | out)
    assert all(math.isfinite(v) for v in (*out.get("mean", ()), *out.get("std", ())))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(_CONFIG_FIELDS), _plausible | _json, max_size=len(_CONFIG_FIELDS)))
def test_any_config_json_gives_a_config_or_checkpoint_error(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    try:
        read_preprocessing(tmp_path, read_config(tmp_path))
    except CheckpointError as e:
        assert "\n" not in str(e) and "config.json: " in str(e)
