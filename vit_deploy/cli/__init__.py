"""The ``vit-deploy`` command line: parse options, make one library call, print a summary.

Exit codes: 0 success; 1 a user error (one line on stderr, no traceback); 2 an artifact was
written but failed validation (it stays on disk); 130 interrupted.
Only this module exits; library code raises ``VitDeployError`` subclasses.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..artifact import Artifact
from ..errors import VitDeployError
from ..progress import Progress
from ..specs import DEFAULT_RESOLUTION, VARIANTS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vit-deploy")
def cli() -> None:
    """Take a Vision Transformer from PyTorch to ONNX and TensorRT, checked at every step."""


@cli.command()
@click.option("--model", "variant", required=True, help=f"ViT variant: {', '.join(VARIANTS)}.")
@click.option("--res", "img_size", type=int, default=DEFAULT_RESOLUTION, show_default=True,
              help="Input resolution (square); a multiple of the patch size.")
@click.option("--weights", default=None,
              help="Checkpoint: .pth/.pt/.safetensors (timm or Hugging Face), JAX .npz, a Hugging Face "
                   "folder, or a hub id (hf:ORG/NAME, timm:NAME; needs network). Omit for random init.")
@click.option("--num-classes", type=int, default=None, help="Classes of the head (default 1000).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17-20).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Artifact folder (default: artifacts/<model>-<res>).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim simplification.")
@click.option("--force", is_flag=True, help="Overwrite an existing artifact folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init and validation inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def export(
    variant: str, img_size: int, weights: str | None, num_classes: int | None, opset: int,
    out_dir: Path | None, no_simplify: bool, force: bool, seed: int, as_json: bool,
) -> None:
    """Export a ViT to a validated ONNX artifact with a dynamic batch dimension."""
    from ..steps.export import ExportOptions, export_artifact, preflight
    from ..steps.validate import raise_if_failed

    opts = ExportOptions(variant, img_size, num_classes, weights, opset, out_dir, not no_simplify, force, seed)
    preflight(opts)  # bad names, sizes, opsets and output folders fail before anything slow
    if weights is None:
        click.secho(
            f"WARNING: no --weights given: {variant} gets RANDOM weights (seed {seed}), it is NOT PRETRAINED "
            "and its predictions mean nothing. Pass --weights FILE or a hub id for a real model.",
            fg="yellow", bold=True, err=True,
        )
    summary = export_artifact(opts, Progress(enabled=True))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(_export_text(summary))
    raise_if_failed(summary)


@cli.command("build-engine")
@click.option("--artifact", type=click.Path(path_type=Path), default=None,
              help="An FP32 export, or an FP16/INT8 graph folder (default: the newest export in ./artifacts).")
@click.option("--fp16", "precision", flag_value="fp16", help="FP16 mixed precision (FP32 I/O).")
@click.option("--int8", "precision", flag_value="int8", help="INT8 explicit Q/DQ from calibration (needs --calib).")
@click.option("--calib", default=None, help="Calibration images: a folder, or a definition file (calibration/*.txt).")
@click.option("--target", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="INT8 graph for TensorRT, or for the OpenVINO CPU path (attention kept float; no engine step).")
@click.option("--calib-method", default="entropy", show_default=True, help="entropy, percentile or minmax.")
@click.option("--calib-images", type=int, default=256, show_default=True, help="Use at most N images (seeded sample).")
@click.option("--calib-batch", type=int, default=8, show_default=True, help="Calibration batch size.")
@click.option("--val-images", default=None,
              help="Images to validate on (a folder with labels.csv adds accuracy); default: the calibration set.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder of the FP16/INT8 graph (default: <artifact>-<precision>).")
@click.option("--engine-out", type=click.Path(path_type=Path), default=None,
              help="Output folder of the engine (default: <graph folder>-trt).")
@click.option("--min-batch", type=int, default=1, show_default=True, help="Smallest batch of the engine's profile.")
@click.option("--opt-batch", type=int, default=8, show_default=True, help="Batch TensorRT tunes its kernels for.")
@click.option("--max-batch", type=int, default=64, show_default=True, help="Largest batch of the engine's profile.")
@click.option("--workspace-mib", type=int, default=None, help="Builder workspace limit in MiB (default: TensorRT's).")
@click.option("--optimization-level", type=int, default=3, show_default=True,
              help="TensorRT builder optimization level, 0-5.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Timing cache file, reused across builds (default: one per TensorRT version and GPU in the cache).")
@click.option("--hardware-compatible", is_flag=True, help="A plan that runs on any Ampere-or-newer GPU (slower).")
@click.option("--version-compatible", is_flag=True, help="A plan that later TensorRT versions can run (slower).")
@click.option("--force", is_flag=True, help="Overwrite existing output folders.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling images.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def build_engine(
    artifact: Path | None, precision: str | None, calib: str | None, calib_method: str, calib_images: int,
    calib_batch: int, target: str, val_images: str | None, out_dir: Path | None, engine_out: Path | None,
    min_batch: int,
    opt_batch: int, max_batch: int, workspace_mib: int | None, optimization_level: int, timing_cache: Path | None,
    hardware_compatible: bool, version_compatible: bool, force: bool, seed: int, as_json: bool,
) -> None:
    """Make the FP16/INT8 graph (validated on the CPU), then build and validate the TensorRT engine.

    Exit 3 when the graph is ready but this machine cannot build the engine (no TensorRT or GPU).
    """
    from ..errors import EngineUnavailable, UsageError
    from ..onnx.int8 import CALIBRATION_METHODS
    from ..steps.engine import EngineOptions, build_engine_artifact, check_options
    from ..steps.precision import PrecisionOptions, build_precision_artifact, open_parent
    from ..steps.validate import raise_if_failed

    if calib_method not in CALIBRATION_METHODS:
        choices = ", ".join(CALIBRATION_METHODS)
        raise UsageError(f"--calib-method {calib_method!r} is unknown; choose one of {choices}")
    engine_opts = EngineOptions(
        out_dir=engine_out, force=force, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace_mib=workspace_mib, optimization_level=optimization_level, timing_cache=timing_cache,
        hardware_compatible=hardware_compatible, version_compatible=version_compatible, val_images=val_images,
        seed=seed,
    )
    check_options(engine_opts)  # before the slow precision step
    source = open_parent(artifact)
    source_dir = source.directory.absolute()
    summary: dict[str, Any] = {"artifact": str(source_dir), "precision": source.precision}
    if precision is not None and precision != source.precision:
        opts = PrecisionOptions(precision, source_dir, out_dir, force, calib, calib_method, calib_images, calib_batch,
                                val_images, seed, target)
        summary = build_precision_artifact(opts, Progress(enabled=True))
        summary["precision"] = precision
        if not as_json:
            click.echo(_precision_text(summary))
        if not summary["validation"]["passed"]:
            if as_json:
                click.echo(json.dumps(summary, indent=2))
            raise_if_failed(summary)  # exit 2: the failing graph stays on disk, nothing goes to TensorRT
    if target == "cpu":  # a CPU graph is the finished artifact: it runs on OpenVINO, not TensorRT
        if precision != "int8":
            raise UsageError("--target cpu makes an INT8 graph for the CPU path: add --int8 --calib ...")
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            click.echo(f"CPU graph ready (no TensorRT engine for --target cpu): run it with "
                       f"vit_deploy.runtime.open('{summary['artifact']}', 'openvino'), or check it with "
                       f"vit-deploy compare {summary['artifact']} --backend openvino")
        return
    engine_opts = dataclasses.replace(engine_opts, artifact=Path(summary["artifact"]))
    try:
        engine = build_engine_artifact(engine_opts, Progress(enabled=True))
    except EngineUnavailable as e:
        summary["engine"] = {"built": False, "reason": str(e)}
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        raise
    summary["engine"] = {"built": True, **engine}
    click.echo(json.dumps(summary, indent=2) if as_json else _engine_text(engine))
    raise_if_failed(engine)


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--reference", default="pytorch", show_default=True,
              help="'pytorch' (the model rebuilt from the manifest) or another artifact folder, e.g. the FP32 export.")
@click.option("--images", default=None,
              help="Real images: a folder (labels.csv adds accuracy) or a definition file; default: seeded random.")
@click.option("--max-images", type=int, default=None, help="Use at most N images (seeded sample).")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Batch sizes to run the artifact at.")
@click.option("--backend", default=None,
              help="Run the artifact on: tensorrt, onnxruntime, openvino (default: the artifact's own).")
@click.option("--provider", default="cpu", show_default=True,
              help="ONNX Runtime provider for ONNX artifacts: cpu, cuda or tensorrt.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs and sampling.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def compare(
    artifact: Path, reference: str, images: str | None, max_images: int | None, batch_sizes: str,
    backend: str | None, provider: str, seed: int, as_json: bool,
) -> None:
    """Run ARTIFACT and its reference on the same inputs; exit 2 when outside the precision's bounds."""
    from ..compare import CompareOptions, compare_artifact, format_table, parse_batch_sizes
    from ..errors import ValidationFailed

    opts = CompareOptions(artifact, reference, images, parse_batch_sizes(batch_sizes), max_images, seed, provider,
                          backend)
    summary = compare_artifact(opts, Progress(enabled=True))
    click.echo(json.dumps(summary, indent=2) if as_json else format_table(summary))
    if not summary["passed"]:
        raise ValidationFailed(f"{artifact} is outside the {summary['precision']} bounds (table above)")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the artifact's files.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def inspect(artifact: Path, no_verify: bool, as_json: bool) -> None:
    """Show what an artifact holds: ONNX opset, I/O and ops, or an engine's layers and precisions."""
    from ..inspection import format_inspection, inspect_artifact

    summary = inspect_artifact(artifact, verify=not no_verify)
    click.echo(json.dumps(summary, indent=2) if as_json else format_inspection(summary))


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--artifact", type=click.Path(path_type=Path), required=True, help="The artifact folder to run.")
@click.option("--backend", default=None, help="tensorrt, onnxruntime or pytorch (default: the artifact's own).")
@click.option("--top", "top_k", type=int, default=5, show_default=True, help="Classes to show per image.")
@click.option("--labels", "labels_file", default=None,
              help="A file with one class name per line (default: ImageNet names for 1000 classes).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def predict(
    images: tuple[str, ...], artifact: Path, backend: str | None, top_k: int, labels_file: str | None, as_json: bool,
) -> None:
    """Top-k classes with probabilities for each image."""
    from ..predict import predict as run_predict

    results = run_predict(list(images), artifact, top_k=top_k, backend=backend, labels_file=labels_file)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for r in results:
        click.echo(r["image"] + ("" if r["pretrained"] else "  (random weights: these labels mean nothing)"))
        for t in r["top"]:
            click.echo(f"  {t['probability']:7.2%}  {t['label']} ({t['class']})")


