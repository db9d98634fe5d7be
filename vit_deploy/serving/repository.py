"""Write a Triton model repository from vit-deploy artifacts: ``vit-deploy triton-repo``.

Layout (one model per artifact, or with ``as_versions`` one model whose versions 1..N are the artifacts)::

    OUT/<model>/config.pbtxt
    OUT/<model>/<version>/model.plan | model.onnx (+ external data) | model.py + artifact/

Every ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf message (the schema
``tritonclient.grpc.model_config_pb2`` ships), written with ``text_format`` and parsed back, so
a field name or enum the server would reject fails here, at generation time.

The python-backend model gets a *copy* of the artifact in its version folder rather than an
absolute path to it: the repository stays self-contained (it can be moved, mounted in a container
or shipped to another host), and what is served is exactly what was hash-checked here, even if
the original artifact folder is changed or deleted later. The copy is verified again when the
model loads (``vit_deploy.runtime.open`` checks the sha256 of every file).

A dynamic-resolution artifact's input is ``[3, -1, -1]`` (Triton's variable dimensions), from the
manifest's range, never from the graph; the range itself travels in a config parameter
(``vit_deploy_sizes``) so clients know which sizes to send, and the python backend checks each
request's size against it (a TensorRT plan's own profile bounds what the tensorrt backend takes).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import artifact as artifact_view
from ..artifact import Artifact
from ..errors import ArtifactError, UsageError
from ..fileio import REPOSITORY, check_can_write, mark_repository, staged_directory
from ..specs import TRITON_BACKENDS
from . import triton_model
from .config import model_config_pb2, parse_config

BACKENDS = TRITON_BACKENDS
PREPROCESSING_PARAM = "vit_deploy_preprocessing"  # clients read the manifest's preprocessing from here
SIZES_PARAM = "vit_deploy_sizes"  # a dynamic-resolution model's range (specs.ResolutionRange as JSON)
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "int32": "TYPE_INT32"}
# A model name is a folder of the repository and a segment of every request URL: no separators,
# no ".", ".." or hidden names, nothing a shell or URL would need to quote.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: str, option: str = "--name") -> str:
    """``name`` if it is a safe Triton model name; a UsageError saying what is allowed otherwise."""
    if not NAME_RE.match(name):
        raise UsageError(f"{option} {name!r} is not a usable model name: start with a letter or digit and use only "
                         "letters, digits, '_', '.' and '-' (at most 128 characters), e.g. vit-b16")
    return name


@dataclass
class RepoOptions:
    artifacts: list[Path]
    out: Path
    backend: str = "auto"  # auto: tensorrt_plan for engines, onnxruntime_onnx for graphs
    name: str | None = None  # model name (one artifact, or as_versions); default vit-<artifact folder>
    version: int = 1  # first version number
    as_versions: bool = False  # all artifacts as versions of one model (they must share their I/O)
    instances: int = 1
    instance_kind: str | None = None  # cpu | gpu; default gpu for plans, cpu otherwise
    max_batch: int | None = None  # >= 1 (Triton's 0, no batching, is not offered); default: the profile's max, or 32
    preferred_batch: tuple[int, ...] | None = None  # default: powers of two up to max_batch, at most 3
    queue_delay_us: int = 2000
    threads: int | None = None  # python backend: threads of the runtime in each instance
    cuda_graphs: bool = True  # plans only
    force: bool = False
    allow_failed: bool = False  # serve an artifact whose validation failed (refused otherwise)


def _io(art: Artifact, directory: Path) -> tuple[dict, dict]:
    io = art.io
    if len(io["inputs"]) != 1 or len(io["outputs"]) != 1:
        raise ArtifactError(f"{directory}: expected one input and one output in the manifest's io")
    return io["inputs"][0], io["outputs"][0]


def _tensor(pb2, spec: dict[str, Any], directory: Path, dims: list[int] | None = None):
    """A ModelInput/ModelOutput's fields; ``dims`` (without the batch) default to the manifest's shape."""
    dtype = DTYPES.get(spec["dtype"])
    if dtype is None:
        raise ArtifactError(f"{directory}: tensor {spec['name']} has dtype {spec['dtype']}, which Triton configs here "
                            f"do not map; supported: {', '.join(DTYPES)}")
    if dims is None:
        dims = [int(d) for d in spec["shape"][1:]]  # the first dimension is the batch, implied by max_batch_size
    return dict(name=spec["name"], data_type=pb2.DataType.Value(dtype), dims=dims)


def _input_dims(art: Artifact) -> list[int]:
    """[C, H, W] of one image; a dynamic-resolution artifact's H and W are -1 (any size; its range is checked)."""
    c, h, w = art.chw
    return [c, -1, -1] if art.resolution_range is not None else [c, h, w]


