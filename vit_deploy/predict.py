"""Top-k predictions for image files: ``vit-deploy predict ARTIFACT IMAGE...``.

Images go through the manifest's preprocessing (vit_deploy.images.decode), the artifact runs on its
runtime, and the logits become softmax probabilities. A 1000-class model gets ImageNet-1k class
names (shipped in vit_deploy/data/imagenet_classes.tsv, training index order); any other head
is labelled by class index, or by a labels file the user passes (UTF-8, one name per line, blank
lines ignored, exactly one name per class), read and checked before any image runs.

A dynamic-resolution artifact takes each image at its own size: the aspect ratio kept, the shorter
side scaled to ``short_side`` (default: the native size), both sides rounded to the patch grid and
kept inside the artifact's range (``images.sizes.fit_size``), the whole image resized to that, no
crop. Each result says what was done (``input_size``, ``resize``).
"""

from __future__ import annotations

import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import runtime
from .errors import UsageError, ValidationFailed
from .images.decode import load_batch, load_rgb, resize_to
from .images.files import read_text
from .images.sizes import fit_size
from .parity.metrics import degenerate_rows

IMAGENET_CLASSES = 1000


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (first lemma of each synset), index order."""
    text = resources.files("vit_deploy").joinpath("data/imagenet_classes.tsv").read_text()
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(lemmas.split(",")[0].strip() for _, lemmas in rows)


def class_names(num_classes: int, labels_file: str | os.PathLike[str] | None = None) -> list[str]:
    """A name per class: from ``labels_file`` (one per line), else ImageNet's or "class <i>"."""
    if labels_file is not None:
        names = [line.strip() for line in read_text(labels_file, "labels file").splitlines() if line.strip()]
        if len(names) != num_classes:
            raise UsageError(f"labels file {Path(labels_file)} names {len(names)} classes; the model has "
                             f"{num_classes}: give one class name per line, in class-index order")
        return names
    if num_classes == IMAGENET_CLASSES:
        return list(imagenet_labels())
    return [f"class {i}" for i in range(num_classes)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def failed_warning(note: str) -> str:
    """What predict says of an artifact that failed its validation: it still predicts (to look at), but warns."""
    return f"{note}; these predictions may be wrong (vit-deploy compare says how far)"


def predict(
    images: list[str], artifact: str | os.PathLike[str], *, top_k: int = 5, backend: str | None = None,
    labels_file: str | None = None, short_side: int | None = None,
) -> list[dict[str, Any]]:
    """One entry per image: its top-k classes with probabilities, most likely first.

    ``short_side``: a dynamic-resolution artifact's resize policy (see the module docstring); None: its native size.
    An artifact that failed its validation still predicts (looking at it is how one finds out what
    is wrong), and every entry carries a ``warning`` saying so.
    """
    if not images:
        raise UsageError("give at least one image file")
    with runtime.open(artifact, backend) as runner:
        sizes = runner.size_range
        if short_side is not None and (sizes is None or not sizes.min <= short_side <= sizes.max):
            where = f"its range {sizes.min} to {sizes.max}" if sizes else "a --dynamic-res export (this one is fixed)"
            raise UsageError(f"--short-side {short_side} needs {where}; drop it or give a size inside")
        names = class_names(runner.num_classes, labels_file)
        resized: list[dict[str, Any]] = []
        if sizes is None:
            batch = load_batch(images, runner.preprocessing)
        else:
            batch = []
            for path in images:
                rgb = load_rgb(path)
                h, w, said = fit_size(rgb.shape[0], rgb.shape[1], short_side or sizes.native, sizes)
                batch.append(resize_to(rgb, h, w, runner.preprocessing))
                resized.append({"input_size": [h, w], "resize": said})
        logits = runner.infer(batch).astype(np.float64)
        pretrained = runner.artifact.pretrained
        failed = runner.artifact.failed_note
    broken = np.flatnonzero(degenerate_rows(logits))
    if broken.size:  # softmax would print nan% (or a flat 1/classes): no prediction to show
        raise ValidationFailed(
            f"{artifact} gave all-zero or non-finite logits for {broken.size} of {len(images)} image(s) (e.g. "
            f"{images[broken[0]]}): the artifact is broken; check it with vit-deploy compare {artifact} and rebuild it"
        )
    probs = softmax(logits)
    k = min(top_k, probs.shape[-1])
    results = []
    for n, (path, p) in enumerate(zip(images, probs, strict=True)):
        order = np.argsort(-p)[:k]
        results.append({
            "image": str(path),
            "pretrained": pretrained,
            **(resized[n] if resized else {}),
            "top": [{"class": int(i), "label": names[i], "probability": float(p[i])} for i in order],
            **({"warning": failed_warning(failed)} if failed else {}),
        })
    return results