def _engine_text(s: dict[str, Any]) -> str:
    t, v = s["tensorrt"], s["validation"]
    met = v["metrics"]
    counts = (t.get("inspector") or {}).get("precision_counts") or {}
    return "\n".join([
        f"TensorRT {t['version']} engine ({s['precision'].upper()}) for {t['gpu']} "
        f"(compute capability {t['compute_capability']}) from {s['parent']}",
        f"  file      {s['model_file']} ({s['bytes'] / 1e6:.1f} MB)",
        f"  profile   {t.get('profile')}",
        "  layers    " + (", ".join(f"{p} {n}" for p, n in counts.items()) or "not inspected"),
        f"  checked   on {v['inputs']} at batch {', '.join(map(str, v['batch_sizes']))} vs {v['reference']}",
        f"  parity    cosine {met['min_cosine']:.7f}, rel L2 {met['rel_l2']:.2e}, "
        f"top-1 agreement {met['top1_agreement']:.2%}",
        f"  verdict   {'PASS' if v['passed'] else 'FAIL: ' + '; '.join(v['failures'])}",
    ])


def _precision_text(s: dict[str, Any]) -> str:
    art, v = Artifact(Path(s["artifact"]), s["manifest"]), s["validation"]
    met, tol = v["metrics"], v["tolerance"]
    lines = [
        f"{art.precision.upper()} graph of {art.variant} @ {art.img_size} from {s['parent']}",
        f"  file      {s['model_file']} ({s['bytes'] / 1e6:.1f} MB)",
        f"  policy    {_policy_text(art.section('precision_policy'))}",
    ]
    if art.section("calibration"):
        c = art.section("calibration")
        lines.append(f"  calib     {c['images']} images ({c['skipped']} skipped), {c['method']}, batch {c['batch']}")
    lines += [
        f"  checked   on {v['inputs']} vs {v['reference']}",
        f"  parity    cosine {met['min_cosine']:.7f} (>= {tol.get('min_cosine')}), rel L2 {met['rel_l2']:.2e}, "
        f"top-1 agreement {met['top1_agreement']:.2%}"
        + ("" if v["top1_agreement_gated"] else " (not gated: random weights)"),
    ]
    if "accuracy" in met:
        lines.append(f"  accuracy  top-1 {met['accuracy']:.2%} vs FP32 {met['reference_accuracy']:.2%} "
                     f"(drop {met['accuracy_drop_points']:.2f} points, limit {tol.get('max_accuracy_drop')})")
    lines.append(f"  verdict   {'PASS' if v['passed'] else 'FAIL: ' + '; '.join(v['failures'])}")
    return "\n".join(lines)


