"""Backend-agnostic comparison of logits against a reference (numpy only).

The metrics every validation in the package reports, and the verdict against a tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..specs import Tolerance


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max/mean abs error, relative L2 (||c - r|| / ||r||), worst and mean per-sample cosine, top-1 agreement."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
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
    out = []
    if tol.max_rel_l2 is not None and metrics["rel_l2"] > tol.max_rel_l2:
        out.append(f"rel L2 {metrics['rel_l2']:.2e} > {tol.max_rel_l2:.0e}")
    if tol.max_abs is not None and metrics["max_abs"] > tol.max_abs:
        out.append(f"max abs {metrics['max_abs']:.2e} > {tol.max_abs:.0e}")
    if tol.min_cosine is not None and metrics["min_cosine"] < tol.min_cosine:
        out.append(f"cosine {metrics['min_cosine']:.6f} < {tol.min_cosine}")
    if tol.min_mean_cosine is not None and not metrics["mean_cosine"] >= tol.min_mean_cosine:
        out.append(f"mean cosine {metrics['mean_cosine']:.6f} < {tol.min_mean_cosine}")
    if gate_top1 and tol.min_top1_agreement is not None and metrics["top1_agreement"] < tol.min_top1_agreement:
        out.append(f"top-1 agreement {metrics['top1_agreement']:.2%} < {tol.min_top1_agreement:.1%}")
    drop = metrics.get("accuracy_drop_points")
    if tol.max_accuracy_drop is not None and drop is not None and drop > tol.max_accuracy_drop:
        out.append(f"top-1 accuracy drop {drop:.2f} points > {tol.max_accuracy_drop}")
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(-1) == labels))


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> float:
    """Fraction of samples whose k highest classes are the same set in both (k capped at the class count)."""
    k = min(k, reference.shape[-1])
    ref = np.sort(np.argpartition(-reference, k - 1, axis=-1)[:, :k], axis=-1)
    cand = np.sort(np.argpartition(-candidate, k - 1, axis=-1)[:, :k], axis=-1)
    return float(np.mean(np.all(ref == cand, axis=-1)))


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
