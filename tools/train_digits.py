"""Train the small reference ViT ("mini" @ 32 px, 10 classes) on scikit-learn's digits.

A randomly initialised ViT cannot show whether a precision graph (FP16, INT8) loses accuracy;
this trained one can, with data that ships offline (``sklearn.datasets.load_digits``: 1,797
8x8 grayscale digits, 10 classes).

What it writes (all committed; about 3.5 MB in total):

* ``assets/digits/vit-mini-digits.safetensors``: the model's own float32 state dict (timm
  parameter names, so ``vit-deploy export --model mini --res 32 --num-classes 10 --weights ...``
  loads it);
* ``assets/digits/heldout/<idx>_<label>.png`` + ``labels.csv``: the stratified 20 % held-out
  split (360 images) that accuracy is measured on; ``<idx>`` is the index in ``load_digits()``;
* ``assets/digits/calib/<idx>_<label>.png``: 128 class-balanced images from the *training*
  split, for INT8 calibration, and ``calibration/digits.txt`` listing them with their sha256;
* ``assets/digits/metrics.json`` (the measured FP32 held-out accuracy, read by
  ``tests/test_trained_model.py``) and ``assets/digits/README.md`` (provenance).

The PNG files are the data: every 8x8 digit (values 0..16) is scaled to 0..255, upscaled to
32x32 with PIL bicubic and saved as an RGB PNG; training and evaluation read those files back
through ``vit_deploy.images.decode`` with the model's own ``Preprocessing``, so training, calibration,
parity checks and evaluation all see exactly the same input. (The 1,437 training PNGs go to a
temporary folder; only the held-out and calibration ones are kept.)

Training: AdamW (lr 2e-3, weight decay 0.05), batch 64, 5 warm-up epochs then a cosine
schedule, label smoothing 0.1, random +-2 px shifts; the checkpoint is the last epoch (the
held-out split is never used to pick anything). Everything is seeded; with the same torch build
on the same kind of CPU a re-run gives the same checkpoint bit for bit.

Run from the repository root (needs scikit-learn: ``pip install scikit-learn``)::

    python tools/train_digits.py

About 2-3 minutes on 2 CPU cores (it sets ``torch.set_num_threads(2)``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

from vit_deploy.images.decode import load_batch  # noqa: E402
from vit_deploy.model.vit import create_model  # noqa: E402
from vit_deploy.specs import model_config  # noqa: E402

VARIANT, IMG_SIZE, NUM_CLASSES = "mini", 32, 10
SEED = 0
EPOCHS = 100
BATCH = 64
LR = 2e-3
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 5
LABEL_SMOOTHING = 0.1
MAX_SHIFT = 2
HELDOUT_FRACTION = 0.2
CALIB_COUNT = 128
THREADS = 2

# relative to the output root (the repository by default)
ASSETS = Path("assets") / "digits"
CHECKPOINT = ASSETS / "vit-mini-digits.safetensors"
CALIB_LIST = Path("calibration") / "digits.txt"


def render(digit: np.ndarray) -> Image.Image:
    """An 8x8 digit with values 0..16 -> a 32x32 RGB image (bicubic upscale, gray replicated)."""
    gray = np.rint(digit * (255.0 / 16.0)).astype(np.uint8)
    return Image.fromarray(gray).resize((IMG_SIZE, IMG_SIZE), Image.Resampling.BICUBIC).convert("RGB")


def file_name(idx: int, label: int) -> str:
    return f"{idx:04d}_{label}.png"


def relative_posix(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` with forward slashes (calibration lists resolve from their folder)."""
    return os.path.relpath(path, base).replace(os.sep, "/")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.png"), folder / "labels.csv"]:
        stale.unlink(missing_ok=True)
    paths = []
    for i in indices:
        path = folder / file_name(int(i), int(labels[i]))
        render(images[i]).save(path)
        paths.append(path)
    return paths


def pick_calibration(train_idx: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CALIB_COUNT training images, class-balanced: 12 per class, plus one more for 8 seeded classes."""
    per_class, extra = divmod(CALIB_COUNT, NUM_CLASSES)
    bonus = set(rng.choice(NUM_CLASSES, size=extra, replace=False).tolist())
    chosen = []
    for c in range(NUM_CLASSES):
        pool = np.sort(train_idx[labels[train_idx] == c])
        chosen.extend(rng.choice(pool, size=per_class + (c in bonus), replace=False).tolist())
    return np.array(sorted(chosen))


def shift(x: torch.Tensor, fill: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Move each image by a random whole number of pixels in [-MAX_SHIFT, MAX_SHIFT] per axis.

    Padding uses the normalised value of a black pixel, so a shifted tensor is exactly what
    preprocessing a shifted PNG (with a black border) would give.
    """
    n, _, h, w = x.shape
    p = MAX_SHIFT
    padded = fill.view(1, 3, 1, 1).expand(n, 3, h + 2 * p, w + 2 * p).clone()
    padded[:, :, p:p + h, p:p + w] = x
    offs = torch.randint(0, 2 * p + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs.tolist())])


def lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return LR * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return LR * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    model.eval()
    pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return int((pred == y).sum()), len(y)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--root", type=Path, default=REPO,
                    help="where assets/digits/ and calibration/digits.txt go (default: the repository; "
                         "another folder to check a re-run against the committed files)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    assets, checkpoint, calib_list = root / ASSETS, root / CHECKPOINT, root / CALIB_LIST

    from safetensors.torch import save_file
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    train_idx, held_idx = train_test_split(
        np.arange(len(labels)), test_size=HELDOUT_FRACTION, stratify=labels, random_state=args.seed
    )
    train_idx, held_idx = np.sort(train_idx), np.sort(held_idx)
    calib_idx = pick_calibration(train_idx, labels, np.random.default_rng(args.seed))

    cfg = model_config(VARIANT, IMG_SIZE, NUM_CLASSES)
    prep = cfg.preprocessing
    held_paths = write_pngs(assets / "heldout", images, labels, held_idx)
    with open(assets / "heldout" / "labels.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label"])
        w.writerows((p.name, int(labels[i])) for p, i in zip(held_paths, held_idx, strict=True))

    with tempfile.TemporaryDirectory(prefix="digits-train-") as tmp:
        train_paths = write_pngs(Path(tmp), images, labels, train_idx)
        calib_dir = assets / "calib"
        calib_dir.mkdir(parents=True, exist_ok=True)
        for stale in calib_dir.glob("*.png"):
            stale.unlink()
        for i in calib_idx:
            name = file_name(int(i), int(labels[i]))
            shutil.copyfile(Path(tmp) / name, calib_dir / name)
        x_train = torch.from_numpy(load_batch(train_paths, prep))
    x_held = torch.from_numpy(load_batch(held_paths, prep))
    y_train, y_held = torch.from_numpy(labels[train_idx]), torch.from_numpy(labels[held_idx])
    print(f"data: {len(x_train)} train / {len(x_held)} held-out / {len(calib_idx)} calibration PNGs "
          f"({time.perf_counter() - t_start:.1f} s)", flush=True)

    model = create_model(cfg, seed=args.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n not in ("pos_embed", "cls_token")]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and n not in ("pos_embed", "cls_token"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )
    gen = torch.Generator().manual_seed(args.seed + 1)
    fill = torch.tensor([(0.0 - m) / s for m, s in zip(prep.mean, prep.std, strict=True)])
    steps_per_epoch = math.ceil(len(x_train) / BATCH)
    total, warmup = args.epochs * steps_per_epoch, WARMUP_EPOCHS * steps_per_epoch

    t_train = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * BATCH:(b + 1) * BATCH]
            xb, yb = shift(x_train[idx], fill, gen), y_train[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            step += 1
        if (epoch + 1) % 10 == 0 or epoch == 0 or epoch + 1 == args.epochs:
            correct, n = accuracy(model, x_train, y_train)
            print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {loss_sum / len(x_train):.4f}  "
                  f"train top-1 {100 * correct / n:.2f}%  ({time.perf_counter() - t_train:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - t_train

    model.eval()
    train_correct, _ = accuracy(model, x_train, y_train)
    held_correct, held_n = accuracy(model, x_held, y_held)
    top1 = held_correct / held_n
    print(f"held-out top-1 (FP32, PyTorch): {held_correct}/{held_n} = {100 * top1:.2f}%")

    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    # one metadata key only: safetensors writes several in a random order, which would make
    # the bytes (and the recorded sha256) differ between identical runs; provenance is in README.md
    save_file(state, checkpoint, metadata={"format": "pt"})

    calib_list.parent.mkdir(parents=True, exist_ok=True)
    calib_files = sorted((assets / "calib").glob("*.png"))
    calib_list.write_text(
        "# Calibration set 'digits': 128 class-balanced 32x32 PNGs from the TRAINING split of scikit-learn's "
        "load_digits (written by tools/train_digits.py; see assets/digits/README.md). "
        "Format: sha256, two spaces, path relative to this file.\n"
        + "".join(f"{sha256_file(p)}  {relative_posix(p, calib_list.parent)}\n" for p in calib_files)
    )

    total_seconds = time.perf_counter() - t_start
    metrics = {
        "dataset": "sklearn.datasets.load_digits",
        "model": {"variant": VARIANT, "img_size": IMG_SIZE, "num_classes": NUM_CLASSES},
        "preprocessing": prep.to_dict(),
        "seed": args.seed,
        "epochs": args.epochs,
        "train_count": len(train_idx),
        "heldout_count": held_n,
        "calib_count": len(calib_files),
        "train_top1": round(train_correct / len(train_idx), 6),
        "heldout_correct": held_correct,
        "heldout_top1": round(top1, 6),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "checkpoint_sha256": sha256_file(checkpoint),
        "torch": torch.__version__,
    }
    (assets / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (assets / "README.md").write_text(readme(metrics, args))
    print(f"wrote {checkpoint} ({checkpoint.stat().st_size / 1e6:.2f} MB), "
          f"{held_n} held-out + {len(calib_files)} calibration PNGs, {calib_list}; "
          f"total {total_seconds:.0f} s")


def readme(m: dict, args: argparse.Namespace) -> str:
    cmd = "python tools/train_digits.py"
    cmd += f" --epochs {args.epochs}" if args.epochs != EPOCHS else ""
    cmd += f" --seed {args.seed}" if args.seed != SEED else ""
    prep = m["preprocessing"]
    rows = [
        ("model", "`mini` (patch 8, dim 96, depth 6, heads 3, MLP 384) at 32x32, 10 classes"),
        ("checkpoint", "`vit-mini-digits.safetensors` (float32 state dict, timm parameter names), "
                       f"sha256 `{m['checkpoint_sha256']}`"),
        ("data", "`sklearn.datasets.load_digits()` (1,797 8x8 digits; UCI Optical Recognition of "
                 "Handwritten Digits, test part)"),
        ("split", f"stratified, {round(HELDOUT_FRACTION * 100)} % held out "
                  f"(`train_test_split(..., random_state={m['seed']})`): "
                  f"{m['train_count']} train / {m['heldout_count']} held-out"),
        ("images", "0..16 -> 0..255, PIL bicubic upscale to 32x32, gray replicated to RGB, PNG; read back "
                   f"through `vit_deploy.images.decode` (resize {prep['resize']}, crop {prep['crop']}, "
                   f"{prep['interpolation']}, mean {prep['mean']}, std {prep['std']})"),
        ("training", f"AdamW lr {LR:g}, weight decay {WEIGHT_DECAY:g}, batch {BATCH}, {WARMUP_EPOCHS} warm-up "
                     f"epochs + cosine, label smoothing {LABEL_SMOOTHING:g}, random +-{MAX_SHIFT} px shifts; "
                     "last epoch kept"),
        ("seed / epochs", f"{m['seed']} / {m['epochs']}"),
        ("command", f"`{cmd}`"),
        ("training time", f"{m['train_seconds']:.0f} s of training, {m['total_seconds']:.0f} s in all, "
                          f"{THREADS} CPU threads ({platform.machine()}, torch {m['torch']})"),
        ("**FP32 held-out top-1**", f"**{100 * m['heldout_top1']:.2f} %** "
                                    f"({m['heldout_correct']}/{m['heldout_count']}; PyTorch)"),
        ("train top-1", f"{100 * m['train_top1']:.2f} %"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""# Reference model: ViT "mini" trained on scikit-learn digits

Written by `tools/train_digits.py`; do not edit by hand (re-run the script instead).

| | |
|---|---|
{table}

Files:

- `heldout/<idx>_<label>.png`, `heldout/labels.csv`: the held-out split (`<idx>` = index in `load_digits()`).
- `calib/<idx>_<label>.png`: {m['calib_count']} class-balanced images from the training split (12 per class,
  13 for 8 seeded classes) for INT8 calibration; listed with sha256 in `calibration/digits.txt`.
- `metrics.json`: the numbers above, machine-readable; `tests/test_trained_model.py` exports the checkpoint
  and checks the ONNX model's held-out accuracy against `heldout_top1`.

The PNG bytes depend on the zlib that Pillow links; a re-run elsewhere may write different bytes for the
same pixels (then `calibration/digits.txt` changes with them).

The digits data is distributed with scikit-learn (BSD-3-Clause); its source is the UCI Machine Learning
Repository (Alpaydin & Kaynak, CC BY 4.0).
"""


if __name__ == "__main__":
    main()
