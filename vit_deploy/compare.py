"""Parity: run an artifact and its reference on the same inputs and judge the difference.

Backs ``vit-deploy compare`` and the test suite. The candidate is any artifact on its runtime
(TensorRT engine, ONNX graph on ONNX Runtime); the reference is the PyTorch FP32 model the
artifact was made from (rebuilt from the manifest) or another artifact (``--reference DIR``,
e.g. the FP32 export when the checkpoint is not on this machine). The candidate runs at each
requested batch size over the same inputs, so a batch-size-dependent bug (a wrong profile, a
kernel chosen for one shape) shows up as a failing row. Thresholds are the precision's
(specs.TOLERANCES); top-1 agreement is gated only for pretrained weights (random weights have
near-tied logits whose argmax flips on noise), top-5 agreement is reported, not gated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runtime
from .errors import ArtifactError, UsageError
from .parity.reference import REFERENCE_BATCH
from .progress import Progress
from .specs import tolerance
from .steps.validate import Reference, image_source, validate

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
    """

    artifact: Path
    reference: str = "pytorch"
    images: str | None = None
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    max_images: int | None = None
    seed: int = 0
    provider: str = "cpu"
    backend: str | None = None


def compare_artifact(opts: CompareOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run the artifact and its reference on the same images; returns the summary with a row per batch size."""
    progress = progress or Progress(enabled=False)
    if not opts.batch_sizes or min(opts.batch_sizes) < 1:
        raise UsageError(f"batch sizes must be >= 1, got {list(opts.batch_sizes)}")
    progress.total = 2 + len(opts.batch_sizes)

    with progress.step("Opening the artifact"):
        candidate = runtime.open(opts.artifact, opts.backend, provider=opts.provider)
    with candidate:
        art = candidate.artifact
        count = opts.max_images or max(RANDOM_INPUTS, *opts.batch_sizes)
        images = image_source(opts.images, art, count, opts.seed, opts.max_images, role="comparison",
                              option="--images", progress=progress)
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
        try:
            runner = runtime.open(candidate.artifact, "pytorch", max_batch=REFERENCE_BATCH)
        except ArtifactError as e:
            parent = candidate.artifact.parent_dir
            hint = f" (e.g. --reference {parent})" if parent else ""
            raise ArtifactError(
                f"no PyTorch reference for {opts.artifact}: {e}. Compare against the FP32 export instead with "
                f"--reference DIR{hint}"
            ) from e
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


def format_table(summary: dict[str, Any]) -> str:
    """The human-readable report of :func:`compare_artifact`."""
    tol = summary["tolerance"]
    bounds = ", ".join(f"{k} {v}" for k, v in tol.items())
    gate = "" if summary["top1_agreement_gated"] else " (top-1 not gated: random weights)"
    head = ["batch", "max abs", "mean abs", "rel L2", "cosine", "top-1", "top-5"]
    has_acc = any("accuracy" in r["metrics"] for r in summary["rows"])
    if has_acc:
        head.append("accuracy (ref)")
    head.append("verdict")
    lines = [
        f"{summary['precision'].upper()} {summary['kind']} {summary['artifact']} on {summary['candidate']['backend']}",
        f"  reference {summary['reference']}",
        f"  inputs    {summary['inputs']}",
        f"  output    {summary['output']}; bounds: {bounds}{gate}",
        "",
    ]
    table = [head]
    for r in summary["rows"]:
        m = r["metrics"]
        cells = [
            str(r["batch"]), f"{m['max_abs']:.3e}", f"{m['mean_abs']:.3e}", f"{m['rel_l2']:.3e}",
            f"{m['min_cosine']:.7f}", f"{m['top1_agreement']:.2%}", f"{m['top5_agreement']:.2%}",
        ]
        if has_acc:
            cells.append(f"{m['accuracy']:.2%} ({m['reference_accuracy']:.2%})")
        cells.append("PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"]))
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:  # right-aligned numbers; the verdict, last, left-aligned
        cells = [c.rjust(w) for c, w in zip(row[:-1], widths, strict=False)]
        lines.append("  " + "  ".join([*cells, row[-1]]))
    lines += ["", f"verdict: {'PASS' if summary['passed'] else 'FAIL'}"]
    return "\n".join(lines)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r} is not a comma-separated list of integers, e.g. 1,8") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes {text!r}: give batch sizes >= 1, e.g. 1,8")
    return sizes

