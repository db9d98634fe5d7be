"""Verdicts never certify NaN or Inf: every bound fails when the logits hold one (issue 11, point 1)."""

from __future__ import annotations

import numpy as np
import pytest

from vit_deploy.parity.metrics import evaluate
from vit_deploy.specs import TOLERANCES


@pytest.mark.parametrize("precision", sorted(TOLERANCES))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_fail_every_precision(precision, bad):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 10)).astype(np.float32)
    labels = reference.argmax(-1)
    metrics, failed = evaluate(reference, reference.copy(), labels, TOLERANCES[precision], gate_top1=True)
    assert failed == []  # identical logits pass: the bounds themselves are satisfiable
    broken = reference.copy()
    broken[1, 3] = bad
    metrics, failed = evaluate(reference, broken, labels, TOLERANCES[precision], gate_top1=True)
    assert failed, metrics
