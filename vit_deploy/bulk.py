"""Bulk prediction into Parquet: ``vit-deploy predict ARTIFACT --source SRC --output OUT [--ray ADDRESS]``.

One per-batch function, :class:`BatchPredictor` (image ids in, a pyarrow table of results out,
through :func:`vit_deploy.runtime.open` and the manifest's preprocessing), runs either here, in
this process, or as Ray Data's ``map_batches`` actors on a cluster (:mod:`.bulk_ray`, the thin
adapter): the same runner code serves one process and a cluster.

- **Sources**: a folder (searched recursively, as ``predict`` does), a list file (one path per
  line, relative to the file's folder; blank lines and ``#`` comments skipped), or an
  ``s3://bucket/prefix`` (every image key under it, read by the workers with boto3).
- **Output**: a folder of Parquet files ``part-*.parquet`` (one dataset: ``pandas.read_parquet(OUT)``)
  with one row per image: ``image``, ``error`` (null when it ran), ``top_classes``, ``top_scores``
  (softmax probabilities, most likely first), ``top_label``, with ``--logits`` ``logits`` and with
  ``--embedding`` ``embedding`` (the pre-head embedding: the class token after the final LayerNorm,
  float32 [dim], from the same pass; runtime/embedding.py). Beside them ``_bulk.json`` records the
  artifact (its model file's sha256), source and settings.
- **Nothing lost, nothing twice.** This process writes every part (atomically, each a few thousand
  rows as results stream in), keyed by image: a rerun skips the images already in a part
  (resumable; a part is whole or absent), a result that arrives twice (a retried Ray task) is
  written once, and the run fails if any image has no row. An image that cannot be read or
  decoded gets a row with its ``error``; the run goes on.
- **Refused**: an output written for another artifact or other settings, an output folder that
  holds other files, ``--embedding`` from a TensorRT engine (it binds the logits only): all before
  anything is written.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import objectstore
from .errors import ArtifactError, UsageError

STATE_FILE = "_bulk.json"
STATE_SCHEMA = "vit-deploy/bulk-predictions"
PART_ROWS = 4096  # rows per Parquet part: a killed driver loses at most this much finished work


@dataclass
class BulkOptions:
    artifact: Path
    source: str
    output: Path
    ray_address: str | None = None  # None: in this process
    top_k: int = 5
    batch_size: int = 32
    workers: int | None = None  # Ray: runner actors (default: one per CPU, or per GPU for engines)
    logits: bool = False
    embedding: bool = False  # also the pre-head embedding, per image
    backend: str | None = None
    labels_file: str | None = None
    threads: int | None = None  # runtime threads per runner (None: the runtime's default here, 1 per Ray worker)
    part_rows: int = PART_ROWS


# -- sources -------------------------------------------------------------------------------------------------------

def list_images(source: str) -> list[str]:
    """Every image the source names, as ids the workers read: absolute paths, or s3:// URLs. Sorted."""
    if objectstore.is_url(source):
        location = objectstore.parse(source, "--source")
        s3 = objectstore.client()
        with objectstore.s3_errors(location, "list", s3):
            keys = objectstore.list_keys(s3, location)
        from .images.decode import is_image_file

        images = [f"{location.url}/{k}" for k in sorted(keys) if is_image_file(k)]
    else:
        path = Path(source)
        if path.is_file() and not _looks_like_image(path):
            images = _read_list(path)
        else:
            from .images.decode import find_images

            images = [str(p.absolute()) for p in find_images(path)]
    if not images:
        raise UsageError(f"--source {source} names no image; give a folder of images, a list file or an s3:// prefix")
    return images


def _looks_like_image(path: Path) -> bool:
    from .images.decode import is_image_file

    return is_image_file(path)


def _read_list(path: Path) -> list[str]:
    from .images.files import read_text

    base = path.absolute().parent
    lines = [ln.strip() for ln in read_text(path, "image list", limit=1 << 30).splitlines()]
    out = [ln if objectstore.is_url(ln) or os.path.isabs(ln) else str(base / ln)
           for ln in lines if ln and not ln.startswith("#")]
    return list(dict.fromkeys(out))  # an image named twice is predicted once


def read_image(image: str, s3_client=None) -> bytes:
    """The bytes of one image id (a path, or an s3:// URL).

    UsageError: this image cannot be read (recorded in its row). ArtifactError: the store failed
    (credentials, network): that stops the run, since a rerun would then predict the image.
    """
    if image.startswith(objectstore.SCHEME):
        bucket, _, key = image[len(objectstore.SCHEME):].partition("/")
        s3 = s3_client or objectstore.client()
        try:
            with objectstore.s3_errors(image, "read", s3):
                return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ArtifactError as e:
            if "NoSuchKey" in str(e):  # deleted since it was listed: this image's problem, not the store's
                raise UsageError(f"cannot read image {image}: it no longer exists") from e
            raise
    from .images.files import open_regular

    try:
        with open_regular(image, "image") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read image {image}: {e.strerror or e}") from e


