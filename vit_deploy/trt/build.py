"""Build a serialized TensorRT 11 engine (a "plan") from an ONNX graph whose precision is already decided.

TensorRT 11 builds strongly typed networks only: every tensor's type comes from the ONNX graph
(the FP16 graph's casts, the INT8 graph's Q/DQ pairs), and the precision builder flags
(``BuilderFlag.FP16``, ``INT8``, ...) are gone. ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
still exists but is deprecated and ignored in 11.0 ("strongly typed mode is always enabled"), so
the network is created with no flags.

The steps, each from the documentation below: parse the file (``parse_from_file``, so weights
stored as external data next to the graph are found) and report *every* parser error; one
optimization profile over the batch dimension (and the image height and width of a
dynamic-resolution graph); an optional workspace pool limit; the builder
optimization level; ``ProfilingVerbosity.DETAILED`` so the engine inspector can list each layer's
tensor types; optional hardware compatibility (Ampere and newer) and version compatibility; a
timing cache that is loaded when present (``ignore_mismatch=False``: a cache from another GPU or
TensorRT is not trusted, it is rebuilt and the user is told) and saved back atomically.

Pages this is written from (TensorRT itself cannot run on the machines this was written on):
- https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-python-api.html
- https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
- https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html
  (NetworkDefinitionCreationFlag.STRONGLY_TYPED: deprecated in 11.0, ignored)
- https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/_static/c-api/classnvinfer1_1_1_i_builder_config.html
  (memory pool limit, builder optimization level, hardware compatibility level, timing cache)
- https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/TimingCache.html
- https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-843/api/python_api/parsers/Onnx/pyOnnx.html
  (OnnxParser.parse_from_file, num_errors, get_error; ParserError.desc/node/node_name/node_operator)
- https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/c-api/_nv_onnx_parser_8h_source.html
  (the 11.0 parser header: IParser/IParserError are still there)
- https://docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html
  (BuilderFlag.VERSION_COMPATIBLE, HardwareCompatibilityLevel.AMPERE_PLUS)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, EngineBuildError, EngineUnavailable, UsageError
from ..fileio import atomic_write_bytes
from ..progress import Progress
from . import LogCollector, builder_error, device_facts, import_tensorrt, trt_logger

if TYPE_CHECKING:  # annotations only (read by tests/trt/test_trt_api.py); never imported at run time
    import tensorrt as trt

MIB = 1 << 20
OPTIMIZATION_LEVELS = range(0, 6)  # TensorRT's builder optimization levels; 3 is its default
PARSER_OPS_URL = "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md"
# The tensorrt.ParserError accessors read for a report (tests/trt/test_trt_api.py checks them on the bindings).
PARSER_ERROR_FIELDS = ("code", "desc", "node", "node_name", "node_operator")


def check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    """The profile TensorRT accepts: 1 <= min <= opt <= max."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise UsageError(
            f"batch sizes must satisfy 1 <= --min-batch ({min_batch}) <= --opt-batch ({opt_batch}) "
            f"<= --max-batch ({max_batch}); adjust them"
        )


