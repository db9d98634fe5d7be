"""Checkpoint reading and loading (vit_deploy.model.checkpoint).

The references are independent of the loader: Hugging Face transformers' ViT (its logits, its
own save_pretrained files, its interpolate_pos_encoding, its image processor), a JAX .npz written
here from the HF weights with the big_vision shapes, and, for timm-named state dicts, the
reference model the weights came from. All models are tiny (the "test" variant: patch 8, dim
32, depth 2, heads 2), so the file runs in seconds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import hf_vit
from safetensors.torch import load_file, save_file

from vit_deploy.errors import CheckpointError
from vit_deploy.model.checkpoint import Checkpoint, load_into, preprocessing_overrides, read_checkpoint
from vit_deploy.model.vit import VisionTransformer, create_model
from vit_deploy.specs import Preprocessing, model_config

TOL = {"atol": 1e-5, "rtol": 1e-5}
HEADS = 2


def _perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Fresh inits leave biases at 0 and LayerNorm weights at 1, which would hide a bias or
    # scale that lands in the wrong place; move every parameter off its init.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module


def _images(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hf_logits(model, images: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=images, interpolate_pos_encoding=interpolate).logits


def _logits(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def _build(ckpt: Checkpoint, img_size: int = 32, num_classes: int = 5) -> tuple[VisionTransformer, dict]:
    """What a caller does: config from the variant plus the checkpoint's overrides, then load."""
    model = create_model(model_config("test", img_size, num_classes, **ckpt.config_overrides), seed=123)
    return model, load_into(model, ckpt)


@pytest.fixture(scope="module")
def hf_model():
    return _perturb(hf_vit(image_size=32, num_labels=5), seed=1)  # layer_norm_eps = HF default 1e-12


@pytest.fixture(scope="module")
def hf_model_eps6(hf_model):
    """The same weights with eps 1e-6, the reference for the timm/JAX formats (trained with 1e-6)."""
    from transformers import ViTForImageClassification

    config = copy.deepcopy(hf_model.config)
    config.layer_norm_eps = 1e-6
    model = ViTForImageClassification(config).eval()
    model.load_state_dict(hf_model.state_dict())
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "vit-test"
    hf_model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def timm_source() -> VisionTransformer:
    """A reference model whose state dict is the timm-named checkpoint under test."""
    return _perturb(create_model(model_config("test", 32, 5), seed=7), seed=2)


# ---------------------------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------------------------


def test_hf_save_pretrained_dir_matches_hf(hf_model, hf_dir):
    on_disk = load_file(hf_dir / "model.safetensors")
    assert "vit.encoder.layer.0.attention.attention.query.weight" in on_disk  # the 4.x names
    ckpt = read_checkpoint(str(hf_dir))
    assert (ckpt.format, ckpt.source, ckpt.num_classes, ckpt.grid, ckpt.heads) == ("hf", str(hf_dir), 5, 4, 2)
    assert ckpt.config_overrides == {"layer_norm_eps": 1e-12}
    assert ckpt.sha256 == hashlib.sha256((hf_dir / "model.safetensors").read_bytes()).hexdigest()
    assert ckpt.preprocessing is None
    model, facts = _build(ckpt)
    assert facts == {} and model.cfg.layer_norm_eps == 1e-12
    x = _images(32)
    torch.testing.assert_close(_logits(model, x), _hf_logits(hf_model, x), **TOL)


def test_hf_state_dict_with_5x_names_matches_hf(hf_model, tmp_path):
    sd = hf_model.state_dict()
    assert "vit.layers.0.attention.q_proj.weight" in sd  # the transformers 5.x in-memory names
    path = tmp_path / "hf5.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "hf" and ckpt.config_overrides == {"layer_norm_eps": 1e-12}  # no config.json
    assert ckpt.heads is None
    model, _ = _build(ckpt)
    x = _images(32)
    torch.testing.assert_close(_logits(model, x), _hf_logits(hf_model, x), **TOL)


def test_hf_pytorch_model_bin_and_sharded_dirs(hf_model, hf_dir, tmp_path):
    on_disk = load_file(hf_dir / "model.safetensors")
    config = (hf_dir / "config.json").read_text()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text(config)
    torch.save(on_disk, bin_dir / "pytorch_model.bin")

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(config)
    names = sorted(on_disk)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: on_disk[k] for k in keys}, sharded / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    x = _images(32)
    for path in (bin_dir, sharded):
        ckpt = read_checkpoint(path)
        assert ckpt.format == "hf"
        assert ckpt.sha256 is None if path == sharded else ckpt.sha256 is not None
        model, _ = _build(ckpt)
        torch.testing.assert_close(_logits(model, x), _hf_logits(hf_model, x), **TOL)


