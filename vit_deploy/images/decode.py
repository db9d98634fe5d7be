"""Image files -> model input: the one place that decodes and preprocesses images.

Calibration, parity checks and prediction all read images through here, so every step sees
exactly the same pixels. Pillow only (no torchvision): the geometry follows torchvision's
``Resize(int)`` + ``CenterCrop`` on PIL images, which is what timm's eval transform runs.

Decoding rules of :func:`load_rgb` (each picks one of several reasonable conventions):

* EXIF orientation is applied (``ImageOps.exif_transpose``): the model sees the picture the
  way an image viewer shows it, as Hugging Face's ``load_image`` does; timm's loader ignores it.
* Transparency (RGBA, LA, PA, palette or colour-key transparency) is composited onto **white**,
  not dropped. Dropping alpha exposes whatever colour the encoder left under transparent
  pixels (often black, sometimes garbage), so two files that look identical could give
  different predictions; white is what viewers and browsers show, and what Hugging Face's
  ``convert_to_rgb`` does.
* 16-bit grayscale (``I;16*``, and ``I``, which is how Pillow has opened 16-bit PNG/PGM files)
  is scaled ``round(v * 255 / 65535)``: 65535 -> 255, 32768 -> 128. Values outside
  0..65535 in an ``I`` image have no known scale and are an error. Pillow itself decodes
  16-bit *RGB(A)* files to 8 bits by keeping the high byte (``v >> 8``), at most one level
  off the rounded value; Pillow gives no access to the full values.
* Float images (``F``) in [0, 1] are scaled by 255; in [0, 255] they are taken as they are
  (Pillow's own convention for ``F``); any other range, or NaN/inf, is an error.
* Grayscale and 1-bit images are replicated to three channels; CMYK, YCbCr and other modes
  use Pillow's ``convert("RGB")`` (no ICC colour management).
* Multi-frame files (GIF, WebP animations, multi-page TIFF) give their first frame.
* Size bounds, checked on the header before any pixel is decoded: at most ``MAX_PIXELS`` pixels
  (80 MP: above the largest common camera sensors, small enough that decoding stays near 1 GB)
  and an aspect ratio of at most ``MAX_ASPECT`` (100:1). A 370-byte PNG can claim 1 x 100000
  pixels, and a centre crop of such a strip is no photograph the model was trained on.
* Only regular files are opened (:mod:`.files`): a device or FIFO named as an image is refused.

:func:`preprocess` resizes the whole image only when the result is small (ordinary photographs,
bit-identical to torchvision's ``Resize`` + ``CenterCrop``); a very elongated image is cropped
first (see :func:`_resized_window`), so its cost is bounded by the crop, not by the resized length.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from ..errors import UsageError
from ..specs import Preprocessing
from .files import not_regular, open_regular

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Preprocessing.interpolation -> PIL resample filter (the names of HF's and timm's configs).
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# Pillow's filter supports (Resample.c), in source pixels at scale 1; nearest samples one pixel.
_SUPPORT = {"nearest": 0.0, "box": 0.5, "bilinear": 1.0, "hamming": 1.0, "bicubic": 2.0, "lanczos": 3.0}

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

MAX_PIXELS = 80_000_000
MAX_ASPECT = 100
# preprocess resizes the whole image while the result has at most this many pixels (48 MiB as RGB
# bytes; a square photo at the largest resize, 4096, is exactly this), so every ordinary photo and
# panorama is bit-identical to torchvision's Resize + CenterCrop; beyond it (a very elongated image
# at a large resize, or a strip handed to preprocess directly) only the window the crop keeps is resized.
FULL_RESIZE_PIXELS = 1 << 24


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB (conversion rules: see the module docstring).

    Raises ``UsageError`` naming the file when it is missing, not a regular file, not an image,
    truncated or corrupt, over the size bounds, or in a mode with no defined RGB conversion.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"image {path} does not exist; check the path")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image file; pass the image files (or use find_images)")
    try:
        f = open_regular(path, "image")
    except OSError as e:
        raise UsageError(f"cannot read image {path}: {e.strerror or e}; check the path and its permissions") from e
    with f:
        return _decode(f, path)


def decode_rgb(data: bytes | BinaryIO, name: str = "uploaded image") -> np.ndarray:
    """:func:`load_rgb` for encoded image bytes (an HTTP upload, a message payload) or an open binary file."""
    return _decode(io.BytesIO(data) if isinstance(data, bytes) else data, Path(name))


def _decode(source: BinaryIO, path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89.5 MP on; _check_size refuses those images anyway, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            _check_size(img.size, path)  # the header's size, before a pixel is decoded
            img.load()  # decode now: truncated or corrupt data fails here, not later
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, path)
    except UsageError:
        raise
    except Image.DecompressionBombError as e:  # over twice Pillow's own bound: refused inside Image.open
        raise UsageError(f"image {path} is too large to decode ({e}); this tool reads images of at most "
                         f"{MAX_PIXELS / 1e6:.0f} megapixels: downscale it first") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, zlib.error, MemoryError, ...
        reason = str(e) or type(e).__name__
        if isinstance(e, Image.UnidentifiedImageError):
            reason = "not an image file Pillow can read"
        raise UsageError(
            f"cannot read image {path}: {reason}; check that the file is a complete image "
            f"({', '.join(IMAGE_EXTENSIONS)})"
        ) from e


def _check_size(size: tuple[int, int], path: Path) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise UsageError(f"image {path} is {w} x {h} pixels: it has no pixels; pass a real image")
    if w * h > MAX_PIXELS:
        raise UsageError(f"image {path} is {w} x {h} = {w * h / 1e6:.1f} megapixels, over the limit of "
                         f"{MAX_PIXELS / 1e6:.0f}; downscale it first (the model sees a few hundred pixels)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise UsageError(f"image {path} is {w} x {h} pixels, an aspect ratio of {max(w, h) / min(w, h):.0f}:1, "
                         f"over the limit of {MAX_ASPECT}:1; crop it to the part the model should see")


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(img).astype(np.float64)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise UsageError(
                f"cannot read image {path}: 32-bit integer pixels in [{values.min():.0f}, {values.max():.0f}] "
                "have no known scale (expected 16-bit values 0..65535); convert it to 8-bit RGB"
            )
        return _gray_to_rgb(np.rint(values * (255.0 / 65535.0)))
    if mode == "F":
        values = np.asarray(img).astype(np.float64)
        if values.size and not np.isfinite(values).all():
            raise UsageError(f"cannot read image {path}: float pixels include NaN or inf; convert it to 8-bit RGB")
        lo, hi = (values.min(), values.max()) if values.size else (0.0, 0.0)
        if lo >= 0 and hi <= 1:
            return _gray_to_rgb(np.rint(values * 255.0))
        if lo >= 0 and hi <= 255:
            return _gray_to_rgb(np.rint(values))
        raise UsageError(
            f"cannot read image {path}: float pixels in [{lo:g}, {hi:g}] have no known scale "
            "(expected [0, 1] or [0, 255]); convert it to 8-bit RGB"
        )
    if img.has_transparency_data:
        rgba = np.asarray(img.convert("RGBA")).astype(np.uint16)
        alpha = rgba[..., 3:]
        # c * a + white * (1 - a) in integers; the exact quotient never ends in .5, so no ties.
        # c * a + 255 * (255 - a) + 127 <= 255 * 255 + 127 fits uint16: a quarter of uint32's memory
        blended = (rgba[..., :3] * alpha + np.uint16(255) * (np.uint16(255) - alpha) + np.uint16(127)) // 255
        return np.ascontiguousarray(blended.astype(np.uint8))
    try:
        rgb = img.convert("RGB")
    except ValueError as e:
        raise UsageError(f"cannot read image {path}: no conversion from mode {mode} to RGB; convert it to RGB") from e
    return np.array(rgb, dtype=np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    g = np.clip(gray, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=-1))


def preprocess(rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``float32 [3, crop, crop]`` as ``prep`` describes.

    Resize the shorter side to ``prep.resize`` (the longer one to ``int(resize * long / short)``,
    torchvision's rule) with ``prep.interpolation`` via PIL (antialiased when shrinking), crop
    the center ``crop`` x ``crop`` (offsets ``round((size - crop) / 2)``), divide by 255,
    subtract ``mean`` and divide by ``std`` per channel, all in float32; channels first.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        desc = f"{rgb.dtype} {list(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"preprocess expects a uint8 [H, W, 3] RGB array (load_rgb's output), got {desc}")
    # the interpolation name, crop <= resize and RGB/NCHW were checked when ``prep`` was made
    # (specs.check_preprocessing runs in Preprocessing.__post_init__)
    resample = RESAMPLE[prep.interpolation]

    h, w = rgb.shape[:2]
    if min(h, w) == 0:
        raise ValueError(f"preprocess got an empty image of shape {list(rgb.shape)}")
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = prep.resize, int(prep.resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    top = int(round((new_h - prep.crop) / 2.0))
    left = int(round((new_w - prep.crop) / 2.0))
    if new_w * new_h > FULL_RESIZE_PIXELS:
        pixels = _resized_window(rgb, (new_w, new_h), (left, top), prep.crop, prep.interpolation)
    else:
        img = Image.fromarray(np.ascontiguousarray(rgb))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample=resample)
        pixels = np.asarray(img)[top:top + prep.crop, left:left + prep.crop]
    return _normalized(pixels, prep)


def resize_to(rgb: np.ndarray, height: int, width: int, prep: Preprocessing) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``float32 [3, height, width]``: the whole image resized (no crop) with
    ``prep.interpolation``, then scaled and normalized as :func:`preprocess` does.

    The input of a dynamic-resolution artifact at a size chosen per image (``images.sizes.fit_size``
    keeps the aspect ratio up to the rounding to the patch grid).
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or \
            min(rgb.shape[:2]) == 0:
        desc = f"{rgb.dtype} {list(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"resize_to expects a non-empty uint8 [H, W, 3] RGB array (load_rgb's output), got {desc}")
    img = Image.fromarray(np.ascontiguousarray(rgb))
    if img.size != (width, height):
        img = img.resize((width, height), resample=RESAMPLE[prep.interpolation])
    return _normalized(np.asarray(img), prep)


def _normalized(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W]: divide by 255, subtract the mean, divide by the std (float32)."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _resized_window(
    rgb: np.ndarray, new_size: tuple[int, int], offset: tuple[int, int], crop: int, interpolation: str,
) -> np.ndarray:
    """The ``crop`` x ``crop`` window at ``offset`` of ``rgb`` resized to ``new_size``, from the source
    region that window reads (plus the filter's support), not from the whole resized image.

    It runs Pillow's two passes one axis at a time, in the order Pillow picks for the whole resize
    (Resample.c: vertical first when the height shrinks more than twice as much as the width), with
    the same scales; each pass resizes only the window through Pillow's ``box``. Pillow takes box
    corners as float32, so a sample point can move by about 1e-7 pixels against the whole resize:
    where a pixel's weights or a nearest-neighbour choice sit exactly on a rounding boundary, a value
    differs by one or two levels (or, for nearest and box, comes from the neighbouring pixel). The tests
    measure this on photographs; it only runs for images too elongated to resize whole.
    """
    h, w = rgb.shape[:2]
    new_w, new_h = new_size
    left, top = offset
    support = _SUPPORT[interpolation]
    x0, x1, bx0, bx1 = _source_span(left, crop, w, new_w, support)
    y0, y1, by0, by1 = _source_span(top, crop, h, new_h, support)
    img = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    resample = RESAMPLE[interpolation]

    def horizontal(im: Image.Image) -> Image.Image:
        return im.resize((crop, im.height), resample, box=(bx0, 0, bx1, im.height)) if new_w != w else im

    def vertical(im: Image.Image) -> Image.Image:
        return im.resize((im.width, crop), resample, box=(0, by0, im.width, by1)) if new_h != h else im

    vertical_first = h - new_h > 0 and h - new_h > (w - new_w) * 2
    img = horizontal(vertical(img)) if vertical_first else vertical(horizontal(img))
    return np.asarray(img)  # crop x crop: an axis left at its size was cut to the window by _source_span


def _source_span(start: int, length: int, size: int, new_size: int, support: float) -> tuple[int, int, float, float]:
    """Source pixels [a, b) that output pixels [start, start + length) of a ``size`` -> ``new_size`` resize
    read, and those outputs' edges in that region's coordinates (Pillow's box)."""
    if new_size == size:
        return start, start + length, 0.0, float(length)
    scale = size / new_size
    lo, hi = start * scale, (start + length) * scale
    margin = support * max(scale, 1.0) + 1  # Pillow's support in source pixels, +1 for its rounding
    a, b = max(0, math.floor(lo - margin)), min(size, math.ceil(hi + margin))
    return a, b, lo - a, hi - a


def load_image(path: str | os.PathLike, prep: Preprocessing) -> np.ndarray:
    """``preprocess(load_rgb(path), prep)``: one file -> ``float32 [3, crop, crop]``."""
    return preprocess(load_rgb(path), prep)


def load_batch(paths: Iterable[str | os.PathLike], prep: Preprocessing) -> np.ndarray:
    """Image files -> ``float32 [N, 3, crop, crop]`` in the given order (N may be 0)."""
    arrays = [load_image(p, prep) for p in paths]
    if not arrays:
        return np.zeros((0, 3, prep.crop, prep.crop), dtype=np.float32)
    return np.stack(arrays)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _is_regular(path: Path, what: str) -> bool:
    """True for a regular file; False for a folder or a dangling link (a folder scan passes over
    them); a device, FIFO or socket is refused, naming it: it was put there, and reading it would hang."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return stat.S_ISREG(mode)
    raise not_regular(path, mode, what)


def find_images(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The image files named by ``sources``: a folder, a file, or a list of folders and files.

    Folders are searched recursively for files with an image extension (``IMAGE_EXTENSIONS``,
    any case), skipping hidden files and folders (names starting with "."), sorted by their
    path relative to the folder; a file named explicitly is kept whatever its extension
    (``load_rgb`` judges it). Order follows ``sources``; duplicates are dropped. Raises
    ``UsageError`` for a path that does not exist, for a device, FIFO or socket (named or found in
    a folder), and when no image is found.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    roots = [Path(s) for s in sources]
    found: list[Path] = []
    seen: set[Path] = set()
    for root in roots:
        if root.is_dir():
            files = [
                p for p in root.rglob("*")
                if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
                and _is_regular(p, "image")
            ]
            files.sort(key=lambda p: p.relative_to(root).as_posix())
        elif root.exists():
            _is_regular(root, "image path")
            files = [root]
        else:
            raise UsageError(f"image path {root} does not exist; pass image files or folders of images")
        for p in files:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                found.append(p)
    if not found:
        what = str(roots[0]) if len(roots) == 1 else f"{len(roots)} paths"
        raise UsageError(
            f"no image files found in {what}; looked for {', '.join(IMAGE_EXTENSIONS)} (any case)"
        )
    return found
