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
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import UsageError
from ..specs import Preprocessing

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

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB (conversion rules: see the module docstring).

    Raises ``UsageError`` naming the file when it is missing, not an image, truncated or
    corrupt, or in a mode with no defined RGB conversion.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"image {path} does not exist; check the path")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image file; pass the image files (or use find_images)")
    return _decode(path, path)


def decode_rgb(data: bytes, name: str = "uploaded image") -> np.ndarray:
    """:func:`load_rgb` for encoded image bytes (an HTTP upload, a message payload)."""
    import io

    return _decode(io.BytesIO(data), Path(name))


def _decode(source: Path | Any, path: Path) -> np.ndarray:
    try:
        with Image.open(source) as img:
            img.load()  # decode now: truncated or corrupt data fails here, not later
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, path)
    except UsageError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, zlib.error, ...
        reason = str(e) or type(e).__name__
        if isinstance(e, Image.UnidentifiedImageError):
            reason = "not an image file Pillow can read"
        raise UsageError(
            f"cannot read image {path}: {reason}; check that the file is a complete image "
            f"({', '.join(IMAGE_EXTENSIONS)})"
        ) from e


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
        rgba = np.asarray(img.convert("RGBA")).astype(np.uint32)
        alpha = rgba[..., 3:]
        # c * a + white * (1 - a) in integers; the exact quotient never ends in .5, so no ties
        blended = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
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
    resample = RESAMPLE.get(prep.interpolation)
    if resample is None:
        raise UsageError(
            f"unknown interpolation {prep.interpolation!r}; choose one of: {', '.join(RESAMPLE)}"
        )
    if prep.crop > prep.resize:
        raise UsageError(f"preprocessing crops {prep.crop} px from images resized to {prep.resize} px; crop <= resize")
    if prep.channel_order != "RGB" or prep.layout != "NCHW":
        raise UsageError(f"unsupported preprocessing {prep.channel_order}/{prep.layout}; only RGB/NCHW")

    h, w = rgb.shape[:2]
    if min(h, w) == 0:
        raise ValueError(f"preprocess got an empty image of shape {list(rgb.shape)}")
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = prep.resize, int(prep.resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    img = Image.fromarray(np.ascontiguousarray(rgb))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=resample)
    top = int(round((new_h - prep.crop) / 2.0))
    left = int(round((new_w - prep.crop) / 2.0))
    pixels = np.asarray(img)[top:top + prep.crop, left:left + prep.crop]

    x = pixels.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


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


def find_images(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The image files named by ``sources``: a folder, a file, or a list of folders and files.

    Folders are searched recursively for files with an image extension (``IMAGE_EXTENSIONS``,
    any case), skipping hidden files and folders (names starting with "."), sorted by their
    path relative to the folder; a file named explicitly is kept whatever its extension
    (``load_rgb`` judges it). Order follows ``sources``; duplicates are dropped. Raises
    ``UsageError`` for a path that does not exist or when no image is found.
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
                if p.is_file() and is_image_file(p)
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            ]
            files.sort(key=lambda p: p.relative_to(root).as_posix())
        elif root.is_file():
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
