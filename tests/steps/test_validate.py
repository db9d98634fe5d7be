"""The one validation driver against an independent computation of the same numbers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vit_deploy import artifact as artifact_view
from vit_deploy import runtime
from vit_deploy.images.synthetic import random_images
from vit_deploy.parity.metrics import compare_logits
from vit_deploy.parity.reference import reference_model
from vit_deploy.specs import tolerance
from vit_deploy.steps.validate import Reference, fp32_reference, image_source, validate


@pytest.fixture
def fp16(tiny_artifacts):
    return artifact_view.open(tiny_artifacts["fp16"])


def test_rows_per_batch_size_match_a_plain_session_and_pytorch(fp16):
    images = image_source(None, fp16, 7, seed=3)
    np.testing.assert_array_equal(images.images, random_images(7, 32, fp16.preprocessing, seed=3))
    reference = fp32_reference(fp16)
    with runtime.open(fp16) as runner, reference.runner:
        verdict = validate(runner, reference, images, (1, 3, 7), tolerance("fp16"))
    session = ort.InferenceSession(str(fp16.model_file), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected_ref = reference_model(fp16)(torch.from_numpy(images.images)).numpy()
    expected = compare_logits(expected_ref, session.run(None, {"images": images.images})[0])
    d = verdict.to_dict()
    assert d["batch_sizes"] == [1, 3, 7] and d["reference"] == "pytorch fp32" and d["backend"].startswith("onnxruntime")
    for row in d["rows"]:  # every batch size ran over every image: the same numbers up to kernel choice
        assert row["metrics"]["min_cosine"] == pytest.approx(expected["min_cosine"], abs=1e-6)
        assert row["metrics"]["max_abs"] == pytest.approx(expected["max_abs"], rel=1e-2, abs=1e-6)
    assert d["metrics"]["min_cosine"] == min(r["metrics"]["min_cosine"] for r in d["rows"])
    assert d["passed"] and d["tolerance"] == {"min_cosine": 0.9999, "min_top1_agreement": 0.995,
                                              "max_accuracy_drop": 0.1}


class Noisy:
    """A candidate whose logits are off by a known amount: the verdict must name the broken bound."""

    def __init__(self, runner, scale):
        self.runner, self.scale, self.artifact, self.backend, self.label = runner, scale, runner.artifact, "noisy", "x"

    def infer(self, images):
        logits = self.runner.infer(images)
        return logits + self.scale * np.random.default_rng(0).standard_normal(logits.shape).astype(np.float32)


def test_a_candidate_outside_the_bounds_fails_naming_them(fp16):
    images = image_source(None, fp16, 4)
    with runtime.open(fp16) as runner, runtime.open(fp16, "pytorch") as ref:
        verdict = validate(Noisy(runner, 1.0), Reference(ref, "pytorch"), images, (4,), tolerance("fp16"))
    assert not verdict.passed and any(f.startswith("cosine") for f in verdict.failures)
    assert verdict.rows[0]["failures"] == verdict.failures