def _max_batch(opts: RepoOptions, art: Artifact) -> int:
    if art.kind == "tensorrt":
        engine_max = art.engine_max_batch
        if engine_max is None:
            raise ArtifactError("the engine's manifest has no optimization profile; rebuild it with build-engine")
        if opts.max_batch is not None and opts.max_batch > engine_max:
            raise UsageError(f"--max-batch {opts.max_batch} exceeds the engine profile's maximum batch {engine_max}")
        return opts.max_batch or engine_max
    return opts.max_batch or 32


def _preferred(opts: RepoOptions, max_batch: int) -> list[int]:
    if opts.preferred_batch:
        bad = [b for b in opts.preferred_batch if not 1 <= b <= max_batch]
        if bad:
            raise UsageError(f"--preferred-batch {bad} outside 1..{max_batch} (the model's max_batch_size)")
        return sorted(set(opts.preferred_batch))
    # the largest few powers of two: full batches are what a GPU/CPU runs most efficiently
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= max_batch]
    return sizes[-3:] if max_batch in sizes else [*sizes[-2:], max_batch]


def local_server_backends() -> set[str] | None:
    """The backends of the tritonserver ``vit-deploy serve`` would run here (None: no server, or unknown)."""
    from .server import ServerError, available_backends, find_tritonserver

    try:
        _, pytriton_root = find_tritonserver()
    except ServerError:
        return None
    return available_backends(pytriton_root / "backends" if pytriton_root else None)