def test_hf_config_eps_is_taken_and_enforced(hf_dir, tmp_path):
    d = tmp_path / "eps"
    d.mkdir()
    (d / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    config = json.loads((hf_dir / "config.json").read_text())
    config["layer_norm_eps"] = 1e-5
    (d / "config.json").write_text(json.dumps(config))
    ckpt = read_checkpoint(d)
    assert ckpt.config_overrides == {"layer_norm_eps": 1e-5}
    model, _ = _build(ckpt)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    # A model built without the overrides would silently compute something else: refused.
    plain = create_model(model_config("test", 32, 5))
    with pytest.raises(CheckpointError, match=r"layer_norm_eps=1e-05 \(model: 1e-06\)"):
        load_into(plain, ckpt)


def test_hf_without_qkv_bias_matches_hf(tmp_path):
    hf = _perturb(hf_vit(image_size=32, num_labels=5, qkv_bias=False), seed=3)
    hf.save_pretrained(tmp_path)
    assert not any("query.bias" in k for k in load_file(tmp_path / "model.safetensors"))
    model, _ = _build(read_checkpoint(tmp_path))
    x = _images(32)
    torch.testing.assert_close(_logits(model, x), _hf_logits(hf, x), **TOL)


def test_hf_pos_embed_resampled_like_hf_interpolate(hf_model, hf_dir):
    ckpt = read_checkpoint(hf_dir)
    model, facts = _build(ckpt, img_size=48)  # grid 4 -> 6
    assert facts == {"pos_embed_resampled_from": 4}
    x = _images(48)
    torch.testing.assert_close(_logits(model, x), _hf_logits(hf_model, x, interpolate=True), **TOL)


def test_hf_pooler_is_unexpected(hf_dir, tmp_path):
    sd = load_file(hf_dir / "model.safetensors")
    sd["vit.pooler.dense.weight"], sd["vit.pooler.dense.bias"] = torch.zeros(32, 32), torch.zeros(32)
    save_file(sd, tmp_path / "pooled.safetensors")
    ckpt = read_checkpoint(tmp_path / "pooled.safetensors")
    with pytest.raises(CheckpointError) as e:
        _build(ckpt)
    assert "2 unexpected keys" in str(e.value)
    assert "vit.pooler.dense.bias, vit.pooler.dense.weight" in str(e.value)  # sorted, original names


# ---------------------------------------------------------------------------------------------
# Preprocessing from an HF processor config
# ---------------------------------------------------------------------------------------------


def test_hf_preprocessor_config_maps_to_preprocessing(hf_dir, tmp_path):
    from transformers import ViTImageProcessor

    d = tmp_path / "with-processor"
    d.mkdir()
    for name in ("model.safetensors", "config.json"):
        (d / name).write_bytes((hf_dir / name).read_bytes())
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=mean, image_std=std, resample=3
    ).save_pretrained(d)
    pre = read_checkpoint(d).preprocessing
    assert pre is not None
    assert (pre["resize"], pre["crop"], pre["interpolation"]) == (32, 32, "bicubic")
    assert pre["mean"] == pytest.approx(mean) and pre["std"] == pytest.approx(std)
    # The shape a caller needs: a partial Preprocessing.to_dict() that completes the defaults.
    cfg = model_config("test", 32, 5)
    merged = Preprocessing.from_dict({**cfg.preprocessing.to_dict(), **pre})
    assert merged.crop == 32 and merged.interpolation == "bicubic"
    # Exported at another resolution, the crop follows the export, the resize/crop ratio stays.
    at48 = preprocessing_overrides(read_checkpoint(d), 48)
    assert (at48["resize"], at48["crop"]) == (48, 48)


@pytest.mark.parametrize("do_rescale", [True, False])
def test_hf_normalisation_matches_the_hf_processor(tmp_path, do_rescale):
    """Preprocessing's (x/255 - mean)/std must equal what the HF processor feeds the model."""
    from transformers import ViTImageProcessor

    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    if not do_rescale:  # a processor that normalises raw 0..255 pixels
        mean, std = [100.0, 120.0, 140.0], [50.0, 60.0, 70.0]
    processor = ViTImageProcessor(do_resize=False, do_rescale=do_rescale, image_mean=mean, image_std=std)
    processor.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in hf_vit().state_dict().items()}, tmp_path / "model.safetensors")
    pre = read_checkpoint(tmp_path).preprocessing
    assert pre is not None and "resize" not in pre  # do_resize=False: nothing to say about sizes

    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    reference = processor(images=pixels, return_tensors="np")["pixel_values"][0]  # [3, 8, 8]
    x = pixels.astype(np.float64).transpose(2, 0, 1) / 255.0
    ours = (x - np.array(pre["mean"])[:, None, None]) / np.array(pre["std"])[:, None, None]
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-5)


