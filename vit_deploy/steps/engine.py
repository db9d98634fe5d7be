"""The engine step: a validated ONNX graph artifact -> a TensorRT engine artifact, checked against PyTorch.

One library call behind ``vit-deploy build-engine`` on a GPU host. The graph artifact (FP32
export, or the FP16/INT8 graph from ``precision.py``) already decides every tensor's precision,
because TensorRT 11 builds strongly typed networks only; this step turns it into a plan for
this GPU, inspects what TensorRT made of it, and runs the plan against the PyTorch FP32 model
rebuilt from the manifest, with the same tolerances the graph was held to.

Without TensorRT or a GPU it stops with EngineUnavailable (exit 3) before touching the disk.
Otherwise the artifact is built in a staging folder and renamed into place whole:
``model.<precision>.plan`` plus a manifest (written last) with kind "tensorrt", the parent
graph's path and sha256, the build facts TensorRT compatibility depends on (version, GPU,
compute capability, profile, flags) and the validation numbers.

A dynamic-resolution graph gets one optimization profile over batch, height and width: min and max
from the export's range (``--min-res``/``--max-res`` narrow it), opt at the native size
(``--opt-res`` moves it). The engine's manifest records the profile and, in its own
``dynamic_resolution`` section, the part of the range the profile covers; the engine is checked at
sizes across that part. An engine that fails validation
is kept, with ``"passed": false``, for inspection (the CLI exits 2 via ``raise_if_failed``).

TensorRT details and the pages they come from: ``vit_deploy/trt/`` and docs/tensorrt.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import artifact as artifact_view
from ..artifact import Artifact, file_entry, new_manifest, package_versions, write_manifest
from ..errors import ArtifactError, EngineUnavailable, UsageError
from ..fileio import atomic_write_bytes, check_can_write, check_output_file, staged_directory
from ..progress import Progress
from ..specs import TOLERANCES, ResolutionRange, tolerance
from .validate import fp32_reference, image_sources, sizes_to_check, validate

# Batch profile defaults, chosen for ViT-B/16 at 384 (577 tokens), the largest case we ship:
# - min 1: single-image requests must work.
# - opt 8: TensorRT picks its kernels for this shape; 8 is a typical dynamic-batching size for
#   online serving (Triton) and keeps 1..64 all reasonably fast.
# - max 64: activations grow with the batch. Even unfused FP32 attention scores for B/16@384 at
#   batch 64 are 64 x 12 heads x 577^2 x 4 B = 1.0 GB per layer (layers reuse the memory), the MLP
#   hidden state 64 x 577 x 3072 x 4 B = 0.45 GB, weights 0.35 GB (FP32): a few GB at most, which
#   fits a 16 GB T4/L4-class GPU; larger batches add throughput only marginally on such GPUs.
DEFAULT_MIN_BATCH, DEFAULT_OPT_BATCH, DEFAULT_MAX_BATCH = 1, 8, 64
# TensorRT's own default level: 4-5 search longer for small gains, 0-2 build faster and run slower.
DEFAULT_OPTIMIZATION_LEVEL = 3
# A validation batch that is neither a power of two nor a profile corner (when the profile allows).
ODD_BATCH = 3


@dataclass(frozen=True)
class EngineOptions:
    """How to build the engine.

    Args:
        artifact: the ONNX graph artifact folder (an FP32 export, or an FP16/INT8 graph).
        out_dir: the engine artifact folder (None: ``<artifact>-trt`` beside it).
        force: replace an existing folder.
        min_batch, opt_batch, max_batch: the optimization profile's batch sizes.
        workspace_mib: builder workspace limit (None: TensorRT's default).
        optimization_level: TensorRT builder optimization level, 0-5.
        timing_cache: the timing cache file (None: one per TensorRT version and GPU in the cache folder).
        hardware_compatible: a plan for any Ampere-or-newer GPU (slower kernels).
        version_compatible: a plan later TensorRT 11.x versions can run (embeds the lean runtime).
        val_images: images to validate on (labels.csv adds accuracy); None: seeded random images.
        seed: seeds the random images and samples.
        min_res, max_res: a dynamic-resolution graph's profile: the smallest and largest image side
            (None: the export's range).
        opt_res: the (height, width) TensorRT tunes for (an int: square; None: the native size).
    """

    artifact: Path | None = None  # an ONNX graph artifact folder (fp32 export, or fp16/int8 graph)
    out_dir: Path | None = None  # default: "<artifact>-trt" beside it
    force: bool = False
    min_batch: int = DEFAULT_MIN_BATCH
    opt_batch: int = DEFAULT_OPT_BATCH
    max_batch: int = DEFAULT_MAX_BATCH
    workspace_mib: int | None = None  # None: TensorRT's default (up to the device's global memory)
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL
    timing_cache: Path | None = None  # default: cache_dir()/tensorrt/timing-<trt version>-<cc>.cache
    hardware_compatible: bool = False  # Ampere-and-newer portable plan (slower kernels)
    version_compatible: bool = False  # runs on later TensorRT 11.x too (embeds the lean runtime)
    val_images: str | None = None  # images to validate on (labels.csv adds accuracy); default: random
    seed: int = 0
    # dynamic-resolution graphs only (last, so the fields above keep their positions):
    min_res: int | None = None  # None: the export's range and native size
    opt_res: int | tuple[int, int] | None = None
    max_res: int | None = None


def default_out_dir(parent_dir: Path) -> Path:
    return parent_dir.parent / f"{parent_dir.name}-trt"


def default_timing_cache(trt_version: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and compute capability: a cache never mixes GPUs."""
    from ..images.sets import cache_dir

    return cache_dir() / "tensorrt" / f"timing-{trt_version}-cc{compute_capability}.cache"


def plan_name(precision: str) -> str:
    return f"model.{precision}.plan"


def missing_tensor_cores(precision: str, facts: dict[str, str]) -> str | None:
    """Why this GPU cannot run ``precision``'s quantized GEMMs natively (None: it can, or nothing is quantized)."""
    from ..onnx.formats import FORMATS

    fmt = FORMATS.get(precision)
    if fmt is None:
        return None
    have = tuple(int(p) for p in facts["compute_capability"].split("."))
    need = fmt.min_compute_capability
    if have >= need:
        return None
    return (f"{facts['gpu']} (compute capability {facts['compute_capability']}) has no {fmt.label} tensor cores; "
            f"{fmt.label} engines need compute capability {need[0]}.{need[1]} or newer")


def validation_batches(min_batch: int, opt_batch: int, max_batch: int) -> list[int]:
    """Batch sizes the engine is validated at: the profile's corners plus an odd size inside it."""
    sizes = {min_batch, opt_batch, max_batch, min(max_batch, max(min_batch, ODD_BATCH))}
    return sorted(sizes)


def profile_sizes(opts: EngineOptions, parent: Artifact) -> tuple[list[tuple[int, int]] | None, ResolutionRange | None]:
    """(the profile's (height, width) at min, opt, max; the part of the range it covers), or (None, None) for a
    fixed-resolution graph. UsageError names the option that leaves the export's range or the patch grid."""
    sizes = parent.resolution_range
    given = {k: v for k, v in (("--min-res", opts.min_res), ("--opt-res", opts.opt_res), ("--max-res", opts.max_res))
             if v is not None}
    if sizes is None:
        if given:
            raise UsageError(f"{', '.join(given)} set the image sizes of a dynamic-resolution engine; "
                             f"{parent.directory} takes {parent.img_size}x{parent.img_size} only: drop them, or "
                             "re-export with --dynamic-res MIN:MAX")
        return None, None
    low = sizes.min if opts.min_res is None else opts.min_res
    high = sizes.max if opts.max_res is None else opts.max_res
    opt = opts.opt_res if opts.opt_res is not None else sizes.native
    opt_hw = (opt, opt) if isinstance(opt, int) else tuple(opt)
    for option, values in (("--min-res", (low,)), ("--max-res", (high,)), ("--opt-res", opt_hw)):
        for v in values:
            if not sizes.valid(v):
                raise UsageError(f"{option} {v} is not a size the export takes ({sizes.describe()}); nearest: "
                                 f"{' or '.join(map(str, sizes.nearest(v)))}")
    if not low <= sizes.native <= high:
        raise UsageError(f"--min-res {low} / --max-res {high} leave out the native size {sizes.native} (where the "
                         "position embeddings are used as they are); keep it inside the profile")
    if not all(low <= v <= high for v in opt_hw):
        raise UsageError(f"--opt-res {opt_hw[0]}x{opt_hw[1]} is outside the profile's {low} to {high}; "
                         "give min <= opt <= max")
    covered = ResolutionRange(min=low, max=high, step=sizes.step, native=sizes.native)
    return [(low, low), (int(opt_hw[0]), int(opt_hw[1])), (high, high)], covered


def open_graph(artifact: Path | None) -> Artifact:
    """The ONNX graph artifact to build from, checked against its manifest's hashes."""
    if artifact is None:
        raise UsageError(
            "build an engine from an ONNX graph artifact: vit-deploy build-engine ARTIFACT (an export, or the "
            "FP16/INT8 folder build-engine --fp16/--int8 made)"
        )
    return artifact_view.open(artifact, verify=True)


def check_options(opts: EngineOptions) -> None:
    """The option checks that need no artifact: the CLI runs them before any slow step."""
    from ..trt.build import OPTIMIZATION_LEVELS, check_batches

    check_batches(opts.min_batch, opts.opt_batch, opts.max_batch)
    if opts.optimization_level not in OPTIMIZATION_LEVELS:
        raise UsageError(f"--optimization-level {opts.optimization_level} is out of range; TensorRT accepts 0 to 5")
    if opts.workspace_mib is not None and opts.workspace_mib < 1:
        raise UsageError(f"--workspace-mib {opts.workspace_mib} must be a positive number of MiB (or left unset)")
    if opts.timing_cache is not None:  # whether an existing file is a timing cache only TensorRT can tell (build)
        check_output_file(opts.timing_cache, opts.force, lambda _: True, "--timing-cache", "TensorRT")


def preflight(opts: EngineOptions, parent: Artifact) -> Path:
    """Every check that needs neither TensorRT nor a GPU; returns the output folder."""
    parent_dir = parent.directory.absolute()
    if parent.kind != "onnx":
        source = parent.parent_dir or "the ONNX graph folder it was built from"
        raise UsageError(
            f"{parent_dir} is a {parent.kind} artifact; build the engine from the ONNX graph folder ({source})"
        )
    if parent.precision not in TOLERANCES:
        raise ArtifactError(f"{parent_dir} has unknown precision {parent.precision!r}; re-create it")
    if not parent.passed:
        raise ArtifactError(
            f"{parent_dir} failed its own validation (see its manifest); fix and re-create it before building an engine"
        )
    if not parent.has_single_image_input:
        raise ArtifactError(f"{parent_dir} does not have one NCHW image input; re-export it with vit-deploy export")
    check_options(opts)
    profile_sizes(opts, parent)
    return check_can_write((opts.out_dir or default_out_dir(parent_dir)).absolute(), opts.force)


def build_engine_artifact(opts: EngineOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Build, inspect, validate and write the engine artifact; returns its summary.

    Args:
        opts: the :class:`EngineOptions`.
        progress: where step progress goes (None: silent).

    Raises EngineUnavailable (exit 3) before touching the disk when this machine has no TensorRT or GPU.
    """
    from ..trt import tensorrt_version
    from ..trt.probe import unavailable_reason

    progress = progress or Progress(enabled=False)
    parent = open_graph(opts.artifact)
    out_dir = preflight(opts, parent)
    parent_dir = parent.directory.absolute()
    precision = parent.precision
    reason = unavailable_reason()
    if reason is not None:  # before any work or any file: the graph is fine, this machine is not
        raise EngineUnavailable(
            f"engine not built: {reason}. The validated {precision} graph is kept at {parent_dir}; "
            f"on a GPU host with TensorRT run: vit-deploy build-engine {parent_dir}"
        )

    from ..trt import device_facts
    from ..trt.build import build_serialized_engine
    from ..trt.inspector import engine_summary

    trt_version = str(tensorrt_version())
    facts = device_facts()
    missing = missing_tensor_cores(precision, facts)
    if missing is not None:  # TensorRT would fail the build (no kernels), or run it emulated: say so first
        raise EngineUnavailable(
            f"engine not built: {missing}. The validated {precision} graph is kept at {parent_dir}; build it on a "
            f"GPU that runs {precision.upper()} (vit-deploy doctor lists this GPU's precisions), or use --fp16 here"
        )
    cache = opts.timing_cache or default_timing_cache(trt_version, facts["compute_capability"])
    graph_path = parent.model_file  # ArtifactError if the manifest lists no model file
    name = plan_name(precision)
    progress.total = 4
    sizes, covered = profile_sizes(opts, parent)

    with staged_directory(out_dir, opts.force) as stage:
        with progress.step(f"Building the TensorRT {trt_version} engine on {facts['gpu']}"):
            plan, trt_info = build_serialized_engine(
                graph_path,
                input_name=parent.input_name, chw=parent.chw,
                min_batch=opts.min_batch, opt_batch=opts.opt_batch, max_batch=opts.max_batch,
                workspace_mib=opts.workspace_mib, optimization_level=opts.optimization_level,
                timing_cache=Path(cache), hardware_compatible=opts.hardware_compatible,
                version_compatible=opts.version_compatible, progress=progress, sizes=sizes,
                replace_unreadable_cache=opts.force or opts.timing_cache is None,  # the default cache is ours
            )
            atomic_write_bytes(stage / name, plan)
        if (trt_info.get("timing_cache") or {}).get("loaded"):
            progress.note(f"  reused the timing cache {cache}")
        with progress.step("Inspecting the engine's layers"):
            summary = engine_summary(plan, allow_host_code=opts.version_compatible)
            trt_info["inspector"] = {
                "layers": summary["num_layers"],
                "precision_counts": summary["precision_counts"],
                "fused_attention": summary["fused_attention"],
                "layer_types": summary["layer_types"],
                "io_tensors": summary["io_tensors"],
                "inspected_shapes": summary["inspected_shapes"],
            }
        versions = package_versions("torch", "onnx", "numpy")
        versions["tensorrt"] = trt_version
        inherited = parent.inherited()
        if covered is not None:  # the part of the export's range this engine's profile takes
            inherited["dynamic_resolution"] = {**inherited["dynamic_resolution"], **covered.to_dict()}
        manifest = new_manifest(
            "tensorrt", precision,
            **inherited,
            io=parent.io,
            files=[file_entry(stage, name, "model")],
            parent={**parent.parent_ref(), "path": str(parent_dir)},
            tensorrt=trt_info,
            versions=versions,
        )
        with progress.step("Validating the engine against the PyTorch FP32 reference"):
            validation = validate_engine(opts, Artifact(stage, manifest), progress)
        manifest.update(validation=validation)

        with progress.step("Writing the manifest"):
            write_manifest(stage, manifest)  # last: a folder with a manifest is a finished artifact

    return {
        "artifact": str(out_dir),
        "model_file": str(out_dir / name),
        "bytes": len(plan),
        "parent": str(parent_dir),
        "precision": precision,
        "tensorrt": trt_info,
        "validation": validation,
        "manifest": manifest,
    }


def validate_engine(opts: EngineOptions, staged: Artifact, progress: Progress) -> dict[str, Any]:
    """The staged engine on this GPU vs the PyTorch FP32 model, at batch sizes across the profile.

    Inputs: ``--val-images`` (with accuracy when the folder has labels.csv), else seeded random
    images, as many as the largest batch size in ``validation_batches``. A dynamic-resolution engine
    runs those at the native size and, at the other check sizes of the range its profile covers
    (ends, non-square), a few images at an odd batch. The reference runs on the CPU, exactly as at
    export, so no TF32 or GPU kernel choice enters it. If the checkpoint is gone, the FP32 ONNX graph
    it was exported to (validated against PyTorch then) stands in.
    """
    from .. import runtime

    batch_sizes = validation_batches(opts.min_batch, opts.opt_batch, opts.max_batch)
    odd = (min(opts.max_batch, max(opts.min_batch, ODD_BATCH)),)
    images = image_sources(opts.val_images, staged, sizes_to_check(staged, None), max(batch_sizes), odd[0] + 1,
                           other_batches=odd, seed=opts.seed, progress=progress)
    reference = fp32_reference(staged)
    with runtime.open(staged, "tensorrt", verify=False) as runner, reference.runner:
        return validate(runner, reference, images, batch_sizes, tolerance(staged.precision)).to_dict()
