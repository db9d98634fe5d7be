"""``vit-deploy triton-repo``, ``serve`` and ``triton-load``: Triton model repositories, the server, a load test.

Like every command they raise ``VitDeployError`` subclasses for user errors and leave the exit
code to ``cli.main``; importing this module loads no numerical library.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import click

from ..specs import TRITON_BACKENDS
from .options import PathType, alias, aliased, artifact_argument, artifact_of, force_option, json_option

# Counts and sizes are checked when the options are parsed, before any artifact is hashed or copied.
AT_LEAST_1 = click.IntRange(min=1)
PORT = click.IntRange(0, 65535)

@click.command("triton-repo")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", default="model_repository", show_default=True,
              help="The model repository to write: a folder, or s3://BUCKET/FOLDER (needs vit-deploy[s3]; "
                   "AWS_ENDPOINT_URL for S3-compatible stores).")
@click.option("--backend", type=click.Choice(TRITON_BACKENDS), default="auto",
              show_default=True, help="auto: tensorrt_plan for engines, onnxruntime_onnx for ONNX graphs, or python "
                                      "when the tritonserver that serve would run lacks that backend (the "
                                      "nvidia-pytriton wheel's); python: vit-deploy's own runtime inside Triton.")
@click.option("--name", default=None, help="Model name (default vit-<artifact folder>).")
@click.option("--version", "version", type=AT_LEAST_1, default=1, show_default=True, help="(First) version number.")
@click.option("--as-versions", is_flag=True, help="Put all ARTIFACTS into one model as versions N, N+1, ...")
@click.option("--instances", type=AT_LEAST_1, default=1, show_default=True,
              help="Model instances (instance_group count).")
@click.option("--instance-kind", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Default: gpu for TensorRT plans, cpu otherwise.")
@click.option("--max-batch-size", type=AT_LEAST_1, default=None,
              help="Triton's max_batch_size (default: the engine profile's max, or 32).")
@alias("--max-batch", "max_batch_size", type=AT_LEAST_1)
@click.option("--preferred-batch", default=None, help="Dynamic batching preferred sizes, comma-separated.")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Longest a request waits for others to batch with (microseconds).")
@click.option("--threads", type=AT_LEAST_1, default=None, help="python backend: runtime threads per instance.")
@click.option("--no-cuda-graphs", is_flag=True, help="TensorRT plans: do not use CUDA graphs.")
@click.option("--allow-failed", is_flag=True,
              help="Serve an artifact whose validation failed (its manifest says \"passed\": false); refused "
                   "otherwise.")
@force_option
@json_option
@click.pass_context
def triton_repo(ctx, artifacts, out, backend, name, version, as_versions, instances, instance_kind, max_batch_size,
                preferred_batch, queue_delay_us, threads, no_cuda_graphs, allow_failed, force, as_json) -> None:
    """Write a Triton model repository from artifact folders (hash-checked first)."""
    from ..errors import UsageError
    from ..serving.publish import write_repository_anywhere
    from ..serving.repository import RepoOptions

    preferred = None
    if preferred_batch:
        try:
            preferred = tuple(int(b) for b in preferred_batch.split(","))
        except ValueError as e:
            raise UsageError(f"--preferred-batch takes integers separated by commas, got {preferred_batch!r}") from e
    summary = write_repository_anywhere(RepoOptions(
        list(artifacts), out, backend=backend, name=name, version=version, as_versions=as_versions,
        instances=instances, instance_kind=instance_kind, max_batch=aliased(ctx, "max_batch_size", max_batch_size),
        preferred_batch=preferred,
        queue_delay_us=queue_delay_us, threads=threads, cuda_graphs=not no_cuda_graphs, force=force,
        allow_failed=allow_failed))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for note in summary["notes"]:
        click.echo(f"note: {note}", err=True)
    click.echo(f"Wrote {summary['repository']}")
    for model, m in summary["models"].items():
        click.echo(f"  {model}: {m['backend']} backend, version(s) {', '.join(map(str, m['versions']))}")


class _StopSignal(BaseException):
    """SIGTERM or SIGHUP reached ``serve``: stop the server in order, as on Ctrl-C (BaseException: never swallowed)."""


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_stop(signum: int, _frame: Any) -> None:
    for s in _STOP_SIGNALS:  # a second signal must not cut the orderly shutdown short
        signal.signal(s, signal.SIG_IGN)
    raise _StopSignal(signal.Signals(signum).name)


@click.command("serve")
@click.argument("repository")
@click.option("--http-port", type=PORT, default=8000, show_default=True, help="0: any free port.")
@click.option("--grpc-port", type=PORT, default=8001, show_default=True, help="0: any free port.")
@click.option("--metrics-port", type=PORT, default=8002, show_default=True, help="0: any free port.")
@click.option("--log", "log_path", type=PathType, default=None,
              help="Server log file (default: a temporary file, its path printed); never inside an artifact or a "
                   "model repository.")
@click.option("--ready-timeout", type=click.FloatRange(min=0, min_open=True), default=180.0, show_default=True,
              help="Seconds to wait for the models.")
@click.option("--force", is_flag=True, help="--log: replace an existing file that is not a tritonserver log.")
def serve(repository, http_port, grpc_port, metrics_port, log_path, ready_timeout, force) -> None:
    """Run tritonserver on REPOSITORY (a folder or s3://BUCKET/FOLDER) on loopback until Ctrl-C (exit 130), SIGTERM or
    SIGHUP (exit 0).

    The server stops with this command, however it ends: in order on those signals, and by the
    kernel's parent-death signal if this process is killed outright (kill -KILL).
    """
    from ..fileio import check_output_file
    from ..serving.server import ServerError, TritonServer, is_server_log

    if log_path is not None:
        check_output_file(log_path, force, is_server_log, "--log", "tritonserver")
    server = TritonServer(repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          log_path=log_path, ready_timeout=ready_timeout)
    previous = {s: signal.signal(s, _raise_stop) for s in _STOP_SIGNALS}
    click.echo("starting tritonserver ...", err=True)
    try:
        with server:  # leaving it, however, stops the server (SIGTERM, drain, then its process group)
            click.echo(f"serving {', '.join(server.models)} from {server.repository}")
            click.echo(f"  HTTP     http://{server.http_url}")
            click.echo(f"  gRPC     {server.grpc_url}")
            click.echo(f"  metrics  {server.metrics_url}")
            click.echo(f"  log      {server.log_path}")
            click.echo("Ctrl-C to stop")
            while server.process.poll() is None:
                time.sleep(0.5)
            raise ServerError(f"tritonserver stopped unexpectedly: {server.log_errors()} (log: {server.log_path})")
    except KeyboardInterrupt:
        click.echo("tritonserver stopped", err=True)
        raise  # cli.main: exit 130
    except _StopSignal as e:
        click.echo(f"{e}: tritonserver stopped", err=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


@click.command("triton-load")
@artifact_argument()
@click.option("--url", default="127.0.0.1:8000", show_default=True, help="Server address (the gRPC port for grpc).")
@click.option("--name", default=None, help="Model name in the repository (as triton-repo --name).")
@alias("--model", "name")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option("--clients", type=AT_LEAST_1, default=8, show_default=True, help="Concurrent clients.")
@click.option("--requests", type=AT_LEAST_1, default=50, show_default=True, help="Requests per client.")
@click.option("--batch", type=AT_LEAST_1, default=1, show_default=True, help="Images per request.")
@click.option("--threads", type=AT_LEAST_1, default=None, help="Threads for the direct run.")
@json_option
@click.pass_context
def triton_load(ctx, artifact, url, name, protocol, clients, requests, batch, threads, as_json) -> None:
    """Load test: N concurrent clients x M requests; throughput, latency, errors, batching.

    ARTIFACT (optional): also run the same batches through vit_deploy.runtime directly and report Triton / direct.
    """
    from ..errors import UsageError
    from ..serving.load import run_load

    name = aliased(ctx, "name", name)
    if name is None:
        raise UsageError("give the model name in the repository: --name NAME (as triton-repo --name)")
    artifact = artifact_of(ctx, artifact, required=False)
    result = run_load(url, name, protocol=protocol, clients=clients, requests=requests, batch=batch,
                      artifact=str(artifact) if artifact else None, threads=threads)
    click.echo(json.dumps(result, indent=2) if as_json else format_load(result))


def format_load(r: dict[str, Any]) -> str:
    lat, srv = r["latency_ms"], r["server"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        f"{r['model']} over {r['protocol']}: {r['clients']} clients x {r['requests_per_client']} requests, "
        f"input {r['input']}",
        f"  completed   {r['completed']}, errors {r['errors']}"
        + (f" (e.g. {r['error_examples'][0]})" if r["error_examples"] else ""),
        f"  throughput  {r['throughput_img_s']:.1f} images/s in {r['wall_s']:.1f} s",
        f"  latency     p50 {fmt(lat['p50'])} ms, p90 {fmt(lat['p90'])} ms, p99 {fmt(lat['p99'])} ms",
        f"  batching    {srv['inference_count']} inferences in {srv['execution_count']} executions "
        f"(mean batch {fmt(srv['mean_batch'])})",
    ]
    if "direct" in r:
        lines.append(f"  direct      {r['direct']['throughput_img_s']:.1f} images/s through vit_deploy.runtime; "
                     f"Triton / direct = {r['ratio_triton_over_direct']:.2f}")
    return "\n".join(lines)
