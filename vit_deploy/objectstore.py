"""Folders on S3 (or an S3-compatible store: MinIO, Ceph, ...): ``s3://`` locations, safe publishing, reading back.

The same rules as :mod:`.fileio` for local folders, on a store that has no rename:

- **Stage.** Every file is uploaded to a hidden sibling prefix ``.NAME.partial-<id>/`` (outside
  the target, so a Triton reading ``s3://bucket/NAME`` never sees it), each PUT carrying its
  SHA-256 so the store rejects a corrupted body.
- **Verify.** The staged listing must be exactly the local files, and every object's size and
  SHA-256 (composite per part for multipart uploads, as S3 computes it) must match the local
  bytes. Until then nothing under the target has changed: an interrupted or failed upload
  leaves the old repository serving, and the staged objects are deleted.
- **Make visible.** Server-side copies into place (no data passes through this machine again),
  each model's version files before its ``config.pbtxt``, then the objects of the old
  repository that the new one lacks are deleted, and the marker is written last. S3 cannot swap
  many objects at once: for the seconds the copies take, a server that starts reads a mix. A
  marker saying ``"state": "publishing"`` (listing the old and new objects) is written before
  the copies, so a publish cut short there is still recognised as ours and ``--force`` repairs it.
- **What may be replaced.** Only a prefix holding a vit-deploy marker, and nothing the marker
  does not list, and only with ``force``; anything else is refused, naming what is there.
- **One writer at a time.** A lock object ``.NAME.lock`` beside the target, created with a
  conditional PUT (``If-None-Match: *``), held until the end; a second writer fails at once.

Client settings are boto3's standard chain: credentials (environment, profile, SSO, instance
role), region, and ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for S3-compatible stores.
boto3 is imported inside the functions that need it (``pip install 'vit-deploy[s3]'``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, UsageError
from .fileio import REPOSITORY_MARKER, REPOSITORY_SCHEMA

SCHEME = "s3://"
PART = 64 << 20  # multipart threshold and part size: what the composite checksums below assume
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names a location by URL (``scheme://...``) rather than a local path."""
    return isinstance(text, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix``: a folder in a bucket (``prefix`` has no leading or trailing slash)."""

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"

    def sibling(self, name: str) -> str:
        """A key beside the folder: ``parent/.<folder name><name>``."""
        parent, _, last = self.prefix.rpartition("/")
        return f"{parent}/.{last}{name}" if parent else f".{last}{name}"

    def __str__(self) -> str:
        return self.url


def parse(text: str, option: str = "--out") -> S3Location:
    """An ``s3://bucket/folder`` location; any other URL, or a bucket root, is a one-line UsageError."""
    if not text.startswith(SCHEME):
        scheme = text.split("://", 1)[0]
        raise UsageError(f"{option} {text}: {scheme}:// locations are not supported; give s3://BUCKET/FOLDER (S3 or "
                         "an S3-compatible store such as MinIO, with AWS_ENDPOINT_URL) or a local folder")
    bucket, _, prefix = text[len(SCHEME):].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_RE.match(bucket):
        raise UsageError(f"{option} {text}: {bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, "
                         "'.' and '-'); give s3://BUCKET/FOLDER")
    if not prefix or any(part in ("", ".", "..") for part in prefix.split("/")):
        raise UsageError(f"{option} {text}: give a folder inside the bucket, e.g. s3://{bucket}/models (vit-deploy "
                         "replaces a whole folder when it publishes, so it never writes to a bucket's root)")
    return S3Location(bucket, prefix)


# -- the client and its errors -------------------------------------------------------------------------------------

def session():
    """A boto3 session: the standard AWS settings (environment, profile, SSO, instance role; region)."""
    try:
        import boto3
    except ImportError as e:
        raise UsageError(f"s3:// locations need boto3 ({e}); pip install 'vit-deploy[s3]'") from e
    return boto3.session.Session()


def client(from_session=None):
    """A boto3 S3 client from the standard AWS settings (``AWS_ENDPOINT_URL`` included), retrying network errors."""
    boto = from_session or session()
    from botocore.config import Config

    # standard retries (3 attempts, or AWS_MAX_ATTEMPTS) with backoff: a dropped connection is retried per request
    return boto.client("s3", config=Config(retries={"mode": "standard"}, connect_timeout=10, read_timeout=60))


def endpoint_url(s3) -> str:
    return s3.meta.endpoint_url


@contextlib.contextmanager
def s3_errors(where: S3Location | str, action: str, s3=None) -> Iterator[None]:
    """Turn boto's exceptions into one line: what failed, where, and what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    endpoint = endpoint_url(s3) if s3 is not None else os.environ.get("AWS_ENDPOINT_URL", "the AWS default")
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise ArtifactError(f"cannot {action} {where}: no usable AWS credentials ({e}); set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run where an instance role gives them") from e
    except ClientError as e:
        raise ArtifactError(_client_error(e, where, action, endpoint)) from e
    except BotoCoreError as e:  # endpoint unreachable, connection dropped, timeouts: after boto's own retries
        raise ArtifactError(f"cannot {action} {where}: the S3 endpoint {endpoint} failed ({e}); check that it is "
                            "up and that AWS_ENDPOINT_URL names it, then run again (nothing half-written is "
                            "visible)") from e


def _client_error(e, where: S3Location | str, action: str, endpoint: str) -> str:
    err = e.response.get("Error", {})
    code, status = str(err.get("Code", "")), e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    bucket = where.bucket if isinstance(where, S3Location) else str(where)
    if code == "NoSuchBucket":
        return (f"cannot {action} {where}: bucket {bucket!r} does not exist at {endpoint}; create it first "
                f"(aws s3 mb s3://{bucket}), or check the name and AWS_ENDPOINT_URL")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled") or status == 403:
        return (f"cannot {action} {where}: access denied ({code or status}: {err.get('Message', '')}); use "
                "credentials allowed to list, read, write and delete objects there (s3:ListBucket, s3:GetObject, "
                "s3:PutObject, s3:DeleteObject)")
    return f"cannot {action} {where}: the store refused it ({code or status}: {err.get('Message', e)}); fix that and "\
           "run again"


# -- checksums -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalFile:
    relative: str  # posix path inside the folder: the key below the prefix
    path: Path
    size: int
    sha256: str  # hex, of the whole file (what the marker records)
    s3_checksum: str  # base64, as S3 reports ChecksumSHA256 for our upload (composite when multipart)


def describe_file(path: Path, relative: str) -> LocalFile:
    whole, parts, size = hashlib.sha256(), [], 0
    with open(path, "rb") as f:
        while chunk := f.read(PART):
            whole.update(chunk)
            parts.append(hashlib.sha256(chunk).digest())
            size += len(chunk)
    if size >= PART:  # uploaded in parts: S3 reports the SHA-256 of the parts' digests
        s3_checksum = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    else:
        s3_checksum = base64.b64encode(whole.digest()).decode()
    return LocalFile(relative, path, size, whole.hexdigest(), s3_checksum)


def local_files(folder: Path) -> list[LocalFile]:
    """Every regular file under ``folder`` (symlinks followed as the local server would), sorted by path."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        files.append(describe_file(path, path.relative_to(folder).as_posix()))
    return files


def _matches(head: dict[str, Any], want: LocalFile) -> bool:
    # AWS appends "-<parts>" to a composite checksum; some compatible stores do not
    got = str(head.get("ChecksumSHA256") or "").split("-")[0]
    return head.get("ContentLength") == want.size and got == want.s3_checksum


# -- reading a published folder ------------------------------------------------------------------------------------

def list_keys(s3, location: S3Location, prefix: str | None = None) -> list[str]:
    """Every key under ``prefix`` (default: the location's folder), relative to it."""
    base = (prefix if prefix is not None else location.prefix).rstrip("/") + "/"
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=base):
        keys += [obj["Key"][len(base):] for obj in page.get("Contents", [])]
    return keys