# -- the per-batch function ----------------------------------------------------------------------------------------

class BatchPredictor:
    """``{"image": ids}`` -> a pyarrow table of results; one runner per instance (one per Ray actor / worker slot)."""

    def __init__(self, artifact: str, backend: str | None, top_k: int, logits: bool, labels_file: str | None,
                 threads: int | None = None, embedding: bool = False) -> None:
        from . import runtime
        from .predict import class_names

        self.runner = runtime.open(artifact, backend, threads=threads)
        self.names = class_names(self.runner.num_classes, labels_file)
        self.top_k = min(top_k, self.runner.num_classes)
        self.logits = logits
        self.embedding = embedding
        self.outputs = ("logits", "embedding") if embedding else ("logits",)
        try:
            self.runner.check_outputs(self.outputs)  # a runner that cannot give them fails here, before any image
        except Exception:
            self.runner.close()
            raise
        self._s3 = None

    def __call__(self, batch: Any):
        import pyarrow as pa

        from .images.decode import decode_rgb, preprocess
        from .predict import softmax

        images = [str(x) for x in (batch["image"].to_pylist() if hasattr(batch["image"], "to_pylist")
                                   else batch["image"])]
        arrays, errors = [], [None] * len(images)
        for i, image in enumerate(images):
            try:
                if image.startswith(objectstore.SCHEME) and self._s3 is None:
                    self._s3 = objectstore.client()
                arrays.append((i, preprocess(decode_rgb(read_image(image, self._s3), image),
                                             self.runner.preprocessing)))
            except (UsageError, ValueError, MemoryError) as e:  # this image's fault: recorded; the batch goes on
                errors[i] = str(e) or type(e).__name__
        classes: list[list[int] | None] = [None] * len(images)
        scores: list[list[float] | None] = [None] * len(images)
        labels: list[str | None] = [None] * len(images)
        logits_col: list[list[float] | None] = [None] * len(images)
        embedding_col: list[list[float] | None] = [None] * len(images)
        if arrays:
            found = self.runner.infer(np.stack([a for _, a in arrays]), outputs=self.outputs)
            logits = found["logits"].astype(np.float32)
            probs = softmax(logits.astype(np.float64))
            for j, ((i, _), row, p) in enumerate(zip(arrays, logits, probs, strict=True)):
                order = np.argsort(-p, kind="stable")[:self.top_k]
                classes[i], scores[i] = order.tolist(), p[order].astype(np.float32).tolist()
                labels[i] = self.names[order[0]]
                if self.logits:
                    logits_col[i] = row.tolist()
                if self.embedding:
                    embedding_col[i] = found["embedding"][j].astype(np.float32).tolist()
        columns = {"image": pa.array(images, pa.string()), "error": pa.array(errors, pa.string()),
                   "top_classes": pa.array(classes, pa.list_(pa.int32())),
                   "top_scores": pa.array(scores, pa.list_(pa.float32())),
                   "top_label": pa.array(labels, pa.string())}
        if self.logits:
            columns["logits"] = pa.array(logits_col, pa.list_(pa.float32()))
        if self.embedding:
            columns["embedding"] = pa.array(embedding_col, pa.list_(pa.float32()))
        return pa.table(columns)


# -- the output folder ---------------------------------------------------------------------------------------------

def predictor_kwargs(opts: BulkOptions, artifact_dir: str, threads: int | None) -> dict[str, Any]:
    """What a :class:`BatchPredictor` is made with, in this process and in every Ray actor alike."""
    return {"artifact": artifact_dir, "backend": opts.backend, "top_k": opts.top_k, "logits": opts.logits,
            "labels_file": opts.labels_file, "threads": threads, "embedding": opts.embedding}


def _state(opts: BulkOptions, artifact_sha: str) -> dict[str, Any]:
    return {"schema": STATE_SCHEMA, "artifact_sha256": artifact_sha, "source": opts.source,
            "top_k": opts.top_k, "logits": opts.logits, "embedding": opts.embedding, "labels_file": opts.labels_file}


