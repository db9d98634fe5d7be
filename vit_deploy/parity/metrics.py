"""Backend-agnostic comparison of logits against a reference (numpy only).

The metrics every validation in the package reports, and the verdict against a tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..specs import Tolerance

BOOTSTRAP_RESAMPLES = 4000


def degenerate_rows(*logits: np.ndarray) -> np.ndarray:
    """Per sample: True where any of ``logits`` has a zero or non-finite norm (all zeros, a NaN, an Inf)."""
    bad = np.zeros(logits[0].shape[:-1], dtype=bool)
    with np.errstate(invalid="ignore", over="ignore"):
        for x in logits:
            norms = np.linalg.norm(np.asarray(x, np.float64), axis=-1)
            bad |= ~(np.isfinite(norms) & (norms > 0))
    return bad


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max/mean abs error, relative L2 (||c - r|| / ||r||), worst and mean per-sample cosine, top-1 agreement.

    A sample whose logits have a zero or non-finite norm (all zeros, NaN, Inf) on either side has
    no direction to compare: its cosine is NaN (not 1.0), it agrees with nothing, the relative L2
    of the whole set is NaN, and ``degenerate_samples`` counts it. NaN fails every bound
    (:func:`failures`), so all-zero or NaN logits never pass a check, whoever asks.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    degenerate = degenerate_rows(ref, cand)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = cand - ref
        norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
        dots = np.sum(ref * cand, axis=-1)
        cosine = np.where(degenerate, np.nan, dots / np.where(degenerate, 1.0, norms))
        rel_l2 = float(np.linalg.norm(diff)) / float(np.linalg.norm(ref)) if not degenerate.any() else float("nan")
    agree = (ref.argmax(-1) == cand.argmax(-1)) & ~degenerate
    out = {
        "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "mean_abs": float(np.mean(np.abs(diff))) if diff.size else 0.0,
        "rel_l2": rel_l2,
        "min_cosine": float(np.min(cosine)) if cosine.size else 1.0,
        "mean_cosine": float(np.mean(cosine)) if cosine.size else 1.0,
        "top1_agreement": float(np.mean(agree)) if ref.size else 1.0,
    }
    if degenerate.any():  # only then: the metrics of every good comparison stay as they were
        out["degenerate_samples"] = int(degenerate.sum())
        out["samples"] = int(degenerate.size)
    return out


# (tolerance field, metric, "max" or "min", label, how values and the bound are shown): one unit per line
BOUNDS = [
    ("max_rel_l2", "rel_l2", "max", "rel L2", "{:.2e}"),
    ("max_abs", "max_abs", "max", "max abs", "{:.2e}"),
    ("min_cosine", "min_cosine", "min", "cosine", "{:.6f}"),
    ("min_mean_cosine", "mean_cosine", "min", "mean cosine", "{:.6f}"),
    ("min_top1_agreement", "top1_agreement", "min", "top-1 agreement", "{:.2%}"),
    ("max_accuracy_drop", "accuracy_drop_points", "max", "top-1 accuracy drop", "{:.2f} points"),
]


def bound_label(field: str) -> str:
    """What a tolerance field bounds, as reports name it: ``min_mean_cosine`` -> ``mean cosine``."""
    return next(b[3] for b in BOUNDS if b[0] == field)


def bound_text(field: str, bound: float) -> str:
    """A bound as reports print it, in the unit of its metric: ``top-1 agreement >= 97%``."""
    _, _, kind, label, shown = next(b for b in BOUNDS if b[0] == field)
    unit = " points" if "points" in shown else ""
    return f"{label} {'<=' if kind == 'max' else '>='} {_bound_value(shown, bound)}{unit}"


def _bound_value(shown: str, bound: float) -> str:
    """The bound as given (1e-05, 0.995, 1.0), in percent where its metric is shown in percent."""
    return f"{100 * bound:g}%" if "%" in shown else str(bound)


def failures(metrics: dict[str, float], tol: Tolerance, gate_top1: bool = True,
             ungated: tuple[str, ...] = ()) -> list[str]:
    """Every bound of ``tol`` that ``metrics`` break, as readable strings (empty: pass).

    ``ungated``: tolerance fields reported but not judged (what the inputs cannot measure);
    ``gate_top1=False`` adds ``min_top1_agreement`` to them. A bound holds only when the
    comparison is true, so NaN or Inf in the logits fails every bound instead of slipping past it.
    """
    out = []
    if metrics.get("degenerate_samples"):
        out.append(f"{metrics['degenerate_samples']} of {metrics.get('samples', '?')} samples have all-zero or "
                   "non-finite logits (a zero or NaN norm), which no bound accepts")
    skipped = set(ungated) | (set() if gate_top1 else {"min_top1_agreement"})
    for field, key, kind, label, shown in BOUNDS:
        bound, value = getattr(tol, field), metrics.get(key)
        if bound is None or value is None or field in skipped:
            continue
        if not (value <= bound if kind == "max" else value >= bound):
            note = _noise_note(metrics, key, bound)
            out.append(f"{label} {shown.format(value)} {'>' if kind == 'max' else '<'} "
                       f"{_bound_value(shown, bound)}{note}")
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


def correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample: the top-1 class is the label (never for all-zero or non-finite logits, which name no class)."""
    return (logits.argmax(-1) == labels) & ~degenerate_rows(logits)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(correct(logits, labels)))


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> float:
    """Fraction of samples whose k highest classes are the same set in both (k capped at the class count);
    a sample with all-zero or non-finite logits agrees with nothing."""
    k = min(k, reference.shape[-1])
    ref = np.sort(np.argpartition(-reference, k - 1, axis=-1)[:, :k], axis=-1)
    cand = np.sort(np.argpartition(-candidate, k - 1, axis=-1)[:, :k], axis=-1)
    return float(np.mean(np.all(ref == cand, axis=-1) & ~degenerate_rows(reference, candidate)))


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
        ref_correct, cand_correct = correct(reference, labels), correct(candidate, labels)
        n = len(labels)
        metrics["reference_accuracy"] = float(np.mean(ref_correct))
        metrics["accuracy"] = float(np.mean(cand_correct))
        # from the counts, in one division: a drop of exactly the limit is the limit (100 * 5 / 500 is 1.0;
        # the difference of the two rounded accuracies was 1.0000000000000009 and failed "<= 1.0")
        metrics["accuracy_drop_points"] = 100 * (int(ref_correct.sum()) - int(cand_correct.sum())) / n
        agree = (reference.argmax(-1) == candidate.argmax(-1)) & ~degenerate_rows(reference, candidate)
        metrics |= intervals(ref_correct, cand_correct, agree)
    return metrics, failures(metrics, tol, gate_top1=gate_top1)


# Metrics where a larger value is better; every other metric is an error or a drop (smaller is better).
HIGHER_IS_BETTER = ("cosine", "agreement", "accuracy")


def worst(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The worst value of each metric over several runs (max for errors, min for agreements; NaN if any is NaN)."""
    out = {}
    for key in dict.fromkeys(k for r in runs for k in r):
        values = [r[key] for r in runs if key in r]
        if any(v != v for v in values):  # NaN: min/max would drop it, and it must fail the verdict
            out[key] = float("nan")
            continue
        better_high = any(word in key for word in HIGHER_IS_BETTER) and "drop" not in key
        out[key] = min(values) if better_high else max(values)
    return out
