"""vit_deploy.images.decode against references written out here: real photos from scikit-image's bundled
data, preprocessed by hand with PIL + numpy, and synthetic files with known pixel values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from vit_deploy.errors import UsageError
from vit_deploy.images.decode import find_images, load_batch, load_rgb, preprocess
from vit_deploy.specs import Preprocessing, model_config

SKIMAGE_DATA = Path(skimage.data.__file__).parent
CHELSEA = SKIMAGE_DATA / "chelsea.png"  # 451 x 300 RGB (landscape)
ROCKET = SKIMAGE_DATA / "rocket.jpg"  # 640 x 427 RGB JPEG
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def hand_preprocess(img: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int], resample, mean, std):
    """The reference: PIL resize to an explicit size, crop an explicit box, normalise in float32."""
    x = np.asarray(img.convert("RGB").resize(size, resample=resample).crop(box)).astype(np.float32) / 255.0
    x = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
    return x.transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------
# preprocess
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interp, resample", [
    ("bicubic", Image.Resampling.BICUBIC),
    ("bilinear", Image.Resampling.BILINEAR),
    ("nearest", Image.Resampling.NEAREST),
])
def test_preprocess_matches_hand_computation_on_a_photo(interp, resample):
    prep = Preprocessing(resize=256, crop=224, interpolation=interp, **IMAGENET)
    got = preprocess(load_rgb(CHELSEA), prep)
    # 451 x 300: shorter side 300 -> 256, longer int(256 * 451 / 300) = 384; crop offsets
    # ((384 - 224) / 2, (256 - 224) / 2) = (80, 16)
    want = hand_preprocess(Image.open(CHELSEA), (384, 256), (80, 16, 304, 240), resample, **IMAGENET)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_preprocess_portrait_and_odd_crop_offset():
    portrait = np.ascontiguousarray(load_rgb(CHELSEA).transpose(1, 0, 2))  # 300 wide x 451 high
    prep = Preprocessing(resize=33, crop=32, interpolation="bilinear", mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7))
    got = preprocess(portrait, prep)
    # width 300 -> 33, height int(33 * 451 / 300) = 49; offsets: left round(0.5) = 0, top round(8.5) = 8
    want = hand_preprocess(Image.fromarray(portrait), (33, 49), (0, 8, 32, 40), Image.Resampling.BILINEAR,
                           (0.2, 0.3, 0.4), (0.5, 0.6, 0.7))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_preprocess_jpeg_with_the_mini_model_preprocessing():
    prep = model_config("mini", 32, 10).preprocessing  # resize 32, crop 32, bicubic, mean = std = 0.5
    got = preprocess(load_rgb(ROCKET), prep)
    # 640 x 427 -> int(32 * 640 / 427) = 47 x 32; left offset round(7.5) = 8 (half to even)
    want = hand_preprocess(Image.open(ROCKET), (47, 32), (8, 0, 40, 32), Image.Resampling.BICUBIC,
                           (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.min() >= -1 and got.max() <= 1


def test_preprocess_normalises_each_channel():
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 0, 51
    prep = Preprocessing(resize=10, crop=8, **IMAGENET)
    got = preprocess(rgb, prep)
    want = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    for c in range(3):
        np.testing.assert_allclose(got[c], np.full((8, 8), want[c]), rtol=1e-6)


def test_preprocess_rejects_bad_input():
    prep = Preprocessing(resize=8, crop=8)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), np.float32), prep)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((8, 8), np.uint8), prep)
    with pytest.raises(UsageError, match="interpolation"):
        preprocess(np.zeros((8, 8, 3), np.uint8), Preprocessing(resize=8, crop=8, interpolation="cubic"))
    with pytest.raises(UsageError, match="crop"):
        preprocess(np.zeros((8, 8, 3), np.uint8), Preprocessing(resize=8, crop=16))


def test_load_batch_stacks_in_order(tmp_path):
    prep = Preprocessing(resize=40, crop=32, interpolation="bilinear")
    batch = load_batch([ROCKET, CHELSEA, ROCKET], prep)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], preprocess(load_rgb(CHELSEA), prep))
    np.testing.assert_array_equal(batch[0], batch[2])
    assert load_batch([], prep).shape == (0, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# load_rgb: decoding and mode conversion
# ---------------------------------------------------------------------------------------------


def test_load_rgb_photos_match_scikit_image():
    np.testing.assert_array_equal(load_rgb(CHELSEA), skimage.data.chelsea())
    rocket = load_rgb(str(ROCKET))  # str paths work too
    np.testing.assert_array_equal(rocket, skimage.data.rocket())
    assert rocket.dtype == np.uint8 and rocket.shape == (427, 640, 3)


def _save(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_grayscale_and_bilevel_are_replicated(tmp_path):
    gray = np.array([[0, 77, 255]], np.uint8)
    got = load_rgb(_save(tmp_path, Image.fromarray(gray), "g.png"))
    np.testing.assert_array_equal(got, np.stack([gray] * 3, axis=-1))
    bilevel = Image.fromarray(np.array([[True, False]])).convert("1")
    np.testing.assert_array_equal(load_rgb(_save(tmp_path, bilevel, "b.png")), [[[255] * 3, [0] * 3]])


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.array([[[200, 100, 0, 128], [0, 0, 0, 0], [10, 20, 30, 255]]], np.uint8)
    got = load_rgb(_save(tmp_path, Image.fromarray(rgba), "a.png"))
    # c * a / 255 + 255 * (255 - a) / 255: 200 -> 100.4 + 127 = 227.4, 100 -> 177.2, 0 -> 127
    np.testing.assert_array_equal(got, [[[227, 177, 127], [255, 255, 255], [10, 20, 30]]])

    la = np.array([[[200, 128], [50, 0], [50, 255]]], np.uint8)
    got = load_rgb(_save(tmp_path, Image.fromarray(la, "LA"), "la.png"))
    np.testing.assert_array_equal(got, [[[227] * 3, [255] * 3, [50] * 3]])


def test_palette_transparency_is_composited_on_white(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    path = _save(tmp_path, pal, "p.png", transparency=1)
    np.testing.assert_array_equal(load_rgb(path), [[[255, 0, 0], [255, 255, 255]]])
    opaque = _save(tmp_path, pal, "p_opaque.png")
    np.testing.assert_array_equal(load_rgb(opaque), [[[255, 0, 0], [0, 0, 255]]])


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16_bit_gray_is_scaled_not_clipped(tmp_path, fmt):
    values = np.array([[0, 128, 129, 257, 32768, 65535]], np.uint16)
    img = Image.fromarray(values)
    path = _save(tmp_path, img, f"g16.{fmt}")
    assert Image.open(path).mode.startswith("I;16")
    # round(v * 255 / 65535) = round(v / 257)
    np.testing.assert_array_equal(load_rgb(path)[..., 0], [[0, 0, 1, 1, 128, 255]])
    assert (load_rgb(path) == load_rgb(path)[..., :1]).all()


def test_32_bit_integer_gray_is_taken_as_16_bit(tmp_path):
    path = _save(tmp_path, Image.fromarray(np.array([[0, 32768, 65535]], np.int32)), "i32.tif")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(load_rgb(path)[..., 1], [[0, 128, 255]])
    bad = _save(tmp_path, Image.fromarray(np.array([[0, 70000]], np.int32)), "i32_big.tif")
    with pytest.raises(UsageError, match="i32_big.tif"):
        load_rgb(bad)


def test_float_gray(tmp_path):
    unit = _save(tmp_path, Image.fromarray(np.array([[0, 0.25, 1]], np.float32)), "f_unit.tif")
    np.testing.assert_array_equal(load_rgb(unit)[..., 2], [[0, 64, 255]])  # 63.75 -> 64
    byte = _save(tmp_path, Image.fromarray(np.array([[0, 100.4, 255]], np.float32)), "f_byte.tif")
    np.testing.assert_array_equal(load_rgb(byte)[..., 0], [[0, 100, 255]])
    odd = _save(tmp_path, Image.fromarray(np.array([[-1, 2]], np.float32)), "f_odd.tif")
    with pytest.raises(UsageError, match="f_odd.tif"):
        load_rgb(odd)


def test_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (3, 1))
    for x, v in enumerate([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)]):
        cmyk.putpixel((x, 0), v)
    got = load_rgb(_save(tmp_path, cmyk, "c.tif"))
    np.testing.assert_array_equal(got, [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]])


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((2, 3, 3), np.uint8)  # 3 wide, 2 high; a red top-left pixel
    stored[0, 0] = (255, 0, 0)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90 degrees clockwise
    got = load_rgb(_save(tmp_path, img, "o.png", exif=exif))
    np.testing.assert_array_equal(got, np.rot90(stored, k=-1))  # red ends up top right
    assert got.shape == (3, 2, 3) and tuple(got[0, 1]) == (255, 0, 0)


def test_first_frame_of_an_animation(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(load_rgb(path), np.full((4, 4, 3), (255, 0, 0), np.uint8))


# ---------------------------------------------------------------------------------------------
# load_rgb: errors name the file
# ---------------------------------------------------------------------------------------------


def test_truncated_png(tmp_path):
    data = CHELSEA.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"cannot read image .*cut\.png"):
        load_rgb(path)


def test_corrupt_png_data(tmp_path):
    data = bytearray(CHELSEA.read_bytes())
    start = data.index(b"IDAT") + 100
    data[start:start + 100] = b"\x00" * 100  # inside the compressed pixel data
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=r"cannot read image .*bad\.png"):
        load_rgb(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    with pytest.raises(UsageError, match=r"notes\.jpg.*not an image"):
        load_rgb(path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UsageError, match=r"empty\.png"):
        load_rgb(empty)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.png does not exist"):
        load_rgb(tmp_path / "nope.png")
    with pytest.raises(UsageError, match="folder"):
        load_rgb(tmp_path)
    with pytest.raises(UsageError, match=r"nope\.png"):
        load_batch([CHELSEA, tmp_path / "nope.png"], Preprocessing(resize=8, crop=8))


# ---------------------------------------------------------------------------------------------
# find_images
# ---------------------------------------------------------------------------------------------


def test_find_images(tmp_path):
    for rel in ["b.png", "a/z.JPG", "a/y.webp", "c.txt", ".hidden/x.png", "a/.x.png", "d.tiff", "a/b/c.gif"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert got == ["a/b/c.gif", "a/y.webp", "a/z.JPG", "b.png", "d.tiff"]
    # a list: order kept, explicit files kept whatever their extension, duplicates dropped
    got = find_images([tmp_path / "c.txt", tmp_path / "a", str(tmp_path / "a" / "y.webp")])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["c.txt", "a/b/c.gif", "a/y.webp", "a/z.JPG"]
    with pytest.raises(UsageError, match="does not exist"):
        find_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no image files"):
        find_images(tmp_path / "empty")