def read_marker(s3, location: S3Location) -> dict[str, Any] | None:
    """The repository marker at ``location`` (None: there is none, or it is not ours)."""
    try:
        body = s3.get_object(Bucket=location.bucket, Key=location.key(REPOSITORY_MARKER))["Body"].read()
        doc = json.loads(body)
    except s3.exceptions.NoSuchKey:
        return None
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == REPOSITORY_SCHEMA else None


def read_text(s3, location: S3Location, relative: str) -> str:
    return s3.get_object(Bucket=location.bucket, Key=location.key(relative))["Body"].read().decode(errors="replace")


def marker_paths(marker: dict[str, Any]) -> set[str]:
    files = marker.get("files")
    return {f["path"] for f in files if isinstance(f, dict) and isinstance(f.get("path"), str)} \
        if isinstance(files, list) else set()


def repository_models(location: S3Location) -> list[str]:
    """The models a published repository holds (folders with a config.pbtxt); ArtifactError if there are none."""
    s3 = client()
    with s3_errors(location, "read", s3):
        keys = list_keys(s3, location)
    models = sorted({k.split("/")[0] for k in keys if k.count("/") == 1 and k.endswith("/config.pbtxt")})
    if not models:
        raise ArtifactError(f"{location} holds no model (no */config.pbtxt); publish one with vit-deploy triton-repo "
                            f"ARTIFACT --out {location}, or vit-deploy publish REPOSITORY {location}")
    return models


