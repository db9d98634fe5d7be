"""images/sizes.py and the sized side of images/sets.py: preprocessing at other sizes, predict's resize policy."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import PHOTOS
from PIL import Image

from vit_deploy.images.decode import load_rgb, preprocess, resize_to
from vit_deploy.images.sets import load_image_set
from vit_deploy.images.sizes import fit_size, preprocessing_at
from vit_deploy.specs import Preprocessing, ResolutionRange

AUGREG = Preprocessing(resize=248, crop=224)  # the real ViT-Ti's: crop_pct 0.9 at 224


@pytest.mark.parametrize(("side", "resize"), [(224, 248), (288, 318), (384, 425), (160, 177)])
def test_preprocessing_at_keeps_the_crop_fraction_with_timms_floor(side, resize):
    at = preprocessing_at(AUGREG, side)
    assert (at.crop, at.resize) == (side, resize)  # floor(side * 248 / 224)
    assert (at.mean, at.std, at.interpolation) == (AUGREG.mean, AUGREG.std, AUGREG.interpolation)


SIZES = ResolutionRange(min=224, max=512, step=16, native=384)


@pytest.mark.parametrize(("hw", "short", "expected", "clamped"), [
    ((480, 640), 384, (384, 512), False),  # 4:3 landscape: 384 x 512 exactly
    ((640, 480), 384, (512, 384), False),
    ((375, 500), 224, (224, 304), False),  # 298.67 rounds to 304 (nearest multiple of 16)
    ((300, 1200), 384, (384, 512), True),  # 1536 clamped to 512: the aspect changes, and it says so
    ((100, 100), 300, (304, 304), False),
])
def test_fit_size_keeps_the_aspect_and_rounds_to_the_patch_grid(hw, short, expected, clamped):
    h, w, said = fit_size(*hw, short, SIZES)
    assert (h, w) == expected and h % 16 == 0 and w % 16 == 0
    assert f"shorter side to {short}" in said and "multiples of 16" in said
    assert ("clamped into 224..512" in said) is clamped


def test_resize_to_matches_pil_resize_and_normalization():
    rgb = load_rgb(_photo())
    out = resize_to(rgb, 48, 64, AUGREG)
    pil = np.asarray(Image.fromarray(rgb).resize((64, 48), Image.Resampling.BICUBIC)).astype(np.float32) / 255
    np.testing.assert_allclose(out, ((pil - 0.5) / 0.5).transpose(2, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        resize_to(rgb.astype(np.float32), 48, 64, AUGREG)


def _photo():
    import skimage

    return f"{skimage.data_dir}/chelsea.png"


def test_an_image_set_at_several_sizes_is_each_image_preprocessed_at_each_size():
    prep = Preprocessing(resize=36, crop=32)
    one = load_image_set(str(PHOTOS), prep, count=3, seed=1)
    several = load_image_set(str(PHOTOS), prep, count=3, seed=1, sizes=[32, 16, (24, 40), 48])
    assert several.sizes == [(32, 32), (16, 16), (24, 40), (48, 48)] and one.sizes == [(32, 32)]
    np.testing.assert_array_equal(several.at(32), one.images)
    assert several.digest != one.digest  # a calibration at other sizes never reuses these ranges
    assert load_image_set(str(PHOTOS), prep, count=3, seed=1, sizes=[32]).digest == one.digest
    for side in (16, 48):  # square: the manifest's center crop, moved to the size
        expected = np.stack([preprocess(load_rgb(f), preprocessing_at(prep, side)) for f in several.files])
        np.testing.assert_array_equal(several.at(side), expected)
    # non-square: the whole photo resized (a center crop is square)
    np.testing.assert_array_equal(several.at(24, 40), np.stack([resize_to(load_rgb(f), 24, 40, prep)
                                                                for f in several.files]))
    assert [a.shape[-2:] for a in several.per_size()] == [(32, 32), (16, 16), (24, 40), (48, 48)]
    assert several.summary()["sizes"] == [[32, 32], [16, 16], [24, 40], [48, 48]] and "sizes" not in one.summary()
    with pytest.raises(ValueError, match="sizes="):
        one.at(48)
