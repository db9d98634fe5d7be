"""Image sets for calibration and evaluation: which images, checked against their checksums,
preprocessed exactly as the artifact's manifest says, plus a digest that keys the calibration cache.

A set is given as a folder of images (searched recursively) or a definition file: one
``<sha256>  <path>`` line per image (``sha256sum`` output; ``#`` starts a comment), with paths
relative to the definition file, or ``pkg:<package>/<path>`` for files shipped inside an
installed package (e.g. the photographs in scikit-image's ``skimage/data``).
Unreadable, corrupt or altered files are skipped and counted; too few usable images is an error.
A folder may hold ``labels.csv`` (``file,label`` rows, file relative to the folder): then the set
carries labels and validation reports top-1 accuracy.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..artifact import sha256_file
from ..errors import UsageError
from ..progress import Progress
from ..specs import Preprocessing

DEFINITION_SUFFIXES = (".txt", ".sha256")


LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # float32 [N, 3, crop, crop], already preprocessed
    files: list[str]  # the files used, in order
    digest: str  # sha256 over the used files' contents and the preprocessing
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    labels: np.ndarray | None = None  # int64 [N] when the folder has labels.csv

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "images": len(self.files),
            "skipped": len(self.skipped),
            "skipped_files": [f"{f}: {why}" for f, why in self.skipped[:20]],
            "digest": self.digest,
        }


def cache_dir() -> Path:
    """Where calibration ranges are cached: $VIT_DEPLOY_CACHE, else ~/.cache/vit-deploy."""
    return Path(os.environ.get("VIT_DEPLOY_CACHE") or Path.home() / ".cache" / "vit-deploy")


def list_sources(spec: str | os.PathLike[str]) -> list[tuple[Path, str | None]]:
    """(image path, expected sha256 or None) for every image a folder or definition file names."""
    from .decode import find_images

    path = Path(spec)
    if path.is_dir():
        return [(p, None) for p in find_images(path)]
    if path.is_file() and path.suffix in DEFINITION_SUFFIXES:
        return _read_definition(path)
    if path.is_file():
        return [(path, None)]
    raise UsageError(f"calibration set {spec} does not exist; pass a folder of images or a definition file")


def _read_definition(path: Path) -> list[tuple[Path, str | None]]:
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise UsageError(f"{path}:{n}: expected '<sha256>  <path>', got {line[:80]!r}")
        digest, name = parts[0].lower(), parts[1].lstrip("*")
        entries.append((_resolve(name, path.parent), digest))
    return entries


def _resolve(name: str, base: Path) -> Path:
    if name.startswith("pkg:"):
        package, _, rel = name[4:].partition("/")
        try:
            return Path(str(resources.files(package).joinpath(rel)))
        except ModuleNotFoundError as e:
            raise UsageError(f"calibration entry {name} needs the package {package!r}: pip install it") from e
    return (base / name).resolve()


def read_labels(folder: Path) -> dict[Path, int] | None:
    """``folder/labels.csv`` as {resolved image path: class index}, or None if there is none."""
    path = folder / LABELS_FILE
    if not path.is_file():
        return None
    labels = {}
    with path.open(newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if n == 1 and row and not row[-1].strip().lstrip("-").isdigit():
                continue  # header
            if len(row) != 2 or not row[1].strip().lstrip("-").isdigit():
                raise UsageError(f"{path}:{n}: expected 'file,label' with an integer label, got {row!r}")
            labels[(folder / row[0].strip()).resolve()] = int(row[1])
    return labels


def load_image_set(
    spec: str | os.PathLike[str],
    prep: Preprocessing,
    count: int | None = None,
    batch: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
    role: str = "calibration",
) -> ImageSet:
    """Load up to ``count`` images (a seeded sample when the set is larger), preprocessed.

    ``role`` names the set in messages ("calibration", "validation", ...): the same loader
    reads every image set, and the user must know which option a message is about.
    """
    from .decode import load_rgb, preprocess

    sources = list_sources(spec)
    if not sources:
        raise UsageError(f"{role} set {spec} holds no images (.png, .jpg, ...); add some or pass another folder")
    if count is not None and count < len(sources):
        sources = random.Random(seed).sample(sources, count)

    images, used, hashes, skipped = [], [], [], []
    iterator = progress.bar(sources, f"Loading {role} images") if progress else sources
    for path, expected in iterator:
        try:
            actual = sha256_file(path)
        except OSError as e:
            skipped.append((str(path), f"unreadable ({e.strerror or e})"))
            continue
        if expected is not None and actual != expected:
            skipped.append((str(path), f"sha256 {actual[:12]}... differs from the definition's {expected[:12]}..."))
            continue
        try:
            images.append(preprocess(load_rgb(path), prep))
        except UsageError as e:
            skipped.append((str(path), str(e)))
            continue
        used.append(str(path))
        hashes.append(actual)

    needed = max(batch, 1)
    if len(images) < needed:
        why = "; ".join(f"{Path(f).name}: {r}" for f, r in skipped[:3])
        raise UsageError(
            f"{role} set {spec}: only {len(images)} of {len(sources)} images are usable"
            f"{f' ({len(skipped)} skipped: {why})' if skipped else ''}, fewer than the batch size {batch}; "
            + ("add images or lower --calib-batch" if role == "calibration" else "add images")
        )
    digest = hashlib.sha256(json.dumps({"files": hashes, "prep": prep.to_dict()}, sort_keys=True).encode()).hexdigest()
    labels = read_labels(Path(spec)) if Path(spec).is_dir() else None
    if labels is not None:
        missing = [f for f in used if Path(f).resolve() not in labels]
        if missing:
            raise UsageError(f"{Path(spec) / LABELS_FILE} has no label for {len(missing)} image(s), e.g. {missing[0]}")
        label_array = np.array([labels[Path(f).resolve()] for f in used], dtype=np.int64)
    return ImageSet(np.stack(images).astype(np.float32), used, digest, str(spec), skipped,
                    label_array if labels is not None else None)