def resolve_backend(requested: str, kind: str, directory: Path,
                    have: set[str] | None = None) -> tuple[str, str | None]:
    """(backend, note): ``auto`` picks the native backend, or python where the local server ``have`` lacks it.

    The note (None if there is nothing to say) tells the user at generation time what ``serve``
    here would otherwise refuse later.
    """
    if requested not in BACKENDS:
        raise UsageError(f"unknown --backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "onnxruntime" and kind != "onnx":
        raise UsageError(f"{directory} is a {kind} artifact; --backend onnxruntime needs an ONNX graph")
    if requested == "tensorrt" and kind != "tensorrt":
        raise UsageError(f"{directory} is an ONNX graph; --backend tensorrt needs an engine (vit-deploy build-engine)")
    native = "tensorrt" if kind == "tensorrt" else "onnxruntime"
    backend = native if requested == "auto" else requested
    if have is None or backend in have:
        return backend, None
    server = f"the tritonserver here (backends: {', '.join(sorted(have)) or 'none'})"
    if requested == "auto" and "python" in have:
        return "python", (f"--backend auto chose python: {server} cannot load {native}; "
                          f"pass --backend {native} to write for a full Triton install")
    return backend, f"{server} cannot load {backend}; serve this repository with a Triton install that has it"


def build_config(opts: RepoOptions, art: Artifact, directory: Path, name: str, backend: str):
    """The ModelConfig message for one model (without writing anything)."""
    pb2 = model_config_pb2()
    inp, out = _io(art, directory)
    max_batch = _max_batch(opts, art)
    kind = opts.instance_kind or ("gpu" if backend == "tensorrt" else "cpu")
    if backend == "tensorrt" and kind != "gpu":
        raise UsageError("a TensorRT plan runs on a GPU only; drop --instance-kind cpu")
    config = pb2.ModelConfig(
        name=name,
        max_batch_size=max_batch,
        input=[pb2.ModelInput(**_tensor(pb2, inp, directory, _input_dims(art)))],
        output=[pb2.ModelOutput(**_tensor(pb2, out, directory))],
        dynamic_batching=pb2.ModelDynamicBatching(
            preferred_batch_size=_preferred(opts, max_batch), max_queue_delay_microseconds=opts.queue_delay_us
        ),
        instance_group=[pb2.ModelInstanceGroup(
            count=opts.instances,
            kind=pb2.ModelInstanceGroup.Kind.Value("KIND_GPU" if kind == "gpu" else "KIND_CPU"),
        )],
    )
    if backend == "tensorrt":
        config.platform = "tensorrt_plan"
        config.backend = "tensorrt"
        config.default_model_filename = "model.plan"
        # CUDA graphs cut the per-launch CPU overhead, which is what limits small batches on a GPU
        config.optimization.cuda.graphs = opts.cuda_graphs
    elif backend == "onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
        config.default_model_filename = "model.onnx"
    else:
        config.backend = "python"
        if opts.threads is not None:
            config.parameters["threads"].string_value = str(opts.threads)
    config.parameters[PREPROCESSING_PARAM].string_value = json.dumps(art.preprocessing.to_dict(), sort_keys=True)
    if art.resolution_range is not None:
        config.parameters[SIZES_PARAM].string_value = json.dumps(art.resolution_range.to_dict(), sort_keys=True)
    return config


def config_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def _copy_model_files(backend: str, art: Artifact, dst: Path) -> None:
    dst.mkdir(parents=True)
    if backend == "python":
        shutil.copytree(art.directory, dst / "artifact", ignore=shutil.ignore_patterns(".*"))
        shutil.copyfile(triton_model.__file__, dst / "model.py")
        return
    for role, path in art.files:
        if role == "model":  # the name Triton looks for (default_model_filename)
            shutil.copy2(path, dst / ("model.plan" if backend == "tensorrt" else "model.onnx"))
        else:  # external data keeps its name: the graph refers to it by that relative path
            shutil.copy2(path, dst / path.relative_to(art.directory))


def _default_name(directory: Path) -> str:
    return "vit-" + re.sub(r"[^A-Za-z0-9_.-]", "_", directory.name)


def check_options(opts: RepoOptions) -> None:
    """Every option's range, before any artifact is hashed: a value Triton would refuse at load fails here."""
    def _int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    at_least = {"--instances": (opts.instances, 1), "--version": (opts.version, 1),
                "--queue-delay-us": (opts.queue_delay_us, 0), "--max-batch": (opts.max_batch, 1),
                "--threads": (opts.threads, 1)}
    for option, (value, low) in at_least.items():
        if value is not None and not (_int(value) and value >= low):
            raise UsageError(f"{option} {value!r} must be an integer >= {low}")
    if opts.name is not None:
        check_model_name(opts.name)
    if opts.name and len(opts.artifacts) > 1 and not opts.as_versions:
        raise UsageError("--name names one model; with several artifacts add --as-versions, or drop --name")


def write_repository(opts: RepoOptions) -> dict[str, Any]:
    """Check every artifact, then write the repository atomically; returns a summary of the models."""
    if not opts.artifacts:
        raise UsageError("give at least one artifact folder")
    check_options(opts)
    model_config_pb2()  # fail before any hashing when tritonclient is missing
    check_can_write(Path(opts.out).absolute(), opts.force, kind=REPOSITORY)  # and before hashing: a taken --out
    have = local_server_backends()
    notes: list[str] = []
    plans: list[tuple[str, int, Path, Artifact, str]] = []
    for i, artifact in enumerate(opts.artifacts):
        art = artifact_view.open(artifact, verify=True)  # a changed artifact is refused here, not at serving time
        directory = art.directory
        if art.failed_note and not opts.allow_failed:
            raise UsageError(f"{art.failed_note}; serving it would hand its answers to clients: rebuild it, or "
                             "pass --allow-failed to serve it anyway")
        if art.failed_note:
            notes.append(f"serving it anyway (--allow-failed): {art.failed_note}")
        backend, note = resolve_backend(opts.backend, art.kind, directory, have)
        if note and note not in notes:
            notes.append(note)
        if opts.as_versions:
            first = plans[0][2] if plans else directory
            name, version = opts.name or _default_name(first), opts.version + i
        else:
            name, version = opts.name or _default_name(directory), opts.version
        plans.append((name, version, directory, art, backend))
    names = [p[0] for p in plans]
    if not opts.as_versions and len(set(names)) != len(names):
        raise UsageError(f"two artifacts would both be model {names}; rename the folders or use --as-versions")

    models: dict[str, Any] = {}
    with staged_directory(opts.out, opts.force, kind=REPOSITORY) as staging:
        for name, version, directory, art, backend in plans:
            config = build_config(opts, art, directory, name, backend)
            text = config_text(config)
            if name in models:  # versions of one model share one config: their I/O must agree
                if models[name]["config"] != text:
                    raise UsageError(f"{directory} does not share the I/O or settings of the other versions of {name}; "
                                     "serve it as its own model (drop --as-versions)")
                models[name]["versions"].append(version)
            else:
                models[name] = {"backend": backend, "config": text, "versions": [version]}
                (staging / name).mkdir()
                (staging / name / "config.pbtxt").write_text(text)
            parse_config((staging / name / "config.pbtxt").read_text())  # what the server will read
            _copy_model_files(backend, art, staging / name / str(version))
            if backend == "python":
                Artifact(staging / name / str(version) / "artifact", art.manifest).verify()
        mark_repository(staging, list(models))  # what a later --force may replace
    return {"repository": str(Path(opts.out).absolute()), "notes": notes,
            "models": {n: {"backend": m["backend"], "versions": m["versions"]} for n, m in models.items()}}
