"""Parity: run an artifact and its reference on the same inputs and judge the difference.

Backs ``vit-deploy compare`` and the test suite. The candidate is any artifact on its runtime
(TensorRT engine, ONNX graph on ONNX Runtime); the reference is the PyTorch FP32 model the
artifact was made from (rebuilt from the manifest) or another artifact (``--reference DIR``,
e.g. the FP32 export when the checkpoint is not on this machine). The candidate runs at each
requested batch size over the same inputs, so a batch-size-dependent bug (a wrong profile, a
kernel chosen for one shape) shows up as a failing row. Thresholds are the precision's
(specs.TOLERANCES); top-1 agreement is gated only for pretrained weights (random weights have
near-tied logits whose argmax flips on noise), top-5 agreement is reported, not gated.
A dynamic-resolution artifact is compared at several image sizes (``sizes``; default: its range's
check sizes, both ends and non-square ones included), a row per size and batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runtime
from .errors import ArtifactError, UsageError
from .parity.reference import REFERENCE_BATCH, reference_model
from .progress import Progress
from .specs import tolerance
from .steps.validate import Reference, image_sources, sizes_to_check, validate

DEFAULT_BATCH_SIZES = (1, 8)
RANDOM_INPUTS = 16


@dataclass
class CompareOptions:
    """What to compare.

    Args:
        artifact: the artifact folder to check.
        reference: ``"pytorch"`` (the model rebuilt from the manifest) or another artifact folder.
        images: real images (a folder, labels.csv adds accuracy, or a definition file); None: seeded random.
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
    progress.total = 2 + len(opts.batch_sizes)

    with progress.step("Opening the artifact"):
        candidate = runtime.open(opts.artifact, opts.backend, provider=opts.provider)
    with candidate:
        art = candidate.artifact
        count = opts.max_images or max(RANDOM_INPUTS, *opts.batch_sizes)
        images = image_sources(opts.images, art, sizes_to_check(art, opts.sizes), count, count, seed=opts.seed,
                               max_images=opts.max_images, role="comparison", option="--images", progress=progress)
        with progress.step(f"Opening the reference ({opts.reference})"):
            reference = _reference(opts, candidate)
        with reference.runner:
            verdict = validate(candidate, reference, images, opts.batch_sizes, tolerance(art.precision), progress)
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
