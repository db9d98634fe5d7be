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

import numpy as np

from . import runtime
from .errors import ArtifactError, UsageError
from .parity.metrics import evaluate
from .progress import Progress
from .specs import TOLERANCES

DEFAULT_BATCH_SIZES = (1, 8)
RANDOM_INPUTS = 16
REFERENCE_BATCH = 8


@dataclass
class CompareOptions:
    artifact: Path
    reference: str = "pytorch"  # "pytorch" or an artifact folder
    images: str | None = None  # folder or definition file; None: seeded random inputs
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    max_images: int | None = None
    seed: int = 0
    provider: str = "cpu"  # ONNX Runtime provider for ONNX candidates
    backend: str | None = None  # None: the artifact's own (runtime.DEFAULT_BACKEND); e.g. "openvino"


def run_batched(runner: runtime.Runner, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([runner.infer(images[i : i + batch]) for i in range(0, len(images), batch)])


def compare_artifact(opts: CompareOptions, progress: Progress | None = None) -> dict[str, Any]:
    progress = progress or Progress(enabled=False)
    if not opts.batch_sizes or min(opts.batch_sizes) < 1:
        raise UsageError(f"batch sizes must be >= 1, got {list(opts.batch_sizes)}")
    progress.total = 2 + len(opts.batch_sizes)

    with progress.step("Opening the artifact"):
        candidate = runtime.open(opts.artifact, opts.backend, provider=opts.provider)
    with candidate:
        manifest = candidate.manifest
        images, labels, inputs = _inputs(opts, candidate, progress)
        with progress.step(f"Running the reference ({opts.reference})"):
            reference, reference_name = _reference_logits(opts, manifest, images)
        rows = []
        for b in opts.batch_sizes:
            with progress.step(f"Running {candidate.backend} at batch {b}"):
                logits = run_batched(candidate, images, b)
            rows.append(_row(b, reference, logits, labels, manifest))
        described = candidate.describe()

    tol = TOLERANCES[manifest["precision"]]
    return {
        "artifact": str(candidate.directory),
        "kind": manifest["kind"],
        "precision": manifest["precision"],
        "candidate": described,
        "reference": reference_name,
        "inputs": inputs,
        "output": candidate.output_name,
        "tolerance": {k: v for k, v in vars(tol).items() if v is not None},
        "top1_agreement_gated": _pretrained(manifest),
        "rows": rows,
        "passed": all(r["passed"] for r in rows),
    }


def _inputs(
    opts: CompareOptions, runner: runtime.Runner, progress: Progress,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    if opts.images:
        from .images.sets import load_image_set

        data = load_image_set(opts.images, runner.preprocessing, opts.max_images, 1, opts.seed, progress,
                              role="comparison")
        skipped = f" ({len(data.skipped)} skipped)" if data.skipped else ""
        return data.images, data.labels, f"{len(data.files)} images from {opts.images}{skipped}"
    from .images.synthetic import random_images

    n = opts.max_images or max(RANDOM_INPUTS, *opts.batch_sizes)
    c, h, _ = runner.chw
    images = random_images(n, h, runner.preprocessing, seed=opts.seed, channels=c)
    return images, None, f"{n} seeded random images (seed {opts.seed}); pass --images for real ones"


def _reference_logits(opts: CompareOptions, manifest: dict[str, Any], images: np.ndarray) -> tuple[np.ndarray, str]:
    if opts.reference == "pytorch":
        try:
            ref = runtime.open(opts.artifact, "pytorch")
        except ArtifactError as e:
            parent = (manifest.get("parent") or {}).get("path")
            hint = f" (e.g. --reference {parent})" if parent else ""
            raise ArtifactError(
                f"no PyTorch reference for {opts.artifact}: {e}. Compare against the FP32 export instead with "
                f"--reference DIR{hint}"
            ) from e
        name = "pytorch fp32 (rebuilt from the manifest)"
    else:
        ref = runtime.open(opts.reference)
        other = ref.manifest
        if (other["model"], other["io"]["outputs"]) != (manifest["model"], manifest["io"]["outputs"]):
            ref.close()
            raise UsageError(
                f"--reference {opts.reference} is a different model ({other['model']['variant']} @ "
                f"{other['model']['img_size']}, {other['model']['num_classes']} classes) from {opts.artifact}"
            )
        name = f"{other['precision']} {other['kind']} artifact {opts.reference} on {ref.backend}"
    with ref:
        return run_batched(ref, images, REFERENCE_BATCH), name


def _row(
    batch: int, reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None, manifest: dict[str, Any],
) -> dict[str, Any]:
    metrics, failed = evaluate(reference, logits, labels, TOLERANCES[manifest["precision"]], _pretrained(manifest))
    return {"batch": batch, "metrics": metrics, "failures": failed, "passed": not failed}


def _pretrained(manifest: dict[str, Any]) -> bool:
    return bool(manifest["checkpoint"].get("pretrained"))


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

