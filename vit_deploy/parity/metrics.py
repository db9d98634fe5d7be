"""Backend-agnostic comparison of logits against a reference (numpy only).

The metrics every validation in the package reports, and the verdict against a tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..specs import Tolerance

BOOTSTRAP_RESAMPLES = 4000


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max/mean abs error, relative L2 (||c - r|| / ||r||), worst and mean per-sample cosine, top-1 agreement."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    # Inf or NaN logits give NaN metrics (inf / inf), on purpose: NaN fails every bound (failures())
    with np.errstate(invalid="ignore", over="ignore"):
        diff = cand - ref
        ref_norm = float(np.linalg.norm(ref))
        rel_l2 = float(np.linalg.norm(diff)) / ref_norm if ref_norm > 0 else float(np.linalg.norm(diff))
        dots = np.sum(ref * cand, axis=-1)
        norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)
    return {
        "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "mean_abs": float(np.mean(np.abs(diff))) if diff.size else 0.0,
        "rel_l2": rel_l2,
        "min_cosine": float(np.min(cosine)) if cosine.size else 1.0,
        "mean_cosine": float(np.mean(cosine)) if cosine.size else 1.0,
        "top1_agreement": float(np.mean(ref.argmax(-1) == cand.argmax(-1))) if ref.size else 1.0,
    }


def failures(metrics: dict[str, float], tol: Tolerance, gate_top1: bool = True) -> list[str]:
    """Every bound of ``tol`` that ``metrics`` break, as readable strings (empty: pass)."""
    # (tolerance field, metric, "max" or "min", how to show the value): a bound holds only when the
    # comparison is true, so NaN or Inf in the logits fails every bound instead of slipping past it
    bounds = [
        ("max_rel_l2", "rel_l2", "max", "rel L2 {:.2e}"),
        ("max_abs", "max_abs", "max", "max abs {:.2e}"),
        ("min_cosine", "min_cosine", "min", "cosine {:.6f}"),
        ("min_mean_cosine", "mean_cosine", "min", "mean cosine {:.6f}"),
        ("min_top1_agreement", "top1_agreement", "min", "top-1 agreement {:.2%}"),
        ("max_accuracy_drop", "accuracy_drop_points", "max", "top-1 accuracy drop {:.2f} points"),
    ]
    out = []
    for field, key, kind, shown in bounds:
        bound, value = getattr(tol, field), metrics.get(key)
        if bound is None or value is None or (key == "top1_agreement" and not gate_top1):
            continue
        if not (value <= bound if kind == "max" else value >= bound):
            note = _noise_note(metrics, key, bound)
            out.append(f"{shown.format(value)} {'>' if kind == 'max' else '<'} {bound}{note}")
    return out


INTERVALS = {"accuracy_drop_points": "accuracy_drop_ci95", "top1_agreement": "top1_agreement_ci95"}


def _noise_note(metrics: dict[str, float], key: str, bound: float) -> str:
    """Where the bound lies inside the metric's 95% interval: a miss these images cannot tell from noise."""
    prefix = INTERVALS.get(key)
    low, high = metrics.get(f"{prefix}_low"), metrics.get(f"{prefix}_high")
    if low is None or high is None or not low <= bound <= high:
        return ""
    shown = (lambda v: f"{v:.2f}") if key == "accuracy_drop_points" else (lambda v: f"{v:.1%}")
    return (f" (95% interval {shown(low)} to {shown(high)}: within the noise of these images; "
            "more labelled images decide)")


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(-1) == labels))


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> float:
    """Fraction of samples whose k highest classes are the same set in both (k capped at the class count)."""
    k = min(k, reference.shape[-1])
    ref = np.sort(np.argpartition(-reference, k - 1, axis=-1)[:, :k], axis=-1)
    cand = np.sort(np.argpartition(-candidate, k - 1, axis=-1)[:, :k], axis=-1)
    return float(np.mean(np.all(ref == cand, axis=-1)))


def intervals(
    reference_correct: np.ndarray, candidate_correct: np.ndarray, agree: np.ndarray, seed: int = 0,
) -> dict[str, float]:
    """95% bootstrap intervals of the top-1 accuracy drop (points) and of the top-1 agreement.

    On a few hundred photos one photo is a few tenths of a point, and the photos whose top-1 changes
    under quantization are near-ties that can fall either way, so a drop means little without its
    interval. Photos are resampled with their reference and candidate results together (paired). Each
    photo's difference is -1, 0 or +1, so a resample is a multinomial draw of those counts: the same
    distribution as resampling the photos, in memory independent of their number. Seeded: a rerun
    prints the same interval.
    """
    n = len(agree)
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    diff = np.asarray(reference_correct, int) - np.asarray(candidate_correct, int)
    counts = rng.multinomial(n, [np.mean(diff == 1), np.mean(diff == -1), np.mean(diff == 0)], BOOTSTRAP_RESAMPLES)
    drops = 100 * (counts[:, 0] - counts[:, 1]) / n
    agreements = rng.binomial(n, float(np.mean(agree)), BOOTSTRAP_RESAMPLES) / n
    out = {}
    for prefix, values in (("accuracy_drop_ci95", drops), ("top1_agreement_ci95", agreements)):
        out[f"{prefix}_low"], out[f"{prefix}_high"] = (float(v) for v in np.percentile(values, [2.5, 97.5]))
    return out


def accuracy_interval(correct: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of a top-1 accuracy over these photos (resampled with replacement).

    The number of correct photos in a resample is binomial, so it is drawn as such: the same
    distribution as resampling the photos, seeded like :func:`intervals`.
    """
    n = len(correct)
    if n == 0:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).binomial(n, float(np.mean(correct)), BOOTSTRAP_RESAMPLES) / n
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def evaluate(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None, tol: Tolerance, gate_top1: bool,
) -> tuple[dict[str, float], list[str]]:
    """Every metric (plus top-5 agreement, and accuracy when labels are given) and the bounds broken.

    The one verdict behind precision-graph validation, engine validation and ``compare``.
    """
    metrics = compare_logits(reference, candidate)
    metrics["top5_agreement"] = topk_agreement(reference, candidate, 5)
    if labels is not None:
        metrics["reference_accuracy"] = accuracy(reference, labels)
        metrics["accuracy"] = accuracy(candidate, labels)
        metrics["accuracy_drop_points"] = 100 * (metrics["reference_accuracy"] - metrics["accuracy"])
        metrics |= intervals(reference.argmax(-1) == labels, candidate.argmax(-1) == labels,
                             reference.argmax(-1) == candidate.argmax(-1))
    return metrics, failures(metrics, tol, gate_top1=gate_top1)


# Metrics where a larger value is better; every other metric is an error or a drop (smaller is better).
HIGHER_IS_BETTER = ("cosine", "agreement", "accuracy")


def worst(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The worst value of each metric over several runs (max for errors, min for agreements)."""
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        better_high = any(word in key for word in HIGHER_IS_BETTER) and "drop" not in key
        out[key] = min(values) if better_high else max(values)
    return out
