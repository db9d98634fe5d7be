"""The one validation driver: run an artifact and its reference on the same images and judge them.

Every check in the package goes through :func:`validate`: the export, precision and engine steps
on the artifact they are staging, and ``vit-deploy compare`` on a finished one. The candidate is
always a :mod:`vit_deploy.runtime` runner, so an engine or a graph is run one way only. The
candidate runs over every image at each batch size, so a batch-size-dependent bug (a wrong
profile, a kernel chosen for one shape) shows up as a failing row; the reference runs once.
Top-1 agreement is gated only for pretrained weights (a random model's logits are near-tied).
A dynamic-resolution artifact is checked at several image sizes: one :class:`ImageSource` per size,
each with its rows (``size`` names the height and width of a row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifact as artifact_view
from .. import runtime
from ..artifact import MANIFEST_NAME, Artifact, sha256_file
from ..batching import batches
from ..errors import ArtifactError, ValidationFailed
from ..parity.metrics import evaluate, failures, worst
from ..parity.reference import REFERENCE_BATCH
from ..progress import Progress
from ..specs import ResolutionRange, Tolerance


@dataclass(frozen=True)
class ImageSource:
    """The images a check runs on: preprocessed float32 [N, C, H, W], labels when known, and a description.

    ``batch_sizes``: the batch sizes to run these images at (None: the ones :func:`validate` is given).
    """

    images: np.ndarray
    description: str
    labels: np.ndarray | None = None
    source: str | None = None  # the image set's path (absolute), when the images came from one
    random: bool = False  # seeded random inputs: nothing a trained model learned shows on them
    batch_sizes: tuple[int, ...] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return int(self.images.shape[2]), int(self.images.shape[3])


@dataclass(frozen=True)
class Reference:
    """What the candidate is compared with: a runner and the name reports give it."""

    runner: runtime.Runner
    name: str


@dataclass
class Verdict:
    """The result of :func:`validate`; ``to_dict()`` is what manifests and ``--json`` record."""

    backend: str
    reference: str
    inputs: str
    tolerance: Tolerance
    gated_top1: bool
    rows: list[dict[str, Any]] = field(default_factory=list)  # per image size and batch: batch, size, metrics, ...
    not_gated: dict[str, str] = field(default_factory=dict)  # tolerance field -> why it is reported, not judged
    image_set: str | None = None  # ImageSource.source: compare reruns on it by default

    @property
    def metrics(self) -> dict[str, float]:
        """The worst value of each metric over the batch sizes."""
        return worst([r["metrics"] for r in self.rows])

    @property
    def failures(self) -> list[str]:
        return failures(self.metrics, self.tolerance, gate_top1=self.gated_top1, ungated=tuple(self.not_gated))

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "reference": self.reference,
            "inputs": self.inputs,
            "batch_sizes": list(dict.fromkeys(r["batch"] for r in self.rows)),
            "image_sizes": list(dict.fromkeys(tuple(r["size"]) for r in self.rows)),
            "tolerance": self.tolerance.bounds(),
            "top1_agreement_gated": self.gated_top1,
            "rows": self.rows,
            "metrics": self.metrics,
            "failures": self.failures,
            "passed": self.passed,
            # only when there is something to say, so every other record stays as it was
            **({"not_gated": self.not_gated} if self.not_gated else {}),
            **({"image_set": self.image_set} if self.image_set else {}),
        }


def validate(
    runner: runtime.Runner,
    reference: Reference,
    image_source: ImageSource | Sequence[ImageSource],
    batch_sizes: tuple[int, ...] | list[int],
    tolerances: Tolerance,
    progress: Progress | None = None,
    not_gated: dict[str, str] | None = None,
) -> Verdict:
    """Run ``runner`` at each batch size and ``reference`` once on the same images; judge every row.

    Args:
        runner: the candidate, from :func:`vit_deploy.runtime.open`.
        reference: the runner it is compared with (the PyTorch FP32 model, or another artifact) and its name.
        image_source: the images (see :func:`image_source`), or one source per image size (see
            :func:`image_sources`); labels add accuracy and its drop.
        batch_sizes: the candidate runs over all images in chunks of each size in turn (a source's own
            ``batch_sizes`` replace them for its images).
        tolerances: the bounds (``specs.tolerance(precision)``).
        progress: shows one step per batch size when given.
        not_gated: tolerance fields to report but not judge, with the reason (what these inputs cannot measure).

    Returns:
        The :class:`Verdict`: a row per image size and batch size, and the worst metrics over them against the bounds.
    """
    progress = progress or Progress(enabled=False)
    sources = [image_source] if isinstance(image_source, ImageSource) else list(image_source)
    not_gated = dict(not_gated or {})
    gate = runner.artifact.pretrained and "min_top1_agreement" not in not_gated
    described = sources[0].description if len(sources) == 1 else "; ".join(
        f"{s.description} at {s.size[0]}x{s.size[1]}" for s in sources)
    verdict = Verdict(runner.label, reference.name, described, tolerances, gate,
                      not_gated=not_gated, image_set=sources[0].source)
    for source in sources:
        images, labels, (h, w) = source.images, source.labels, source.size
        expected = reference.runner.infer(images)
        at = f" at {h}x{w}" if len(sources) > 1 else ""
        for size in source.batch_sizes or batch_sizes:
            with progress.step(f"Running {runner.backend}{at} at batch {size}"):
                logits = np.concatenate([np.asarray(runner.infer(b)) for b in batches(images, size)])
            metrics, _ = evaluate(expected, logits.astype(np.float32), labels, tolerances, gate)
            found = failures(metrics, tolerances, gate_top1=gate, ungated=tuple(not_gated))
            verdict.rows.append({"batch": size, "size": [h, w], "metrics": metrics, "failures": found,
                                 "passed": not found})
    return verdict


def image_source(
    spec: str | None,
    artifact: Artifact,
    count: int,
    seed: int = 0,
    max_images: int | None = None,
    role: str = "validation",
    option: str = "--val-images",
    progress: Progress | None = None,
) -> ImageSource:
    """Real images from ``spec`` (a folder, labels.csv adds labels, or a definition file), else ``count``
    seeded random ones through the artifact's preprocessing.

    Args:
        spec: the image set, or None for random images.
        artifact: whose preprocessing and input size the images get.
        count: how many random images when ``spec`` is None.
        seed: seeds the random images and the sample of a large set.
        max_images: use at most this many images of ``spec`` (a seeded sample).
        role: names the set in messages ("validation", "calibration", "comparison").
        option: the option that passes real images, named in the description of random ones ("": none).
        progress: shows image loading when given.
    """
    if spec:
        from ..images.sets import load_image_set

        data = load_image_set(spec, artifact.preprocessing, max_images, 1, seed, progress, role=role,
                              num_classes=artifact.num_classes)
        skipped = f" ({len(data.skipped)} skipped)" if data.skipped else ""
        return ImageSource(data.images, f"{len(data.files)} images from {spec}{skipped}", data.labels,
                           source=str(Path(spec).absolute()))
    from ..images.synthetic import random_images

    c, h, _ = artifact.chw
    images = random_images(count, h, artifact.preprocessing, seed=seed, channels=c)
    hint = f"; pass {option} for real ones" if option else ""
    return ImageSource(images, f"{count} seeded random images (seed {seed}){hint}", random=True)


def image_sources(
    spec: str | None,
    artifact: Artifact,
    sizes: Sequence[tuple[int, int]],
    count: int,
    other_count: int,
    batch_sizes: tuple[int, ...] | None = None,
    other_batches: tuple[int, ...] | None = None,
    seed: int = 0,
    max_images: int | None = None,
    role: str = "validation",
    option: str = "--val-images",
    progress: Progress | None = None,
) -> list[ImageSource]:
    """One :class:`ImageSource` per (height, width) in ``sizes``, the first being the main one.

    Real images from ``spec`` at every size, decoded once (``load_image_set(sizes=...)``: at a square
    size the manifest's center crop moved to it, at a non-square one the whole image resized);
    seeded random images where ``spec`` is None: ``count`` at the first size, ``other_count`` at the
    others. ``batch_sizes`` / ``other_batches``: the batch sizes at the first size / at the others.
    """
    if spec:
        from ..images.sets import load_image_set

        data = load_image_set(spec, artifact.preprocessing, max_images, 1, seed, progress, role=role,
                              num_classes=artifact.num_classes, sizes=list(sizes))
        skipped = f" ({len(data.skipped)} skipped)" if data.skipped else ""
        described = f"{len(data.files)} images from {spec}{skipped}"
        return [ImageSource(data.at(h, w), described + ("" if h == w else " (resized whole)"), data.labels,
                            str(Path(spec).absolute()), batch_sizes=batch_sizes if i == 0 else other_batches)
                for i, (h, w) in enumerate(sizes)]
    from ..images.synthetic import random_images

    c = artifact.chw[0]
    hint = f"; pass {option} for real ones" if option else ""
    return [ImageSource(random_images(n, h, artifact.preprocessing, seed=seed + i, channels=c, width=w),
                        f"{n} seeded random images (seed {seed + i}){hint}", None, random=True,
                        batch_sizes=batch_sizes if i == 0 else other_batches)
            for i, (h, w) in enumerate(sizes) for n in [count if i == 0 else other_count]]


def sizes_to_check(artifact: Artifact, sizes: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    """The image sizes to check ``artifact`` at: ``sizes`` (each inside its range), or by default its
    range's :meth:`~vit_deploy.specs.ResolutionRange.check_sizes`; the native size alone for a fixed artifact."""
    sizes_range: ResolutionRange | None = artifact.resolution_range
    native = artifact.chw[1:]
    if not sizes:
        return sizes_range.check_sizes() if sizes_range else [native]
    from ..errors import UsageError

    for h, w in sizes:
        if sizes_range is None and (h, w) != native:
            raise UsageError(f"{artifact.directory} takes {native[0]}x{native[1]} images only (a fixed-resolution "
                             f"export); drop the size {h}x{w}, or re-export with --dynamic-res")
        if sizes_range is not None and (problem := sizes_range.problem(h, w)):
            raise UsageError(f"{artifact.directory}: {problem}")
    return list(dict.fromkeys(tuple(s) for s in sizes))


def fp32_reference(artifact: Artifact, model: Any = None) -> Reference:
    """The PyTorch FP32 model behind ``artifact``, run on the CPU (so no TF32 or GPU kernel choice enters it).

    Args:
        artifact: any artifact; its manifest says how to rebuild the model.
        model: the model itself when the caller holds it (the export step), instead of rebuilding it.

    When the checkpoint is gone, the FP32 ONNX export behind the artifact (validated against
    PyTorch at export) stands in on ONNX Runtime, and the name says so; without it, ArtifactError.
    """
    from ..runtime.pytorch_runner import PyTorchRunner

    try:
        return Reference(PyTorchRunner(artifact, max_batch=REFERENCE_BATCH, model=model), "pytorch fp32")
    except ArtifactError as e:
        export = _fp32_export(artifact)
        if export is None:
            raise ArtifactError(
                f"no FP32 reference: {e}; the FP32 export is missing too. Restore the checkpoint or the export"
            ) from e
        runner = runtime.open(export, "onnxruntime", max_batch=REFERENCE_BATCH, verify=False)
        return Reference(runner, f"fp32 ONNX graph {export.model_file} (PyTorch reference unavailable: {e})")


def _fp32_export(artifact: Artifact) -> Artifact | None:
    """The FP32 ONNX export behind ``artifact`` (itself, or the graph it was converted from), if intact."""
    if artifact.kind == "onnx" and artifact.precision == "fp32":
        return artifact
    parent_dir = artifact.parent_dir
    if parent_dir is None or not (parent_dir / MANIFEST_NAME).is_file():
        return None
    try:
        parent = artifact_view.open(parent_dir, verify=False)
    except ArtifactError:
        return None
    if parent.kind != "onnx" or parent.precision != "fp32":
        return _fp32_export(parent)  # an engine's parent may be the FP16/INT8 graph: one more step up
    if not parent.model_file.is_file() or sha256_file(parent.model_file) != parent.model_sha256:
        return None
    return parent


def checked(verdict: dict[str, Any], checker_error: str | None) -> dict[str, Any]:
    """A step's verdict with onnx.checker's result added (a checker error fails the artifact)."""
    verdict["onnx_checker"] = checker_error or "passed"
    if checker_error:
        verdict["failures"].append(f"onnx.checker: {checker_error}")
    verdict["passed"] = not verdict["failures"]
    return verdict


def raise_if_failed(summary: dict[str, Any]) -> None:
    """ValidationFailed (exit 2) naming every failed bound and where the kept artifact is."""
    v = summary["validation"]
    if v["passed"]:
        return
    raise ValidationFailed(
        f"validation failed: {'; '.join(v['failures'])}. The artifact is kept for inspection at "
        f"{summary['artifact']} (its manifest records \"passed\": false)"
    )
