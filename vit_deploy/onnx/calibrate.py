"""Activation statistics for INT8 calibration, collected batch by batch, and the ranges chosen from them.

Two passes over the calibration images on ONNX Runtime, each holding one batch of the watched
tensors at a time (the graph is rewritten to expose them as outputs), so memory follows the
batch, not the set:

Both passes read one ONNX Runtime session (``Tap``).

1. ``channel_absmax``: the largest |x| per channel (last axis) of each watched tensor, which
   SmoothQuant needs (its maximum over channels is the tensor's range), and a sample of rows
   to choose the SmoothQuant strength with.
2. ``histograms``: a histogram of |x| per tensor (divided by its SmoothQuant scales) over the fixed
   range [0, amax] found by pass 1,
   so the result does not depend on the batch size or the image order (unlike a calibrator that
   widens its range as batches arrive).

A dynamic-resolution graph is calibrated at several sizes: ``images`` may be one array per size
(``Images``). Every statistic is over all of them; each run holds one size, and the SmoothQuant
sample takes its images from every size alike.

From a histogram, ``choose_amax`` picks the clipping range of a symmetric scale for a quantized
format (``formats.py``): ``minmax`` (no clipping), ``percentile``, ``entropy`` (TensorRT's INT8
KL-divergence rule) or ``mse`` (the range that minimises the expected squared error: clipping plus
the format's own rounding noise, uniform for INT8, relative to the value for FP8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx

from ..batching import batches
from .export import INPUT_NAME
from .formats import INT8, QuantFormat
from .graph import exposing as _exposing

HISTOGRAM_BINS = 2048
RUN_TOKENS = 1200  # tokens per calibration run (16 px patches): batch 6 at 224 px, 2 at 384
PERCENTILE = 99.999
ENTROPY_STRIDE = 4  # candidate clips every 4 bins: 480 KL evaluations per tensor instead of 1,920
MSE_FLOAT_STRIDE = 4  # FP8's rounding error is computed at every 4th candidate clip (it is smooth in the clip)
SAMPLE_IMAGES = 32  # rows kept per tensor for choosing SmoothQuant strengths: 32 images x (4 + 64) tokens
SAMPLE_ROWS = 64
SAMPLE_TOP_ROWS = 4

Images = np.ndarray | Sequence[np.ndarray]  # float32 [N, 3, H, W], or one such array per image size


def image_arrays(images: Images) -> list[np.ndarray]:
    """``images`` as a list of arrays, one per size (a single array is one size)."""
    return [images] if isinstance(images, np.ndarray) else list(images)


def image_count(images: Images) -> int:
    return sum(len(a) for a in image_arrays(images))


class Tap:
    """One ONNX Runtime session over the model with the watched tensors exposed as outputs.

    Both calibration passes read the same session (a b16 graph is 350 MB; a second session, or a
    second graph for the smoothed model, is what used to push calibration past 3 GB).
    """

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # the watched tensors must exist as they are in the graph, not fused away
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.tensors = list(dict.fromkeys(tensors))
        self.session = ort.InferenceSession(_exposing(model, self.tensors), options,
                                            providers=["CPUExecutionProvider"])

    def batches(
        self, images: Images, batch: int, tick: Callable[[int], None] | None = None,
    ) -> Iterable[tuple[int, int, dict[str, np.ndarray]]]:
        """(which array, index of the batch's first image in it, the watched tensors' values) per batch."""
        for which, array in enumerate(image_arrays(images)):
            # every watched tensor of a batch is held at once (b16 at 384: ~150 MB per image), so the run
            # batch is capped by tokens; the statistics do not depend on it, only the memory does
            tokens = max(int(np.prod(array.shape[2:])) // 256, 1)  # ~ patches at 16 px
            size = max(1, min(batch, RUN_TOKENS // tokens))
            for i, chunk in enumerate(batches(array, size)):
                values = self.session.run(self.tensors, {INPUT_NAME: chunk})
                if tick is not None:
                    tick(len(chunk))
                yield which, i * size, dict(zip(self.tensors, values, strict=True))


def _per_channel_absmax(value: np.ndarray) -> np.ndarray:
    """max |x| per channel: axis 1 of an image-like [N, C, H, W] tensor (the patch embedding's input,
    whose last axis is the width and changes with the size), else the last axis ([N, tokens, C])."""
    if value.ndim == 4:
        return np.abs(value).max(axis=(0, 2, 3))
    return np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)


def channel_absmax(
    tap: Tap, images: Images, batch: int, tick: Callable[[int], None] | None = None,
    sampled: Sequence[str] = (), key_row: int | None = None, key_share: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """max |x| per channel (``_per_channel_absmax``) of each tensor over all images, and for the tensors in
    ``sampled`` a weighted sample of their rows: (rows, weights).

    The sample takes, from each of the first ``SAMPLE_IMAGES`` images (shared out among the sizes when
    there are several), the ``SAMPLE_TOP_ROWS`` rows
    with the largest |x| (weight 1) and ``SAMPLE_ROWS`` of the others at random (weighted by how
    many rows each stands for). A trained ViT keeps its largest activations in a few tokens
    (ViT-Ti: 4 of 197, the corner patches); a uniform sample misses them, and with them the error
    that decides the SmoothQuant strength. Rows are picked by the image's index, so the sample
    does not depend on the batch size.

    ``key_row``: a row of every [batch, rows, channels] tensor that always joins the sample and
    carries ``key_share`` of each image's weight (the class token: the one row that reaches the
    head, 1 of 197, which a sample weighted by row count would all but ignore).
    """
    absmax: dict[str, np.ndarray] = {}
    rows_of: dict[str, list[np.ndarray]] = {name: [] for name in sampled}
    weights_of: dict[str, list[np.ndarray]] = {name: [] for name in sampled}
    per_array = max(SAMPLE_IMAGES // len(image_arrays(images)), 1)
    for which, start, outputs in tap.batches(images, batch, tick):
        for name, value in outputs.items():
            m = _per_channel_absmax(value)
            absmax[name] = m if name not in absmax else np.maximum(absmax[name], m)
            if name not in rows_of:
                continue
            keyed = key_row is not None and value.ndim == 3
            for offset, rows in enumerate(value[: max(per_array - start, 0)]):
                rows = rows.reshape(-1, value.shape[-1])
                order = np.argsort(-np.abs(rows).max(axis=1), kind="stable")
                if keyed:
                    order = order[order != key_row]
                top, others = order[:SAMPLE_TOP_ROWS], order[SAMPLE_TOP_ROWS:]
                seed = start + offset if which == 0 else [which, start + offset]
                picked = np.random.default_rng(seed).permutation(others)[:SAMPLE_ROWS]
                weights = np.concatenate([np.ones(len(top)), np.full(len(picked), len(others) / max(len(picked), 1))])
                chosen = np.concatenate([top, picked])
                if keyed:  # the key row weighs key_share of the image: w / (total + w) = key_share
                    chosen = np.append(chosen, key_row)
                    weights = np.append(weights, key_share / (1 - key_share) * weights.sum())
                rows_of[name].append(rows[chosen])
                weights_of[name].append(weights.astype(np.float32))
    samples = {name: (np.concatenate(rows_of[name]), np.concatenate(weights_of[name]))
               for name in sampled if rows_of[name]}
    return absmax, samples


def histograms(
    tap: Tap, amax: dict[str, float], images: Images, batch: int,
    tick: Callable[[int], None] | None = None, divisors: dict[str, np.ndarray] | None = None,
    bins: int = HISTOGRAM_BINS,
) -> dict[str, np.ndarray]:
    """Histogram of |x / divisor| over [0, amax[name]] for each tensor named in ``amax``.

    ``divisors``: per-channel SmoothQuant scales: the smoothed graph's tensor is the original one
    divided by them, so the original graph's session serves both passes.
    """
    counts = {name: np.zeros(bins, dtype=np.int64) for name in amax}
    divisors = divisors or {}
    for _, _, outputs in tap.batches(images, batch, tick):
        for name in amax:
            value = outputs[name] / divisors[name] if name in divisors else outputs[name]
            counts[name] += np.histogram(np.abs(value), bins=bins, range=(0.0, max(float(amax[name]), 1e-12)))[0]
    return counts


def choose_amax(hist: np.ndarray, amax: float, method: str, fmt: QuantFormat = INT8) -> float:
    """The clipping range (the value mapped to ``fmt.max_value``) for a |x| histogram over [0, amax]."""
    if method not in fmt.methods:
        raise ValueError(f"calibration method {method!r} is not one of {fmt.label}'s: {', '.join(fmt.methods)}")
    total = hist.sum()
    if amax <= 0 or total == 0 or method == "minmax":
        return float(amax)
    width = amax / len(hist)
    if method == "percentile":
        cdf = np.cumsum(hist) / total
        return float(min(amax, (np.searchsorted(cdf, PERCENTILE / 100) + 1) * width))
    if method == "mse":
        return _mse_amax(hist, width, fmt)
    return _entropy_amax(hist, width)


def _mse_amax(hist: np.ndarray, width: float, fmt: QuantFormat = INT8) -> float:
    """Clip that minimises E[(x - q(x))^2]: (x - c)^2 above the clip, the format's rounding error below it
    (step^2 / 12 for INT8; for FP8 the step of each bin's own exponent at that clip's scale)."""
    centers = (np.arange(len(hist)) + 0.5) * width
    first = len(hist) // 16  # never clip more than 15/16
    candidates = np.arange(first, len(hist) + 1) * width
    scales = candidates / fmt.max_value
    if fmt.integer:  # uniform: every value below the clip has the same expected error
        rounding = np.cumsum(hist)[first - 1:] * scales**2 / 12
    else:  # candidates x bins at once, only the bins below each clip; every 4th candidate, interpolated
        every = np.arange(0, len(candidates) + MSE_FLOAT_STRIDE - 1, MSE_FLOAT_STRIDE).clip(max=len(candidates) - 1)
        below = np.arange(len(hist))[None, :] < (first + every)[:, None]
        coarse = (fmt.rounding_mse(centers[None, :] / scales[every, None]) * below) @ hist * scales[every] ** 2
        rounding = np.interp(np.arange(len(candidates)), every, coarse)
    # clipping error sum_{j >= i} hist_j (center_j - c_i)^2 for every candidate at once, from suffix sums
    # (every bin at or above a candidate's edge has its center above it)
    def suffix(values: np.ndarray) -> np.ndarray:
        return np.cumsum(values[::-1])[::-1][first:]

    h = hist.astype(np.float64)
    s0, s1, s2 = suffix(h), suffix(h * centers), suffix(h * centers * centers)
    s0, s1, s2 = (np.append(v, 0.0) for v in (s0, s1, s2))  # the last candidate clips nothing
    clip_error = np.maximum(s2 - 2 * candidates * s1 + candidates**2 * s0, 0.0)
    return float(candidates[int(np.argmin(clip_error + rounding))])


def _entropy_amax(hist: np.ndarray, width: float, levels: int = int(INT8.max_value) + 1) -> float:
    """TensorRT's entropy calibration: the clip whose 128-level quantized distribution has the least
    KL divergence from the clipped reference distribution (outliers folded into the last bin)."""
    hist = hist.astype(np.float64)
    best, best_i = np.inf, len(hist)
    for i in range(levels, len(hist) + 1, ENTROPY_STRIDE):
        reference = hist[:i].copy()
        reference[-1] += hist[i:].sum()
        nonzero = hist[:i] != 0
        # merge the i bins into `levels` groups, then spread each group's mass over its non-empty bins
        groups = np.minimum((np.arange(i) * levels) // i, levels - 1)
        mass = np.bincount(groups, weights=hist[:i], minlength=levels)
        filled = np.bincount(groups, weights=nonzero, minlength=levels)
        expanded = np.where(nonzero, mass[groups] / np.maximum(filled[groups], 1), 0.0)
        p = reference / reference.sum()
        q = expanded / max(expanded.sum(), 1e-30)
        mask = p > 0
        q_masked = q[mask]
        if np.any(q_masked == 0):
            continue
        kl = float(np.sum(p[mask] * np.log(p[mask] / q_masked)))
        if kl < best:
            best, best_i = kl, i
    return float(best_i * width)