def prepare_output(opts: BulkOptions, artifact_sha: str) -> set[str]:
    """Create or check the output folder; returns the images already done there."""
    import pyarrow.parquet as pq

    from .fileio import write_output

    out = Path(opts.output)
    want = _state(opts, artifact_sha)
    state_path = out / STATE_FILE
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out} exists and is not a folder; give a folder for the Parquet dataset")
    if state_path.is_file():
        try:
            have = json.loads(state_path.read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{state_path} is unreadable ({e}); choose another --output") from e
        if have.get("artifact_sha256") != artifact_sha:
            raise UsageError(f"--output {out} holds predictions of another artifact (model sha256 "
                             f"{str(have.get('artifact_sha256'))[:12]}...); choose another --output folder")
        have.setdefault("embedding", False)  # written before --embedding existed: no embedding column
        changed = [k for k in ("top_k", "logits", "embedding", "labels_file") if have.get(k) != want[k]]
        if changed:
            raise UsageError(f"--output {out} was written with other settings ({', '.join(changed)}: "
                             f"{', '.join(str(have.get(k)) for k in changed)}); use them again to resume, or choose "
                             "another --output folder")
    elif out.is_dir() and any(p for p in out.iterdir()):
        raise UsageError(f"--output {out} holds files that are not vit-deploy predictions; choose an empty or new "
                         "folder")
    else:
        write_output(state_path, json.dumps(want, indent=2) + "\n")
    done: set[str] = set()
    for part in sorted(out.glob("part-*.parquet")):
        done.update(pq.read_table(part, columns=["image"]).column("image").to_pylist())
    return done


class PartWriter:
    """Collects result rows and writes them as Parquet parts, atomically, once per image."""

    def __init__(self, output: Path, done: set[str], part_rows: int) -> None:
        self.output, self.done, self.part_rows = Path(output), done, part_rows
        self.pending: list[Any] = []
        self.rows = self.failed = self.duplicates = 0
        self._seq = 0
        self._stamp = uuid.uuid4().hex[:12]  # this run's parts never take the name of an earlier run's

    def add(self, table) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        images = table.column("image").to_pylist()
        keep = []
        for i, image in enumerate(images):
            if image in self.done:
                self.duplicates += 1  # a retried task's result, or an image of a part already written
            else:
                self.done.add(image)
                keep.append(i)
        if keep:
            table = table.take(pa.array(keep))
            self.failed += int(pc.sum(pc.is_valid(table.column("error"))).as_py() or 0)
            self.rows += table.num_rows
            self.pending.append(table)
        if sum(t.num_rows for t in self.pending) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .fileio import atomic_write_bytes

        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending = []
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self._seq += 1
        atomic_write_bytes(self.output / f"part-{self._stamp}-{self._seq:05d}.parquet", buffer.getvalue())


def run_bulk(opts: BulkOptions) -> dict[str, Any]:
    """Predict every image of ``opts.source`` not yet in ``opts.output``; returns a summary."""
    from . import artifact as artifact_view

    _require_pyarrow()
    for name in ("top_k", "batch_size", "part_rows", "threads", "workers"):
        value = getattr(opts, name)
        if (value is not None or name not in ("threads", "workers")) and (not isinstance(value, int) or value < 1):
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    art = artifact_view.open(opts.artifact, verify=True)  # once here; the workers skip it
    if opts.embedding:  # refused before the output folder is touched (and on Ray, before the cluster is)
        from .runtime.embedding import check_available

        check_available(art, opts.backend)
    model_sha = next(e["sha256"] for e in art.manifest["files"] if e["role"] == "model")
    images = list_images(opts.source)
    done = prepare_output(opts, model_sha)
    todo = [image for image in images if image not in done]
    writer = PartWriter(opts.output, set(done), opts.part_rows)
    start = time.perf_counter()
    engine = "this process"
    if todo:
        if opts.ray_address is None:
            predictor = BatchPredictor(**predictor_kwargs(opts, str(art.directory), opts.threads))
            try:
                for i in range(0, len(todo), opts.batch_size):
                    writer.add(predictor({"image": todo[i:i + opts.batch_size]}))
            finally:
                writer.flush()
                predictor.runner.close()
        else:
            from .bulk_ray import run_on_ray

            try:
                engine = run_on_ray(opts, art.kind, todo, writer.add, BatchPredictor,
                                    lambda threads: predictor_kwargs(opts, str(art.directory), threads))
            finally:
                writer.flush()
    missing = [image for image in todo if image not in writer.done]
    if missing:
        raise ArtifactError(f"{len(missing)} images got no result (e.g. {missing[0]}); run the same command again: "
                            "it predicts only what is missing")
    return {"output": str(Path(opts.output).absolute()), "images": len(images), "done": writer.rows,
            "failed": writer.failed, "skipped": len(images) - len(todo), "duplicates_dropped": writer.duplicates,
            "engine": engine, "wall_s": time.perf_counter() - start}


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise UsageError(f"bulk prediction writes Parquet with pyarrow ({e}); pip install 'vit-deploy[scale]'") from e