# -- publishing ----------------------------------------------------------------------------------------------------

def _refuse_existing(keys: list[str], marker: dict[str, Any] | None, location: S3Location, force: bool) -> None:
    """Refuse unless ``location`` is empty or (with ``force``) a repository we wrote that holds nothing else."""
    if not keys:
        return
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    if marker is None:
        raise ArtifactError(f"{location} is not a vit-deploy model repository (it holds {shown}); vit-deploy replaces "
                            "only what it wrote, even with --force: choose another location, or remove those objects "
                            "yourself")
    foreign = sorted(set(keys) - marker_paths(marker) - {REPOSITORY_MARKER})
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ArtifactError(f"{location} is a vit-deploy model repository but also holds objects vit-deploy did not "
                            f"write ({', '.join(foreign[:3])}{more}), which replacing it would delete: move them away "
                            "(then --force replaces it), or choose another location")
    if not force:
        raise ArtifactError(f"{location} already holds a vit-deploy model repository; pass --force to replace it, or "
                            "choose another location")


def _visible_order(files: list[LocalFile]) -> list[LocalFile]:
    """Within each model, its version files before its config.pbtxt: a model is complete when its config appears."""
    return sorted(files, key=lambda f: (f.relative.split("/")[0], f.relative.endswith("config.pbtxt") and
                                        f.relative.count("/") == 1, f.relative))


