"""Parity: run an artifact and its reference on the same inputs and judge the difference.

Backs ``vit-deploy compare`` and the test suite. The candidate is any artifact on its runtime
(TensorRT engine, ONNX graph on ONNX Runtime); the reference is the PyTorch FP32 model the
artifact was made from (rebuilt from the manifest) or another artifact (``--reference DIR``,
e.g. the FP32 export when the checkpoint is not on this machine). The candidate runs at each
requested batch size over the same inputs, so a batch-size-dependent bug (a wrong profile, a
kernel chosen for one shape) shows up as a failing row. Thresholds are the precision's
(specs.TOLERANCES); top-1 agreement is gated only for pretrained weights (random weights have
near-tied logits whose argmax flips on noise), top-5 agreement is reported, not gated.

The inputs are real images: ``--images``, else the set the artifact was validated on (its
manifest names it) when it is on this machine, else the bundled photo list
(``calibration/photos.txt``). Seeded random inputs only when asked (``random_inputs``): noise has
no class and leaves the ranges an INT8 graph was calibrated for, so for trained weights the
bounds it cannot measure (top-1 agreement; INT8's cosine bounds) are reported, not judged, and
the report says so. A good INT8 graph of the real ViT-Ti scored cosine 0.987 on noise (FAIL)
and 0.998 on photos (PASS).

A dynamic-resolution artifact is compared at several image sizes (``sizes``; default: its range's
check sizes, both ends and non-square ones included), a row per size and batch size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runtime
from .artifact import Artifact
from .errors import ArtifactError, UsageError
from .parity.reference import REFERENCE_BATCH, reference_model
from .progress import Progress
from .specs import QUANTIZED_PRECISIONS, tolerance
from .steps.validate import ImageSource, Reference, image_sources, sizes_to_check, validate

DEFAULT_BATCH_SIZES = (1, 8)
RANDOM_INPUTS = 16


@dataclass
class CompareOptions:
    """What to compare.

    Args:
        artifact: the artifact folder to check.
        reference: ``"pytorch"`` (the model rebuilt from the manifest) or another artifact folder.
        images: real images (a folder, labels.csv adds accuracy, or a definition file); None: the set the
            artifact was validated on when present, else the bundled photo list.
        random_inputs: compare on seeded random inputs instead of real images (``images`` must be None).
        batch_sizes: the artifact runs over all images at each of these.
        max_images: use at most this many images (a seeded sample).
        seed: seeds the random images and the sample.
        provider: ONNX Runtime provider for ONNX candidates (``"cpu"``, ``"cuda"``, ``"tensorrt"``).
        backend: run the candidate on this backend (None: the artifact's own).
        weights: where the checkpoint is now, when it moved since the export (``reference="pytorch"`` only);
            its sha256 must still be the one the manifest records.
        sizes: (height, width) pairs to compare at, each in a dynamic-resolution artifact's range (None: the
            range's check sizes; the native size for a fixed artifact). Real images at a non-square size: resized whole.
    """

    artifact: Path
    reference: str = "pytorch"
    images: str | None = None
    random_inputs: bool = False
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    max_images: int | None = None
    seed: int = 0
    provider: str = "cpu"
    backend: str | None = None
    weights: str | None = None
    sizes: tuple[tuple[int, int], ...] | None = None


def compare_artifact(opts: CompareOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the artifact and its reference on the same images; returns the summary with a row per batch size."""
    progress = progress or Progress(enabled=False)
    if not opts.batch_sizes or min(opts.batch_sizes) < 1:
        raise UsageError(f"batch sizes must be >= 1, got {list(opts.batch_sizes)}")
    if opts.weights is not None and opts.reference != "pytorch":
        raise UsageError("--weights rebuilds the PyTorch reference; it does not go with --reference DIR")
    if opts.random_inputs and opts.images:
        raise UsageError("--random-inputs compares on seeded noise instead of images: give it or --images, not both")
    progress.total = 2 + len(opts.batch_sizes)

    with progress.step("Opening the artifact"):
        # Q/DQ as written on ONNX Runtime (the arithmetic TensorRT does), as the build validated it
        candidate = runtime.open(opts.artifact, opts.backend, provider=opts.provider, exact_qdq=True)
    with candidate:
        art = candidate.artifact
        images = _inputs(opts, art, progress)
        with progress.step(f"Opening the reference ({opts.reference})"):
            reference = _reference(opts, candidate)
        with reference.runner:
            verdict = validate(candidate, reference, images, opts.batch_sizes, tolerance(art.precision), progress,
                               not_gated=_not_measurable(art) if images[0].random else None)
        described = candidate.describe()

    return {
        "artifact": str(candidate.directory),
        "kind": art.kind,
        "precision": art.precision,
        "candidate": described,
        "output": candidate.output_name,
        **verdict.to_dict(),
        "passed": all(r["passed"] for r in verdict.rows),
    }


def validated_image_set(art: Artifact) -> str | None:
    """The image set ``art``'s own validation ran on, as its manifest names it (None: random inputs, or unsaid)."""
    v = art.validation
    if v.get("image_set"):
        return str(v["image_set"])
    inputs = str(v.get("inputs") or "")
    named = re.fullmatch(r"\d+ images from (.+?)(?: \(\d+ skipped\))?", inputs)  # manifests before image_set
    if named:
        return named.group(1)
    if re.fullmatch(r"the \d+ calibration images", inputs):
        return (art.section("calibration") or {}).get("source")
    return None


def _inputs(opts: CompareOptions, art: Artifact, progress: Progress) -> list[ImageSource]:
    """``--images``; else the set the artifact was validated on, if present; else the bundled photos; or noise.
    One source per image size to check (a dynamic-resolution artifact's range; its native size otherwise)."""
    from dataclasses import replace

    from .images.sets import BUNDLED_PHOTOS

    sizes = sizes_to_check(art, opts.sizes)
    count = opts.max_images or max(RANDOM_INPUTS, *opts.batch_sizes)

    def load(spec: str | None, why: str = "") -> list[ImageSource]:
        found = image_sources(spec, art, sizes, count, count, seed=opts.seed, max_images=opts.max_images,
                              role="comparison", option="--images" if spec else "", progress=progress)
        return [replace(s, description=f"{s.description} ({why})") for s in found] if why else found

    if opts.images:
        return load(opts.images)
    if opts.random_inputs:
        return load(None, "--random-inputs")
    validated = validated_image_set(art)
    if validated and Path(validated).exists():
        return load(validated, "the set this artifact was validated on")
    why = (f"the set this artifact was validated on, {validated}, is not here" if validated
           else "its manifest names no image set it was validated on")
    if not BUNDLED_PHOTOS.is_file():
        raise UsageError(f"compare runs on real images, and {why}, nor is the bundled photo list (a source "
                         "checkout's calibration/photos.txt): pass --images FOLDER, or --random-inputs")
    try:
        return load(str(BUNDLED_PHOTOS), f"the bundled photo list: {why}")
    except UsageError as e:
        raise UsageError(f"compare runs on real images, and {why}; the bundled photo list cannot be used ({e}): "
                         "pass --images FOLDER, or --random-inputs") from e


def _not_measurable(art: Artifact) -> dict[str, str]:
    """What seeded random inputs cannot measure for ``art``: nothing for random weights, more for trained ones."""
    if not art.pretrained:
        return {}
    why = "random inputs have no class: a trained model's top-1 on noise measures nothing"
    out = {"min_top1_agreement": why}
    if art.precision in QUANTIZED_PRECISIONS:
        cosine = f"random inputs leave the ranges the {art.precision.upper()} graph was calibrated for (photos)"
        out |= {"min_cosine": cosine, "min_mean_cosine": cosine}
    bounds = tolerance(art.precision).bounds()
    return {field: why for field, why in out.items() if field in bounds}


def _reference(opts: CompareOptions, candidate: runtime.Runner) -> Reference:
    if opts.reference == "pytorch":
        from .runtime.pytorch_runner import PyTorchRunner

        try:
            model = reference_model(candidate.artifact, opts.weights)
        except ArtifactError as e:
            parent = candidate.artifact.parent_dir
            hint = f" (e.g. --reference {parent})" if parent else ""
            raise ArtifactError(
                f"no PyTorch reference for {opts.artifact}: {e}. Compare against the FP32 export instead with "
                f"--reference DIR{hint}"
            ) from e
        runner = PyTorchRunner(candidate.artifact, max_batch=REFERENCE_BATCH, model=model)
        return Reference(runner, "pytorch fp32 (rebuilt from the manifest)")
    runner = runtime.open(opts.reference, max_batch=REFERENCE_BATCH)
    other = runner.artifact
    if not other.same_model(candidate.artifact):
        runner.close()
        raise UsageError(
            f"--reference {opts.reference} is a different model ({other.variant} @ "
            f"{other.img_size}, {other.num_classes} classes) from {opts.artifact}"
        )
    return Reference(runner, f"{other.precision} {other.kind} artifact {opts.reference} on {runner.backend}")