def profile_shapes(
    input_name: str, chw: Sequence[int], min_batch: int, opt_batch: int, max_batch: int,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """The optimization profile as the manifest records it: {input: {min, opt, max}} full NCHW shapes.

    ``sizes``: the (height, width) at min, opt and max of a dynamic-resolution graph; None: ``chw``'s for all three.
    """
    check_batches(min_batch, opt_batch, max_batch)
    c, h, w = (int(d) for d in chw)
    hw = [(int(a), int(b)) for a, b in sizes] if sizes is not None else [(h, w)] * 3
    if len(hw) != 3 or any(not lo <= mid <= hi for lo, mid, hi in zip(*hw, strict=True)):
        raise UsageError(f"the profile's image sizes {hw} must be min <= opt <= max in height and in width")
    batches = (("min", min_batch), ("opt", opt_batch), ("max", max_batch))
    return {input_name: {k: [b, c, *size] for (k, b), size in zip(batches, hw, strict=True)}}


def parser_error_record(error: trt.ParserError) -> dict[str, Any]:
    """One ``tensorrt.ParserError`` as plain data (missing accessors read as None)."""

    def read(name: str) -> Any:
        accessor = getattr(error, name, None)
        try:
            return accessor() if callable(accessor) else accessor
        except (RuntimeError, TypeError, ValueError):
            return None

    record = {name: read(name) for name in PARSER_ERROR_FIELDS}
    code = record["code"]
    record["code"] = None if code is None else str(getattr(code, "name", code)).split(".")[-1]
    return record


def format_parser_errors(
    onnx_path: str | Path, records: Sequence[dict[str, Any]], log_errors: Iterable[str] = ()
) -> str:
    """Every parser error, numbered, with the node it is about, and what to do next."""
    lines = [f"TensorRT could not parse {onnx_path}: {len(records)} parser error(s)"]
    for i, r in enumerate(records, 1):
        node = r.get("node")
        if isinstance(node, int) and node >= 0:
            where = f"node {node}"
            if r.get("node_name"):
                where += f" {r['node_name']!r}"
            if r.get("node_operator"):
                where += f" ({r['node_operator']})"
        else:
            where = "graph"
        code = f" [{r['code']}]" if r.get("code") else ""
        lines.append(f"  {i}. {where}: {r.get('desc') or 'no description'}{code}")
    log_errors = [e for e in log_errors if e]
    if log_errors:
        lines.append("  TensorRT log: " + "; ".join(log_errors[:10]))
    lines.append(
        f"Every op must be one TensorRT's ONNX parser supports ({PARSER_OPS_URL}); re-export with "
        "--opset 17 or newer, or fix the op named above in the graph, then run build-engine again"
    )
    return "\n".join(lines)


def build_serialized_engine(
    onnx_path: Path,
    *,
    input_name: str,
    chw: tuple[int, int, int],
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    workspace_mib: int | None,
    optimization_level: int,
    timing_cache: Path | None,
    hardware_compatible: bool,
    version_compatible: bool,
    progress: Progress | None = None,
    replace_unreadable_cache: bool = True,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Parse ``onnx_path`` and build a plan; returns (plan bytes, the manifest's "tensorrt" section).

    ``replace_unreadable_cache=False``: a ``timing_cache`` file TensorRT cannot read as a timing cache
    (not one, or damaged) is refused (UsageError) rather than replaced: the user named it, and it
    may be something else entirely.
    ``sizes``: (height, width) at the profile's min, opt and max for a dynamic-resolution graph (its
    height and width then range over the profile too); None: ``chw``'s.
    Needs TensorRT and a CUDA GPU (check ``vit_deploy.trt.probe.unavailable_reason()`` first).
    Raises EngineBuildError with every parser error, or with TensorRT's logged errors when the
    build itself returns nothing.
    """
    trt = import_tensorrt()

    progress = progress or Progress(enabled=False)
    onnx_path = Path(onnx_path)
    shapes = profile_shapes(input_name, chw, min_batch, opt_batch, max_batch, sizes)
    if optimization_level not in OPTIMIZATION_LEVELS:
        raise UsageError(f"--optimization-level {optimization_level} is out of range; TensorRT accepts 0 to 5")
    if workspace_mib is not None and workspace_mib < 1:
        raise UsageError(f"--workspace-mib {workspace_mib} must be a positive number of MiB (or left unset)")
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} does not exist; re-create the graph artifact")

    collector = LogCollector()
    logger = trt_logger(collector)  # must outlive builder, network, parser and config
    builder = create_builder(trt, logger)
    facts = device_facts()
    if hardware_compatible and int(facts["compute_capability"].split(".")[0]) < 8:
        raise UsageError(
            f"--hardware-compatible needs an Ampere or newer GPU to build on; this {facts['gpu']} has compute "
            f"capability {facts['compute_capability']}: build without it"
        )
    # No creation flags: in TensorRT 11 every network is strongly typed (the flag is ignored).
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(onnx_path))
    if not parsed or parser.num_errors:
        records = [parser_error_record(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(format_parser_errors(onnx_path, records, collector.errors()))
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if input_name not in inputs:
        raise EngineBuildError(
            f"{onnx_path} has inputs {inputs} but its manifest names {input_name!r}; re-create the graph artifact"
        )

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    s = shapes[input_name]
    profile.set_shape(input_name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    if config.add_optimization_profile(profile) < 0:  # -1: the profile is invalid for this network
        raise EngineBuildError(
            f"TensorRT rejected the profile {s} for {input_name!r} ({collector.explain()}); check that the "
            "graph's batch dimension (and, for a --dynamic-res export, its height and width) is dynamic"
        )
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib * MIB)
    config.builder_optimization_level = optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer types/precisions for the inspector
    tf32 = _disable_tf32(trt, config)
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if version_compatible:
        # Embeds the lean runtime in the plan; loading it then needs Runtime.engine_host_code_allowed.
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    cache_state = (_attach_timing_cache(config, timing_cache, progress, replace_unreadable_cache)
                   if timing_cache else None)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        hint = (
            "lower --max-batch or raise --workspace-mib if it ran out of memory"
            if workspace_mib is not None
            else "lower --max-batch if it ran out of GPU memory"
        )
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path}: {collector.explain()}; {hint}")
    plan = bytes(serialized)
    if cache_state is not None:
        cache_state["saved"] = _save_timing_cache(config, Path(timing_cache), progress)

    return plan, {
        "version": str(trt.__version__),
        "gpu": facts["gpu"],
        "compute_capability": facts["compute_capability"],
        "strongly_typed": True,
        "profile": shapes,
        "workspace_mib": workspace_mib,  # None: TensorRT's default (the device's global memory)
        "optimization_level": optimization_level,
        "hardware_compatible": hardware_compatible,
        "hardware_compatibility_level": "AMPERE_PLUS" if hardware_compatible else "NONE",
        "version_compatible": version_compatible,
        "tf32": tf32,
        "profiling_verbosity": "DETAILED",
        "timing_cache": cache_state,
        "build_seconds": round(seconds, 2),
        "plan_bytes": len(plan),
        "warnings": collector.warnings()[:20],
    }


def create_builder(trt: Any, logger: trt.ILogger) -> trt.Builder:
    """``trt.Builder(logger)``, or EngineUnavailable in one line.

    The bindings never return None here: when TensorRT's factory returns nullptr (no GPU, no
    driver) the constructor raises TypeError ("factory function returned nullptr").
    """
    try:
        return trt.Builder(logger)
    except (TypeError, RuntimeError) as e:
        raise EngineUnavailable(f"cannot build a TensorRT engine here: {builder_error(trt, e)}") from e


def _disable_tf32(trt: Any, config: trt.IBuilderConfig) -> str:
    """Keep FP32 tensors in FP32: the graph, not the builder, decides precision.

    ``BuilderFlag.TF32`` is in the 11.4 bindings and enabled by default (TF32 for FP32 matmuls
    and convolutions), which would break the FP32 tolerance: it is cleared.
    """
    config.clear_flag(trt.BuilderFlag.TF32)
    return "disabled"


def _attach_timing_cache(
    config: trt.IBuilderConfig, path: Path, progress: Progress, replace_unreadable: bool = True,
) -> dict[str, Any]:
    """Load ``path`` into the config if it exists and matches this GPU/TensorRT; else start an empty cache.

    A cache of another GPU or TensorRT version is replaced; a file TensorRT cannot read as a timing
    cache only with ``replace_unreadable`` (else UsageError, before the build).
    """
    path = Path(path)
    state: dict[str, Any] = {"path": str(path), "loaded": False, "rebuilt": False}
    data = b""
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as e:
            progress.note(f"  warning: cannot read the timing cache {path} ({e.strerror or e}); building a new one")
    if data:
        cache = None
        try:
            cache = config.create_timing_cache(data)
        except (RuntimeError, TypeError, ValueError):
            cache = None
        if cache is None and not replace_unreadable:
            raise UsageError(f"--timing-cache {path} is not a TensorRT timing cache (TensorRT cannot read it); "
                             "pass --force to replace it, or name another file")
        # A cache timed on another GPU or TensorRT would pick wrong tactics, so a mismatch is refused.
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            state["loaded"] = True
            return state
        progress.note(
            f"  timing cache {path} was made by another TensorRT version or GPU (or is damaged); "
            "timing from scratch and replacing it"
        )
        state["rebuilt"] = True
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return state


def _save_timing_cache(config: trt.IBuilderConfig, path: Path, progress: Progress) -> bool:
    """Write the (grown) cache back atomically, so a crash never leaves half a cache for the next build.

    A cache that cannot be written costs only time on the next build, so it warns instead of failing.
    """
    cache = config.get_timing_cache()
    if cache is None:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, bytes(cache.serialize()))
    except OSError as e:
        progress.note(f"  warning: cannot save the timing cache {path} ({e.strerror or e}); the next build times again")
        return False
    return True
