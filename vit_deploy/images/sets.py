"""Image sets for calibration and evaluation: which images, checked against their checksums,
preprocessed exactly as the artifact's manifest says, plus a digest that keys the calibration cache.

A set is given as a folder of images (searched recursively) or a definition file: one
``<sha256>  <path>`` line per image (``sha256sum`` output; ``#`` starts a comment), with paths
relative to the definition file, or ``pkg:<package>/<path>`` for files shipped inside an
installed package (e.g. the photographs in scikit-image's ``skimage/data``; the package is
located, not imported, and the path must stay inside it). The definition file is UTF-8 text.
Missing, unreadable, corrupt or altered files are skipped and counted; too few usable images is an
error. A device, FIFO or socket (in a folder or a definition file) is refused: reading it would
block or never end (see :mod:`.files`).
A folder may hold ``labels.csv`` (``file,label`` rows, file relative to the folder): then the set
carries labels and validation reports top-1 accuracy. Labels are class indices, checked against
the class count of the model they score (``num_classes``), so a label file for another model is
an error, not an accuracy of 0%.
For a dynamic-resolution artifact a set can be loaded at several sizes at once (``sizes``): each
file is decoded once and preprocessed at each size (square: ``images.sizes.preprocessing_at``;
non-square: the whole image resized, as a center crop is square).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..progress import Progress
from ..specs import Preprocessing
from .files import not_regular, open_regular, read_text

DEFINITION_SUFFIXES = (".txt", ".sha256")


LABELS_FILE = "labels.csv"
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # float32 [N, 3, crop, crop], already preprocessed
    files: list[str]  # the files used, in order
    digest: str  # sha256 over the used files' contents and the preprocessing
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    labels: np.ndarray | None = None  # int64 [N] when the folder has labels.csv
    sized: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (h, w) -> [N, 3, h, w]: other sizes

    def at(self, height: int, width: int | None = None) -> np.ndarray:
        """The images at ``height`` x ``width`` (default: square): ``images`` at the preprocessing's own crop,
        else one of ``sized``."""
        size = (height, height if width is None else width)
        if size == tuple(self.images.shape[-2:]):
            return self.images
        if size not in self.sized:
            raise ValueError(f"this set was loaded at sizes {self.sizes}, not {size}; pass sizes= to load_image_set")
        return self.sized[size]

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Every (height, width) the set holds, its preprocessing's own crop first."""
        return [(int(self.images.shape[-2]), int(self.images.shape[-1])), *self.sized]

    def per_size(self) -> list[np.ndarray]:
        """One float32 [N, 3, h, w] array per size in :attr:`sizes` (what a multi-size calibration takes)."""
        return [self.at(*size) for size in self.sizes]

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "images": len(self.files),
            "skipped": len(self.skipped),
            "skipped_files": [f"{f}: {why}" for f, why in self.skipped[:20]],
            "digest": self.digest,
            **({"sizes": [list(size) for size in self.sizes]} if self.sized else {}),
        }


# The photographs shipped with scikit-image and scikit-learn, listed with their sha256 in a source
# checkout (calibration/photos.txt; absent from a wheel install): the real images a step falls back to.
BUNDLED_PHOTOS = Path(__file__).resolve().parents[2] / "calibration" / "photos.txt"


def cache_dir() -> Path:
    """Where calibration ranges are cached: $VIT_DEPLOY_CACHE, else ~/.cache/vit-deploy."""
    return Path(os.environ.get("VIT_DEPLOY_CACHE") or Path.home() / ".cache" / "vit-deploy")


def list_sources(spec: str | os.PathLike[str]) -> list[tuple[Path, str | None]]:
    """(image path, expected sha256 or None) for every image a folder or definition file names."""
    from .decode import find_images

    path = Path(spec)
    if path.is_dir():
        return [(p, None) for p in find_images(path)]
    if not path.exists():
        raise UsageError(f"calibration set {spec} does not exist; pass a folder of images or a definition file")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise not_regular(path, mode, "image set")
    if path.suffix in DEFINITION_SUFFIXES:
        return _read_definition(path)
    return [(path, None)]


