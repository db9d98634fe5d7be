"""End to end on the real ViT-B/16: the CLI export against Hugging Face transformers' ViT.

Hugging Face's implementation is independent of ours; it is randomly initialised at 224 and
saved to a local checkpoint folder, exported through the CLI at 224 and at 384 (position
embeddings resampled), and the ONNX logits are compared with HF's own forward pass
(``interpolate_pos_encoding=True`` at 384); and once with ``--dynamic-res 224:512``, checked at five
sizes and against HF at an upsampled, non-square size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import hf_logits, hf_vit

from vit_deploy.artifact import Artifact, read_manifest
from vit_deploy.images.synthetic import random_images
from vit_deploy.specs import Preprocessing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_b16_dir(tmp_path_factory) -> Path:
    model = hf_vit(image_size=224, num_labels=1000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, patch_size=16)
    path = tmp_path_factory.mktemp("hf") / "vit-b16-224"
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("res", [224, 384])
def test_b16_export_matches_hugging_face(hf_b16_dir, res, tmp_path, run_cli):
    out = tmp_path / f"b16-{res}"
    code, stdout, err = run_cli("export", "--model", "b16", "--res", str(res), "--weights", str(hf_b16_dir),
                                "--out", str(out))
    assert code == 0, err
    assert "PASS" in stdout and "NOT PRETRAINED" not in err
    manifest = read_manifest(out)
    Artifact(Path(out), manifest).verify()
    assert manifest["checkpoint"]["format"] == "hf" and manifest["checkpoint"]["pretrained"] is True
    assert manifest["model"]["layer_norm_eps"] == 1e-12  # taken from the HF config
    if res == 384:
        assert manifest["checkpoint"]["pos_embed_resampled_from"] == 14
    v = manifest["validation"]
    assert v["passed"] and v["metrics"]["rel_l2"] <= 1e-5 and v["metrics"]["max_abs"] <= 1e-4

    images = random_images(3, res, Preprocessing.from_dict(manifest["preprocessing"]), seed=7)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"images": images})[0]
    reference = hf_logits(hf_vit_cached(hf_b16_dir), images, interpolate=res != 224)
    rel_l2 = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    assert rel_l2 <= 1e-5 and np.abs(ours - reference).max() <= 1e-4


def test_b16_dynamic_export_passes_at_five_sizes_and_matches_hugging_face(hf_b16_dir, tmp_path, run_cli):
    """One --dynamic-res 224:512 export at --res 384 of the 224 checkpoint: parity with PyTorch at both ends,
    non-square sizes and the native one; one resampling from the checkpoint's 14x14 grid, as HF's."""
    out = tmp_path / "b16-dyn"
    code, stdout, err = run_cli("export", "--model", "b16", "--res", "384", "--dynamic-res", "224:512",
                                "--weights", str(hf_b16_dir), "--out", str(out))
    assert code == 0, err
    manifest = read_manifest(out)
    assert manifest["model"]["pos_grid"] == 14 and manifest["dynamic_resolution"]["native"] == 384
    v = manifest["validation"]
    sizes = [tuple(s) for s in v["image_sizes"]]
    assert sizes == [(384, 384), (224, 224), (512, 512), (224, 512), (368, 384)]
    assert v["passed"] and v["metrics"]["rel_l2"] <= 1e-5 and v["metrics"]["max_abs"] <= 1e-4
    prep = Preprocessing.from_dict(manifest["preprocessing"])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for (h, w), interpolate in (((448, 512), True), ((224, 224), False)):  # upsampled; the checkpoint's own size
        images = random_images(2, h, prep, seed=h, width=w)
        ours = session.run(None, {"images": images})[0]
        reference = hf_logits(hf_vit_cached(hf_b16_dir), images, interpolate=interpolate)
        assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) <= 1e-5


_cache: dict = {}


def hf_vit_cached(path: Path):
    from transformers import ViTForImageClassification

    if path not in _cache:
        _cache[path] = ViTForImageClassification.from_pretrained(path).eval()
    return _cache[path]
