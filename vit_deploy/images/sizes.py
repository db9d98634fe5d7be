"""Which size an image takes in a dynamic-resolution artifact, and the preprocessing at that size.

Two rules, each used where it belongs:

* :func:`preprocessing_at`: the manifest's preprocessing moved to another square size, for
  evaluation sets (validation, calibration, accuracy at 224/288/384): the center crop is the new
  size and the resize keeps the manifest's crop fraction (``resize = floor(side * resize / crop)``,
  timm's ``crop_pct`` rule), so 248/224 at 224 becomes 318/288 at 288 and 425/384 at 384.
* :func:`fit_size`: ``predict``'s policy for one photograph: keep its aspect ratio, scale the
  shorter side to a chosen size, round both sides to the patch grid (and into the artifact's
  range); the whole image is then resized to that size (``decode.resize_to``), nothing cropped.
"""

from __future__ import annotations

from dataclasses import replace

from ..specs import Preprocessing, ResolutionRange


def preprocessing_at(prep: Preprocessing, side: int) -> Preprocessing:
    """``prep`` with a ``side`` x ``side`` center crop and the resize that keeps its crop fraction (integer floor)."""
    if side == prep.crop:
        return prep
    return replace(prep, crop=side, resize=max(side, side * prep.resize // prep.crop))


def fit_size(height: int, width: int, short_side: int, sizes: ResolutionRange) -> tuple[int, int, str]:
    """(new height, new width, what was done in words) for an image of ``height`` x ``width``.

    The shorter side goes to ``short_side`` and the longer one keeps the aspect ratio; both are then
    rounded to the nearest multiple of the patch size and clamped into ``sizes`` (a clamp changes the
    aspect ratio, and the words say so).
    """
    scale = short_side / min(height, width)
    step = sizes.step

    def snap(value: float) -> tuple[int, bool]:
        rounded = max(step, round(value / step) * step)
        clamped = min(sizes.max, max(sizes.min, rounded))
        return clamped, clamped != rounded

    (new_h, clamped_h), (new_w, clamped_w) = snap(height * scale), snap(width * scale)
    said = (f"resized {width}x{height} (WxH) to {new_w}x{new_h}: shorter side to {short_side}, aspect kept, "
            f"sides rounded to multiples of {step}")
    if clamped_h or clamped_w:
        said += f", clamped into {sizes.min}..{sizes.max} (aspect changed)"
    return new_h, new_w, said