def _read_definition(path: Path) -> list[tuple[Path, str | None]]:
    entries = []
    for n, line in enumerate(read_text(path, "definition file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise UsageError(f"{path}:{n}: expected '<sha256>  <path>', got {line[:80]!r}")
        digest, name = parts[0].lower(), parts[1].lstrip("*")
        where = f"{path}:{n}: entry {name}"
        entry = _package_file(name[4:], where) if name.startswith("pkg:") else (path.parent / name).resolve()
        try:
            mode = entry.stat().st_mode
        except OSError:
            mode = None  # missing or unreadable: skipped and counted when the set loads
        if mode is not None and not stat.S_ISREG(mode):
            raise not_regular(entry, mode, where + " ->")  # refused before anything opens it
        entries.append((entry, digest))
    return entries


def _package_file(name: str, where: str) -> Path:
    """``<package>/<path>`` inside an installed package, found without importing the package itself."""
    package, _, rel = name.partition("/")
    if not package:
        raise UsageError(f"{where} names no package; write pkg:<package>/<path inside it>")
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    except Exception as e:  # a relative name ("..") or a parent package that fails to import
        raise UsageError(f"{where}: cannot look up the package {package!r} ({e}); "
                         "write pkg:<installed package>/<path inside it>") from e
    if spec is None:
        raise UsageError(f"{where} needs the package {package!r}, which is not installed: pip install it")
    if not spec.submodule_search_locations:
        raise UsageError(f"{where}: {package!r} is a module, not a package (a folder of files); "
                         "write pkg:<package>/<path inside it>")
    found = []
    for location in spec.submodule_search_locations:  # one folder, or several for a namespace package
        root = Path(location).resolve()
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            raise UsageError(f"{where} leads out of the package {package} (to {target}); "
                             "name a file inside the package")
        found.append(target)
    return next((t for t in found if t.exists()), found[0])


def read_labels(folder: Path, num_classes: int | None = None) -> dict[Path, int] | None:
    """``folder/labels.csv`` as {resolved image path: class index}, or None if there is none.

    Every label must be a class index: an integer in ``[0, num_classes)``; with ``num_classes``
    None (no model in sight: a calibration set) only ``>= 0`` and within int64 is checked.
    """
    path = folder / LABELS_FILE
    if not path.exists():
        return None
    labels: dict[Path, int] = {}
    lines: dict[Path, int] = {}
    for n, row in enumerate(csv.reader(io.StringIO(read_text(path, "labels file"), newline="")), 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if n == 1 and not _INTEGER.fullmatch(row[-1].strip()):
            continue  # header
        if len(row) != 2 or not _INTEGER.fullmatch(row[1].strip()):
            raise UsageError(f"{path}:{n}: expected 'file,label' with an integer label, got {row!r}")
        label = int(row[1])
        _check_label(label, num_classes, f"{path}:{n}")
        image = (folder / row[0].strip()).resolve()
        if image in labels:
            raise UsageError(f"{path}:{n}: {row[0].strip()} is labelled again (first on line {lines[image]}); "
                             "give each image one label")
        labels[image], lines[image] = label, n
    return labels


def _check_label(label: int, num_classes: int | None, where: str) -> None:
    if 0 <= label < (num_classes if num_classes is not None else 2**63):
        return
    shown = str(label) if len(str(label)) <= 24 else f"{str(label)[:20]}... ({len(str(label))} digits)"
    if num_classes is None:
        raise UsageError(f"{where}: label {shown} is not a class index (0, 1, 2, ...); fix the label")
    raise UsageError(f"{where}: label {shown} is outside the model's {num_classes} classes "
                     f"(0..{num_classes - 1}); fix the label, or score with the model these labels are for")


def load_image_set(
    spec: str | os.PathLike[str],
    prep: Preprocessing,
    count: int | None = None,
    batch: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
    role: str = "calibration",
    num_classes: int | None = None,
    too_few: str | None = None,
    sizes: Sequence[int | tuple[int, int]] | None = None,
) -> ImageSet:
    """Load up to ``count`` images (a seeded sample when the set is larger), preprocessed.

    ``role`` names the set in messages ("calibration", "validation", ...): the same loader
    reads every image set, and the user must know which option a message is about.
    ``num_classes``: the class count of the model the labels score (None: checked by the caller).
    ``too_few``: what to do when fewer than ``batch`` images are usable, in the caller's own options
    (default: build-engine's, "add images or lower --calib-batch" for a calibration set).
    ``sizes``: other sizes to preprocess each image at as well (``ImageSet.at``): a side N (square: the
    manifest's center crop moved to N, ``sizes.preprocessing_at``) or (H, W) (non-square: the whole image
    resized to H x W, ``decode.resize_to``); the digest covers them, so ranges calibrated at other sizes
    are never taken from the cache.
    """
    from .decode import decode_rgb, preprocess, resize_to
    from .sizes import preprocessing_at

    wanted = [(s, s) if isinstance(s, int) else (int(s[0]), int(s[1])) for s in sizes or ()]
    extra = {size: preprocessing_at(prep, size[0]) if size[0] == size[1] else None
             for size in dict.fromkeys(wanted) if size != (prep.crop, prep.crop)}
    resized: dict[tuple[int, int], list[np.ndarray]] = {size: [] for size in extra}

    labels = read_labels(Path(spec), num_classes) if Path(spec).is_dir() else None  # before the slow part
    sources = list_sources(spec)
    if not sources:
        raise UsageError(f"{role} set {spec} holds no images (.png, .jpg, ...); add some or pass another folder")
    if count is not None and count < len(sources):
        sources = random.Random(seed).sample(sources, count)

    images, used, hashes, skipped = [], [], [], []
    iterator = progress.bar(sources, f"Loading {role} images") if progress else sources
    for path, expected in iterator:
        try:
            f = open_regular(path, f"{role} image")
        except OSError as e:
            skipped.append((str(path), f"unreadable ({e.strerror or e})"))
            continue
        with f:  # one open file is hashed and decoded: what is checked is what is used
            try:
                actual = hashlib.file_digest(f, "sha256").hexdigest()
                f.seek(0)
            except OSError as e:
                skipped.append((str(path), f"unreadable ({e.strerror or e})"))
                continue
            if expected is not None and actual != expected:
                skipped.append((str(path), f"sha256 {actual[:12]}... differs from the definition's {expected[:12]}..."))
                continue
            try:
                rgb = decode_rgb(f, str(path))
                images.append(preprocess(rgb, prep))
            except UsageError as e:
                skipped.append((str(path), str(e)))
                continue
            for (h, w), at_size in extra.items():  # square: center crop as the manifest says; else resized whole
                resized[(h, w)].append(preprocess(rgb, at_size) if at_size else resize_to(rgb, h, w, prep))
        used.append(str(path))
        hashes.append(actual)

    needed = max(batch, 1)
    if len(images) < needed:
        why = "; ".join(f"{Path(f).name}: {r}" for f, r in skipped[:3])
        raise UsageError(
            f"{role} set {spec}: only {len(images)} of {len(sources)} images are usable"
            f"{f' ({len(skipped)} skipped: {why})' if skipped else ''}, fewer than the batch size {batch}; "
            + (too_few or ("add images or lower --calib-batch" if role == "calibration" else "add images"))
        )
    keyed = {"files": hashes, "prep": prep.to_dict(), **({"sizes": [list(k) for k in sorted(extra)]} if extra else {})}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
    if labels is not None:
        missing = [f for f in used if Path(f).resolve() not in labels]
        if missing:
            raise UsageError(f"{Path(spec) / LABELS_FILE} has no label for {len(missing)} image(s), e.g. {missing[0]}; "
                             "add a 'file,label' row for each image")
        label_array = np.array([labels[Path(f).resolve()] for f in used], dtype=np.int64)
    return ImageSet(np.stack(images).astype(np.float32), used, digest, str(spec), skipped,
                    label_array if labels is not None else None,
                    {size: np.stack(arrays).astype(np.float32) for size, arrays in resized.items()})
