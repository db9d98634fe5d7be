"""95% intervals of the accuracy drop and the top-1 agreement (parity.metrics.intervals), against a plain
photo-resampling bootstrap written here, and the note a validation failure gets when its bound is
inside the interval."""

import numpy as np
import pytest

from vit_deploy.parity.metrics import evaluate, failures, intervals
from vit_deploy.specs import Tolerance


def photo_bootstrap(ref_correct, cand_correct, agree, resamples=20000, seed=1):
    """The textbook paired bootstrap: resample photos with replacement, keep each photo's pair together."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(agree), size=(resamples, len(agree)))
    drops = 100 * (ref_correct[picks].mean(1) - cand_correct[picks].mean(1))
    return np.percentile(drops, [2.5, 97.5]), np.percentile(agree[picks].mean(1), [2.5, 97.5])


@pytest.mark.parametrize("lost,gained,flips", [(6, 1, 9), (1, 3, 5), (0, 0, 0), (20, 2, 30)])
def test_intervals_match_resampling_photos(lost, gained, flips):
    n = 250
    ref = np.zeros(n, int)
    ref[:200] = 1
    cand = ref.copy()
    cand[:lost] = 0  # right in FP32, wrong in INT8
    cand[200:200 + gained] = 1  # the reverse
    agree = np.ones(n, int)
    agree[:flips] = 0
    got = intervals(ref, cand, agree)
    (drop_low, drop_high), (agree_low, agree_high) = photo_bootstrap(ref, cand, agree)
    # one photo is 0.4 point: the two bootstraps agree to within a photo at each end
    assert got["accuracy_drop_ci95_low"] == pytest.approx(drop_low, abs=0.41)
    assert got["accuracy_drop_ci95_high"] == pytest.approx(drop_high, abs=0.41)
    assert got["top1_agreement_ci95_low"] == pytest.approx(agree_low, abs=0.0041)
    assert got["top1_agreement_ci95_high"] == pytest.approx(agree_high, abs=0.0041)
    point = 100 * (lost - gained) / n
    assert got["accuracy_drop_ci95_low"] <= point <= got["accuracy_drop_ci95_high"]


def test_identical_results_have_zero_width_intervals():
    ref = np.r_[np.ones(90, int), np.zeros(10, int)]
    got = intervals(ref, ref, np.ones(100, int))
    assert got == {"accuracy_drop_ci95_low": 0.0, "accuracy_drop_ci95_high": 0.0,
                   "top1_agreement_ci95_low": 1.0, "top1_agreement_ci95_high": 1.0}


def test_intervals_are_seeded_and_narrow_with_more_photos():
    rng = np.random.default_rng(0)
    ref = (rng.random(400) < 0.8).astype(int)
    cand = ref.copy()
    cand[:8] = 0
    agree = np.ones(400, int)
    agree[:12] = 0
    assert intervals(ref, cand, agree) == intervals(ref, cand, agree)
    small = intervals(ref[:100], cand[:100], agree[:100])
    large = intervals(np.tile(ref, 10), np.tile(cand, 10), np.tile(agree, 10))
    width = lambda d: d["accuracy_drop_ci95_high"] - d["accuracy_drop_ci95_low"]  # noqa: E731
    assert width(large) < width(small) / 3


def logits_for(correct_top1, labels, classes=10):
    """Logits whose top-1 is the label where ``correct_top1`` is true and the next class otherwise."""
    out = np.zeros((len(labels), classes), np.float32)
    top = np.where(correct_top1, labels, (labels + 1) % classes)
    out[np.arange(len(labels)), top] = 5.0
    return out


def test_a_miss_inside_the_interval_says_so():
    labels = np.arange(250) % 10
    fp32 = logits_for(np.arange(250) >= 50, labels)  # 80% right
    int8 = logits_for((np.arange(250) >= 50) & (np.arange(250) >= 55), labels)  # 5 more wrong: drop 2.0
    tol = Tolerance(max_accuracy_drop=1.0)
    metrics, found = evaluate(fp32, int8, labels, tol, gate_top1=True)
    assert metrics["accuracy_drop_points"] == pytest.approx(2.0)
    assert metrics["accuracy_drop_ci95_low"] < 1.0 < metrics["accuracy_drop_ci95_high"]
    assert len(found) == 1 and "within the noise of these images" in found[0]
    # a miss the images do resolve gets no such note
    metrics |= {"accuracy_drop_ci95_low": 1.5, "accuracy_drop_ci95_high": 2.5}
    assert "noise" not in failures(metrics, tol)[0]


def test_no_labels_no_intervals():
    x = np.eye(4, dtype=np.float32)
    metrics, _ = evaluate(x, x, None, Tolerance(), gate_top1=True)
    assert not any("ci95" in k for k in metrics)


@pytest.mark.parametrize("right", [0, 37, 200, 250])
def test_accuracy_interval_matches_resampling_photos(right):
    from vit_deploy.parity.metrics import accuracy_interval

    correct = np.zeros(250, int)
    correct[:right] = 1
    low, high = accuracy_interval(correct)
    picks = np.random.default_rng(2).integers(0, 250, size=(20000, 250))
    expected = np.percentile(correct[picks].mean(1), [2.5, 97.5])
    assert low == pytest.approx(expected[0], abs=0.0041) and high == pytest.approx(expected[1], abs=0.0041)
    assert low <= right / 250 <= high