def _policy_text(policy: dict[str, Any]) -> str:
    if "keep_fp32_ops" in policy:
        return f"FP16, kept in FP32: {', '.join(policy['keep_fp32_ops']) or 'nothing'}; FP32 inputs/outputs"
    return f"INT8 Q/DQ on {', '.join(policy['op_types'])}; attention {policy['attention']}"


def _export_text(s: dict[str, Any]) -> str:
    art, v = Artifact(Path(s["artifact"]), s["manifest"]), s["validation"]
    io, onnx_section = art.io, art.section("onnx")
    pretrained = "pretrained" if art.pretrained else "NOT PRETRAINED"
    shape = lambda e: f"{e['name']} [{', '.join(map(str, e['shape']))}] {e['dtype']}"  # noqa: E731
    simplified = "onnxsim" if s["simplified"] else f"not simplified: {onnx_section['simplify_note']}"
    w, tol = v["metrics"], v["tolerance"]
    batches = ",".join(str(b) for b in v["batch_sizes"])
    verdict = "PASS" if v["passed"] else "FAIL"
    return "\n".join([
        f"Exported {art.variant} @ {art.img_size} ({art.num_classes} classes, {pretrained})",
        f"  file      {s['model_file']}",
        f"  size      {s['bytes'] / 1e6:.1f} MB in {len(s['files'])} file(s)",
        f"  nodes     {s['nodes_exported']} -> {s['nodes']} ({simplified})",
        f"  graph     opset {onnx_section['opset']}: {shape(io['inputs'][0])} -> {shape(io['outputs'][0])}",
        f"  parity    ONNX Runtime vs PyTorch at batch {batches}: rel L2 {w['rel_l2']:.1e} "
        f"(<= {tol['max_rel_l2']:.0e}), max abs {w['max_abs']:.1e} (<= {tol['max_abs']:.0e}): {verdict}",
        f"  manifest  {Path(s['artifact']) / 'manifest.json'}",
    ])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print every probe as JSON on stdout.")
def doctor(as_json: bool) -> None:
    """What this machine can do: GPU/driver/CUDA, TensorRT, ONNX Runtime providers, OpenVINO, Triton.

    Every "can't" comes with the reason and the command that fixes it. Always exits 0.
    """
    from ..doctor import format_report, report

    r = report()
    click.echo(json.dumps(r, indent=2) if as_json else format_report(r))


def _add_commands() -> None:
    # long commands live in their own packages; importing them loads no numerical library
    from .bench import bench, bench_build
    from .serving import serve, triton_load, triton_repo

    for command in (bench, bench_build, triton_repo, serve, triton_load):
        cli.add_command(command)


_add_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns library errors into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="vit-deploy", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:  # bad options: click's message, but exit 1 as for any user error
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(1)
    except click.exceptions.Abort as e:  # click turns Ctrl-C (and EOF at a prompt) into Abort
        if isinstance(e.__cause__, KeyboardInterrupt):
            click.echo("interrupted: nothing was left behind that looks finished", err=True)
            sys.exit(130)
        click.echo("error: aborted", err=True)
        sys.exit(1)
    except VitDeployError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