def test_timm_pretrained_cfg_gives_preprocessing(timm_source, tmp_path):
    save_file(timm_source.state_dict(), tmp_path / "model.safetensors")
    pretrained_cfg = {
        "input_size": [3, 32, 32],
        "crop_pct": 0.9,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "x", "pretrained_cfg": pretrained_cfg}))
    pre = read_checkpoint(tmp_path).preprocessing
    # timm's eval transform: resize to floor(img_size / crop_pct), then center crop img_size.
    assert pre == {
        "crop": 32,
        "resize": math.floor(32 / 0.9),
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }


# ---------------------------------------------------------------------------------------------
# Google JAX .npz
# ---------------------------------------------------------------------------------------------


def _jax_npz_from_hf(sd: dict[str, torch.Tensor], path: Path, layout: str) -> None:
    """Write the HF weights in the JAX layouts, per the shapes of the official checkpoints.

    augreg: top-level keys, encoderblock_{i}, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3.
    big_vision: under "params/", pos_embedding at the top, module indices 0/1/0, and the blocks
    stacked ("scanned") along a leading depth axis in Transformer/encoderblock/.
    """
    a = {k: v.detach().float().numpy() for k, v in sd.items()}
    dim = a["vit.embeddings.cls_token"].shape[-1]
    hd = dim // HEADS
    big = layout == "big_vision"
    p = "params/" if big else ""
    out = {
        p + "embedding/kernel": a["vit.embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
        p + "embedding/bias": a["vit.embeddings.patch_embeddings.projection.bias"],
        p + "cls": a["vit.embeddings.cls_token"],  # [1, 1, D]
        p + ("pos_embedding" if big else "Transformer/posembed_input/pos_embedding"): a[
            "vit.embeddings.position_embeddings"
        ],
        p + "Transformer/encoder_norm/scale": a["vit.layernorm.weight"],
        p + "Transformer/encoder_norm/bias": a["vit.layernorm.bias"],
        p + "head/kernel": a["classifier.weight"].T,  # Dense kernels are [in, out]
        p + "head/bias": a["classifier.bias"],
    }
    mha, mlp, ln2 = (
        ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
        if big
        else ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    )
    blocks = []
    for i in range(2):
        L = f"vit.layers.{i}."
        blk = {
            "LayerNorm_0/scale": a[L + "layernorm_before.weight"],
            "LayerNorm_0/bias": a[L + "layernorm_before.bias"],
            f"{ln2}/scale": a[L + "layernorm_after.weight"],
            f"{ln2}/bias": a[L + "layernorm_after.bias"],
            # y[o] = sum_{h, d} z[h, d] * kernel[h, d, o]: torch's [out, in] weight, transposed, split.
            f"{mha}/out/kernel": a[L + "attention.o_proj.weight"].T.reshape(HEADS, hd, dim),
            f"{mha}/out/bias": a[L + "attention.o_proj.bias"],
            f"{mlp}/Dense_0/kernel": a[L + "mlp.fc1.weight"].T,
            f"{mlp}/Dense_0/bias": a[L + "mlp.fc1.bias"],
            f"{mlp}/Dense_1/kernel": a[L + "mlp.fc2.weight"].T,
            f"{mlp}/Dense_1/bias": a[L + "mlp.fc2.bias"],
        }
        for jax_name, hf_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            # y[h, d] = sum_i x[i] * kernel[i, h, d]: torch's [out, in] weight, transposed, split per head.
            blk[f"{mha}/{jax_name}/kernel"] = a[L + f"attention.{hf_name}.weight"].T.reshape(dim, HEADS, hd)
            blk[f"{mha}/{jax_name}/bias"] = a[L + f"attention.{hf_name}.bias"].reshape(HEADS, hd)
        blocks.append(blk)
    if big:
        for k in blocks[0]:
            out[f"{p}Transformer/encoderblock/{k}"] = np.stack([b[k] for b in blocks])
    else:
        for i, blk in enumerate(blocks):
            out.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in blk.items()})
    np.savez(path, **out)