class Publisher:
    """Publish a local folder to ``location``; a context manager holding the writer's lock.

        with Publisher(location, force) as publisher:   # the lock and the checks: fails at once
            ...                                          # slow local work (writing the repository)
            summary = publisher.publish(folder)

    Leaving the block, however, deletes staged objects and releases the lock.
    """

    def __init__(self, location: S3Location, force: bool = False, progress=None) -> None:
        self.location, self.force, self.progress = location, force, progress
        self.s3 = None
        self._lock_key = location.sibling(".lock")
        self._staging: str | None = None
        self._locked = False

    def __enter__(self) -> Publisher:
        self.s3 = client()
        with s3_errors(self.location, "publish to", self.s3):
            self._lock()
            try:
                self._check()
            except BaseException:
                self._unlock()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._staging is not None:
                with contextlib.suppress(Exception):  # best effort: the failure that got us here matters more
                    self._delete([self._staging + "/" + k for k in list_keys(self.s3, self.location, self._staging)])
        finally:
            self._unlock()

    def _lock(self) -> None:
        from botocore.exceptions import ClientError

        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()
        try:
            self.s3.put_object(Bucket=self.location.bucket, Key=self._lock_key, Body=body, IfNoneMatch="*")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            raise ArtifactError(
                f"another vit-deploy is publishing to {self.location} right now ({self._holder()}); wait for it to "
                f"finish, or if that run died, delete its lock: aws s3 rm s3://{self.location.bucket}/{self._lock_key}"
            ) from None
        self._locked = True

    def _holder(self) -> str:
        with contextlib.suppress(Exception):
            doc = json.loads(self.s3.get_object(Bucket=self.location.bucket, Key=self._lock_key)["Body"].read())
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc["since"]))
            return f"pid {doc['pid']} on {doc['host']}, since {since}"
        return "lock holder unknown"

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            with contextlib.suppress(Exception):
                self.s3.delete_object(Bucket=self.location.bucket, Key=self._lock_key)

    def _check(self) -> tuple[list[str], dict[str, Any] | None]:
        keys = list_keys(self.s3, self.location)
        marker = read_marker(self.s3, self.location) if keys else None
        _refuse_existing(keys, marker, self.location, self.force)
        return keys, marker

    def _delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": k} for k in keys[i:i + _DELETE_BATCH]]
            self.s3.delete_objects(Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True})

    def _note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.note(text)

    def publish(self, folder: Path) -> dict[str, Any]:
        """Stage, verify, make visible (module docstring). Returns {repository, objects, bytes, replaced}."""
        from boto3.s3.transfer import TransferConfig

        # the local marker lists only the models; the one written here lists every object with its hash
        files = [f for f in local_files(folder) if f.relative != REPOSITORY_MARKER]
        if not files:
            raise ArtifactError(f"{folder} is empty; nothing to publish")
        config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
        bucket, loc = self.location.bucket, self.location
        with s3_errors(loc, "publish to", self.s3):
            old_keys, old_marker = self._check()  # again, under the lock
            self._staging = loc.sibling(f".partial-{uuid.uuid4().hex[:12]}")
            total = sum(f.size for f in files)
            self._note(f"uploading {len(files)} files ({total / 1e6:.1f} MB) to {loc} (staged first)")
            for f in files:
                self.s3.upload_file(str(f.path), bucket, f"{self._staging}/{f.relative}", Config=config,
                                    ExtraArgs={"ChecksumAlgorithm": "SHA256"})
            self._verify(files, self._staging, "the staged upload")
            # make visible: the marker first says "publishing" (old and new), so a cut-short publish stays ours
            new = {f.relative for f in files}
            self._write_marker(files, state="publishing", also=sorted(set(old_keys) - new))
            for f in _visible_order(files):
                self.s3.copy({"Bucket": bucket, "Key": f"{self._staging}/{f.relative}"}, bucket, loc.key(f.relative),
                             ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=config)
            self._verify(files, loc.prefix, str(loc))
            stale = sorted(set(old_keys) - new - {REPOSITORY_MARKER})
            self._delete([loc.key(k) for k in stale])
            self._write_marker(files, state="published")
        return {"repository": loc.url, "objects": len(files), "bytes": total, "replaced": old_marker is not None,
                "removed": stale}

    def _verify(self, files: list[LocalFile], prefix: str, what: str) -> None:
        listed = set(list_keys(self.s3, self.location, prefix))
        missing = sorted({f.relative for f in files} - listed)
        if missing:
            raise ArtifactError(f"{what} at {self.location} lacks {', '.join(missing[:3])} after the upload; "
                                "nothing was made visible: run again")
        for f in files:
            head = self.s3.head_object(Bucket=self.location.bucket, Key=f"{prefix}/{f.relative}",
                                       ChecksumMode="ENABLED")
            if not _matches(head, f):
                raise ArtifactError(f"{what}: {f.relative} differs from the local file ({head.get('ContentLength')} "
                                    f"bytes, SHA-256 {head.get('ChecksumSHA256')}; expected {f.size} bytes, "
                                    f"{f.s3_checksum}); the store may not support SHA-256 checksums: run again, or "
                                    "use another store")

    def _write_marker(self, files: list[LocalFile], state: str, also: list[str] = ()) -> None:
        """The repository marker: every object with its sha256 and size (what --force may replace), and its state."""
        entries = [{"path": f.relative, "sha256": f.sha256, "bytes": f.size} for f in files]
        entries += [{"path": k} for k in also if k != REPOSITORY_MARKER]
        doc = {"schema": REPOSITORY_SCHEMA, "state": state, "files": entries}
        body = (json.dumps(doc, indent=2) + "\n").encode()
        self.s3.put_object(Bucket=self.location.bucket, Key=self.location.key(REPOSITORY_MARKER), Body=body,
                           ChecksumAlgorithm="SHA256")
