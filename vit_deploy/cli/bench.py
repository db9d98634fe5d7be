"""``vit-deploy bench``, ``bench-res`` and ``bench-build``: throughput of every backend, throughput versus image
size of a dynamic-resolution artifact, and the cost of the build steps.

Like every command, they raise ``VitDeployError`` subclasses for user errors and leave the exit
code to ``cli.main``. Progress goes to stderr; stdout carries the table, or JSON with ``--json``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import click

from ..bench.backends import ROWS
from ..bench.peers import DEFAULT_CALIB_IMAGES
from ..errors import UsageError
from ..progress import Progress
from .options import (
    Count,
    FiniteFloat,
    NonNegative,
    NumClasses,
    PathType,
    Resolution,
    alias,
    aliased,
    backend_option,
    echo_json,
    json_option,
    out_option,
    parse_batch_sizes,
    parse_image_sizes,
    seed_option,
)


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backends", default="all", show_default=True,
              help=f"Comma-separated rows to run: {', '.join(ROWS)}; or all. Rows that cannot run here "
                   "(no artifact, no GPU, package missing) are listed as skipped with the reason.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", type=Count, default=None,
              help="Threads per backend (torch, ONNX Runtime, OpenVINO) and for the ceiling (default: all CPUs).")
@click.option("--repeats", type=Count, default=5, show_default=True,
              help="Timed rounds per batch size; every row runs one block per round, round-robin.")
@click.option("--min-time", type=FiniteFloat(0, min_open=True), default=0.5, show_default=True,
              help="Seconds per timed block (decides how many calls a block makes).")
@click.option("--warmup", type=NonNegative, default=2, show_default=True, help="Untimed calls per row and batch size.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: PyTorch on the GPU, ONNX Runtime's CUDA provider, TensorRT engines, GPU ceilings.")
@click.option("--baseline", default="pytorch-fp32", show_default=True,
              help="The row the 'x baseline' column divides by.")
@out_option("Writes bench.json, bench.md and bench.png (the plot needs matplotlib: vit-deploy[bench]).",
            default=Path("bench-results"), old=("--out-dir",))
@click.option("--no-ceiling", is_flag=True, help="Skip measuring the matrix-multiply ceilings (no '% of ceiling').")
@seed_option("the random input images")
@click.option("--calib", default=None,
              help="Calibration images for the rows bench builds itself (openvino-nncf-int8: NNCF INT8 of the "
                   "export): a folder, or a definition file (calibration/*.txt), as build-engine takes it. "
                   "Without it those rows are skipped.")
@click.option("--calib-count", type=Count, default=DEFAULT_CALIB_IMAGES, show_default=True,
              help="Use at most N calibration images (a seeded sample, as build-engine).")
@alias("--calib-images", "calib_count", type=Count)
@click.option("--force", is_flag=True, help="Replace bench.json/.md/.png in --out that an earlier bench did not write.")
@json_option
@click.pass_context
def bench(
    ctx: click.Context, artifacts: tuple[Path, ...], backends: str, batch_sizes: str, threads: int | None,
    repeats: int, min_time: float, warmup: int, device: str, baseline: str, out: Path, no_ceiling: bool, seed: int,
    calib: str | None, calib_count: int, force: bool, as_json: bool,
) -> None:
    """Throughput, latency, memory and % of the matrix-multiply ceiling of every backend, in one run.

    ARTIFACTS: the FP32 export (required) and any FP16/INT8 graph or engine folders; siblings
    named <export>-fp16, <export>-int8, <export>-trt, <export>-fp16-trt, <export>-int8-trt are
    found automatically. With --calib, bench also builds the OpenVINO + NNCF INT8 peer from the
    export (cached in the vit-deploy cache, keyed by the model and the calibration set).
    """
    from ..bench import report
    from ..bench.report import OUTPUT_SUFFIXES, format_targets, targets
    from ..bench.run import SCHEMA, BenchOptions, run_bench
    from ..fileio import check_output_set

    out = aliased(ctx, "out", out, Path("bench-results"))
    check_output_set(out, "bench", OUTPUT_SUFFIXES, SCHEMA, force, "vit-deploy bench")  # before the run
    opts = BenchOptions(
        artifacts=artifacts, backends=backends, batch_sizes=parse_batch_sizes(batch_sizes), threads=threads,
        repeats=repeats, min_time=min_time, warmup=warmup, device=device, baseline=baseline, ceiling=not no_ceiling,
        seed=seed, calib=calib, calib_images=aliased(ctx, "calib_count", calib_count, DEFAULT_CALIB_IMAGES),
        extra=_command_line("bench"),
    )
    result = run_bench(opts, Progress(enabled=True))
    _report(report, result, out, as_json, lambda: "\nTargets:\n" + format_targets(targets(result)))


def _report(module: ModuleType, result: dict, out: Path, as_json: bool,
            after_table: Callable[[], str] | None = None) -> None:
    """Write the result's files with ``module`` (``bench.report`` or ``bench.resolution``), then print it: JSON,
    or the table (and ``after_table``'s text) and what was written."""
    written = module.write_outputs(result, out)
    if as_json:
        echo_json(result)
        return
    click.echo(module.format_table(result))
    if after_table is not None:
        click.echo(after_table())
    plot = f", {written['plot']}" if written["plot"] else ""
    click.echo(f"\nwrote {written['json']}, {written['markdown']}{plot}")
    if written["plot_note"]:
        click.echo(written["plot_note"], err=True)


@click.command("bench-res")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--sizes", default=None, metavar="N,...",
              help="Square image sizes to run (default: the fixed artifacts' sizes, else the range's min, native "
                   "and max).")