@pytest.mark.parametrize("layout", ["augreg", "big_vision"])
def test_jax_npz_matches_hf(hf_model, hf_model_eps6, tmp_path, layout):
    path = tmp_path / "Ti_16-i21k-300ep.npz"
    _jax_npz_from_hf(hf_model.state_dict(), path, layout)
    ckpt = read_checkpoint(path)
    assert (ckpt.format, ckpt.num_classes, ckpt.grid, ckpt.heads) == ("jax", 5, 4, 2)
    assert ckpt.config_overrides == {"layer_norm_eps": 1e-6}
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    model, facts = _build(ckpt)
    assert facts == {}
    x = _images(32)
    torch.testing.assert_close(_logits(model, x), _hf_logits(hf_model_eps6, x), **TOL)


def test_jax_npz_resampled(hf_model_eps6, tmp_path):
    path = tmp_path / "vit.npz"
    _jax_npz_from_hf(hf_model_eps6.state_dict(), path, "augreg")
    model, facts = _build(read_checkpoint(path), img_size=48)
    assert facts == {"pos_embed_resampled_from": 4}
    x = _images(48)
    torch.testing.assert_close(_logits(model, x), _hf_logits(hf_model_eps6, x, interpolate=True), **TOL)


# ---------------------------------------------------------------------------------------------
# timm state dicts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, wrap",
    [
        ("plain.pth", lambda sd: sd),
        ("wrapped.pth", lambda sd: {"state_dict": sd, "epoch": 3, "arch": "vit_test"}),
        ("model.pt", lambda sd: {"model": sd, "optimizer": {"lr": 0.1}}),
        ("ema.bin", lambda sd: {"model_ema": sd}),
        ("ddp.pth", lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}}),
        ("plain.safetensors", lambda sd: sd),
    ],
)
def test_timm_state_dicts_load(timm_source, hf_model_eps6, tmp_path, name, wrap):
    path = tmp_path / name
    sd = timm_source.state_dict()
    if name.endswith(".safetensors"):
        save_file(wrap(sd), path)
    else:
        torch.save(wrap(sd), path)
    ckpt = read_checkpoint(path)
    assert (ckpt.format, ckpt.num_classes, ckpt.grid, ckpt.heads) == ("timm", 5, 4, None)
    assert ckpt.config_overrides == {"layer_norm_eps": 1e-6}
    model, facts = _build(ckpt)
    assert facts == {}
    x = _images(32)
    torch.testing.assert_close(_logits(model, x), _logits(timm_source, x), **TOL)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loads_as_float32(timm_source, tmp_path, suffix, dtype):
    half = {k: v.to(dtype) for k, v in timm_source.state_dict().items()}
    path = tmp_path / f"half{suffix}"
    save_file(half, path) if suffix == ".safetensors" else torch.save(half, path)
    ckpt = read_checkpoint(path)
    model, facts = _build(ckpt)
    assert facts == {"cast_to_float32_from": [str(dtype).removeprefix("torch.")]}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # Reference: the source model holding the same rounded weights, upcast by torch itself.
    reference = create_model(timm_source.cfg)
    reference.load_state_dict({k: v.float() for k, v in half.items()})
    x = _images(32)
    torch.testing.assert_close(_logits(model, x), _logits(reference, x), **TOL)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def test_missing_file_and_empty_dir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match=r"pass hf:google/vit-base"):
        read_checkpoint("google/vit-base")  # not a local path: hint at the hub syntax
    with pytest.raises(CheckpointError, match="holds no weights.*model.safetensors"):
        read_checkpoint(tmp_path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz", ".legacy.pth"])
def test_truncated_files(timm_source, hf_model, tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    sd = timm_source.state_dict()
    if suffix == ".pth":
        torch.save(sd, path)
    elif suffix == ".legacy.pth":  # the pre-1.6 bare-pickle format
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif suffix == ".safetensors":
        save_file(sd, path)
    else:
        _jax_npz_from_hf(hf_model.state_dict(), path, "augreg")
    read_checkpoint(path)  # intact, it loads
    _truncate(path)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(path) in str(e.value) and "truncated or corrupt" in str(e.value)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("notes.pth", b"hello, this is not a checkpoint\n", "not a PyTorch checkpoint (it looks like text)"),
        (
            "lfs.safetensors",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n",
            "Git LFS",
        ),
        ("page.bin", b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML page"),
        ("empty.npz", b"", "empty"),
        ("text.safetensors", b"just some words", "not a safetensors file"),
        ("text.npz", b"just some words", "not a NumPy .npz archive"),
    ],
)
def test_not_a_checkpoint(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        read_checkpoint(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\x89HDF\r\n")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint type '\.h5'.*\.safetensors.*\.npz"):
        read_checkpoint(path)


class _Payload:
    """Unpickling this calls open(marker, "w"): code a malicious checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_not_run(tmp_path):
    # Control: the payload really runs under a plain unpickler.
    control_marker = tmp_path / "control-ran"
    torch.save({"w": torch.zeros(1), "x": _Payload(control_marker)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)["x"].close()
    assert control_marker.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert not marker.exists()
    message = str(e.value)
    assert "not plain tensors" in message and "NOT executed" in message and "safetensors" in message


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        read_checkpoint(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict of tensors"):
        read_checkpoint(path)


def test_missing_and_unexpected_keys_listed_together(timm_source, tmp_path):
    sd = dict(timm_source.state_dict())
    del sd["blocks.1.mlp.fc2.weight"], sd["norm.bias"]
    sd["extra.weight"] = torch.zeros(3)
    save_file(sd, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError) as e:
        _build(read_checkpoint(tmp_path / "broken.safetensors"))
    message = str(e.value)
    assert "2 missing keys" in message and "blocks.1.mlp.fc2.weight, norm.bias" in message  # sorted
    assert "1 unexpected keys" in message and "extra.weight" in message
    assert "\n" not in message


def test_long_key_lists_are_truncated_and_the_variant_named(tmp_path):
    deeper = create_model(model_config("test", 32, 5).with_(depth=12))
    save_file(deeper.state_dict(), tmp_path / "deep.safetensors")
    with pytest.raises(CheckpointError) as e:
        _build(read_checkpoint(tmp_path / "deep.safetensors"))
    message = str(e.value)
    assert "120 unexpected keys" in message and "... and 110 more" in message
    # Natural order: blocks.2 comes before blocks.10 (a plain sort would list blocks.10 first).
    assert "(in the checkpoint, not the model): blocks.2.attn.proj.bias, blocks.2.attn.proj.weight" in message
    assert "patch 8, dim 32, depth 12, which matches no supported variant" in message


def test_shape_mismatch_names_the_matching_variant(tmp_path):
    ti = create_model(model_config("ti16", 32, 5))  # dim 192, heads 3, patch 16
    save_file(ti.state_dict(), tmp_path / "ti.safetensors")
    with pytest.raises(CheckpointError) as e:
        _build(read_checkpoint(tmp_path / "ti.safetensors"))
    message = str(e.value)
    assert "shape mismatches" in message and "blocks.0.norm1.weight [192] vs [32]" in message
    assert "pass --model ti16" in message


def test_class_count_mismatch(hf_dir):
    ckpt = read_checkpoint(hf_dir)
    with pytest.raises(CheckpointError) as e:
        _build(ckpt, num_classes=10)
    message = str(e.value)
    assert "the checkpoint has 5 classes" in message and "--num-classes 5" in message
    assert "shape mismatches" not in message  # the class count explains the head; nothing else listed


def test_headless_checkpoint(timm_source, tmp_path):
    sd = {k: v for k, v in timm_source.state_dict().items() if not k.startswith("head.")}
    save_file(sd, tmp_path / "headless.safetensors")
    ckpt = read_checkpoint(tmp_path / "headless.safetensors")
    assert ckpt.num_classes is None
    with pytest.raises(CheckpointError, match="no classification head"):
        _build(ckpt)


def test_non_square_pos_embed(timm_source, tmp_path):
    sd = dict(timm_source.state_dict())
    sd["pos_embed"] = torch.zeros(1, 18, 32)  # class token + 17 positions (e.g. a distillation token)
    save_file(sd, tmp_path / "deit.safetensors")
    with pytest.raises(CheckpointError, match="not a class token plus a square grid"):
        read_checkpoint(tmp_path / "deit.safetensors")


@pytest.mark.parametrize(
    "spec", ["hf:google/vit-base-patch16-384", "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k"]
)
def test_hub_id_offline_fails_fast_and_clearly(monkeypatch, tmp_path, spec):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(spec)
    assert time.monotonic() - start < 10
    message = str(e.value)
    assert message.startswith(spec) and "offline" in message and "local" in message and "\n" not in message
    # No chained traceback for the CLI to show.
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)


def test_hub_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(CheckpointError, match="needs the huggingface_hub package.*local path"):
        read_checkpoint("hf:google/vit-base-patch16-224")


def test_bad_hub_id():
    with pytest.raises(CheckpointError, match="not a valid hub id"):
        read_checkpoint("hf:no-org")