@click.option("--batch", type=Count, default=8, show_default=True, help="Images per call.")
@backend_option
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: ONNX Runtime's CUDA provider, TensorRT engines, PyTorch on the GPU.")
@click.option("--threads", type=Count, default=None, help="Threads per row (default: all CPUs).")
@click.option("--repeats", type=Count, default=3, show_default=True, help="Timed rounds per size.")
@click.option("--min-time", type=FiniteFloat(0, min_open=True), default=0.5, show_default=True,
              help="Seconds per timed block.")
@click.option("--warmup", type=Count, default=2, show_default=True, help="Untimed calls per row and size.")
@out_option("Writes bench-res.json, bench-res.md and bench-res.png (the plot needs matplotlib).",
            default=Path("bench-results"))
@seed_option("the random input images")
@json_option
def bench_res(
    artifacts: tuple[Path, ...], sizes: str | None, batch: int, backend: str | None, device: str,
    threads: int | None, repeats: int, min_time: float, warmup: int, out: Path, seed: int, as_json: bool,
) -> None:
    """Throughput versus image size: a --dynamic-res artifact next to fixed-size exports of the same model.

    ARTIFACTS: the dynamic-resolution artifact first, then any fixed-size artifacts of the same model and
    precision (one per size) to compare it with: does the dynamic graph cost anything?
    """
    from ..bench import resolution
    from ..bench.resolution import ResolutionBenchOptions, run_resolution_bench

    square = tuple(h for h, _ in parse_image_sizes(sizes)) if sizes else ()
    if sizes and any(h != w for h, w in parse_image_sizes(sizes)):
        raise UsageError(f"--sizes {sizes}: bench-res runs square sizes (N), as the fixed exports are")
    opts = ResolutionBenchOptions(dynamic=artifacts[0], fixed=tuple(artifacts[1:]), sizes=square, batch=batch,
                                  backend=backend, device=device, threads=threads, repeats=repeats,
                                  min_time=min_time, warmup=warmup, seed=seed)
    _report(resolution, run_resolution_bench(opts, Progress(enabled=True)), out, as_json)


@click.command("bench-build")
@click.option("--model", "variant", default="b16", show_default=True, help="ViT variant.")
@click.option("--res", "img_size", type=Resolution, default=384, show_default=True, help="Input resolution.")
@click.option("--num-classes", type=NumClasses, default=None, help="Classes of the head (default 1000).")
@click.option("--phases", default="export,fp16,int8", show_default=True,
              help="Which steps to time: export (with onnxsim), fp16, int8 (graph conversion, no engine).")
@click.option("--calib", default=None,
              help="Calibration images for int8 (default: calibration/photos.txt of the source checkout).")
@click.option("--work-dir", type=PathType, default=None,
              help="A new or empty folder to keep the artifacts in (default: a temporary folder, removed after).")
@click.option("--threads", type=Count, default=None, help="OMP/torch threads of each phase (default: theirs).")
@out_option("Writes build-cost.json and build-cost.md.", default=Path("bench-results"), old=("--out-dir",))
@click.option("--force", is_flag=True, help="Replace build-cost.json/.md in --out that bench-build did not write.")
@json_option
@click.pass_context
def bench_build(
    ctx: click.Context, variant: str, img_size: int, num_classes: int | None, phases: str, calib: str | None,
    work_dir: Path | None, threads: int | None, out: Path, force: bool, as_json: bool,
) -> None:
    """Time and peak memory of export + simplify, FP16 and INT8 conversion, each in a fresh process."""
    from ..bench.build_cost import SCHEMA, BuildOptions, format_build, run_build_cost, write_build_outputs
    from ..fileio import check_output_set

    out = aliased(ctx, "out", out, Path("bench-results"))
    check_output_set(out, "build-cost", (".json", ".md"), SCHEMA, force, "vit-deploy bench-build")  # before the run
    opts = BuildOptions(variant=variant, img_size=img_size, num_classes=num_classes, calib=calib, work_dir=work_dir,
                        phases=tuple(p.strip() for p in phases.split(",") if p.strip()), threads=threads,
                        extra=_command_line("bench-build"))
    summary = run_build_cost(opts, Progress(enabled=True))
    written = write_build_outputs(summary, out)
    if as_json:
        echo_json(summary)
    else:
        click.echo(format_build(summary))
    if not as_json:
        click.echo(f"\nwrote {written['json']}, {written['markdown']}")


def _command_line(name: str) -> dict[str, str]:
    """{"command": the command as typed} when run as vit-deploy (recorded in the result), else {}."""
    import sys

    args = sys.argv[1:]
    if name not in args or not sys.argv[0].endswith(("vit-deploy", "__main__.py", "vit_deploy.cli")):
        return {}  # called in-process (tests, a notebook): the options are recorded anyway
    return {"command": " ".join(["vit-deploy", *args[args.index(name):]])}
