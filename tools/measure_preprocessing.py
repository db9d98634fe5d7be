"""What a wrong resize costs: top-1 of one FP32 export on labelled photos, at several resizes; prints Markdown.

    python tools/measure_preprocessing.py ARTIFACT --images DIR [--images DIR ...] [--resize 256 248 ...]

Each labelled folder (``labels.csv``) is read through the manifest's preprocessing with only the
resize changed (center crop, interpolation, mean/std as recorded), run on ONNX Runtime (CPU) and
scored per folder and over all of them. Every resize is compared with the first, photo by photo:
the top-1 difference in points with its paired 95% bootstrap interval
(``vit_deploy.parity.metrics.intervals``, the one validation reports). The numbers behind the
preprocessing paragraph of the README ("Exporting"). About 2 minutes for ViT-Ti on 1,508 photos on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vit_deploy import artifact
from vit_deploy.images.sets import load_image_set
from vit_deploy.parity.metrics import correct, intervals


def top1(session: ort.InferenceSession, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    logits = np.concatenate([session.run(None, {"images": images[i:i + 16]})[0] for i in range(0, len(images), 16)])
    return correct(logits, labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path, help="an FP32 export folder")
    ap.add_argument("--images", action="append", required=True, help="a labelled folder (repeat for more)")
    ap.add_argument("--resize", type=int, nargs="+", default=None,
                    help="shorter-side resizes to compare, the first is the reference (default: the manifest's)")
    args = ap.parse_args()

    art = artifact.open(args.artifact)
    prep = art.preprocessing
    resizes = args.resize or [prep.resize]
    session = ort.InferenceSession(str(art.model_file), providers=["CPUExecutionProvider"])
    right: dict[int, dict[str, np.ndarray]] = {r: {} for r in resizes}
    for folder in args.images:
        for r in resizes:
            images = load_image_set(folder, dataclasses.replace(prep, resize=r), role="evaluation",
                                    num_classes=art.num_classes)
            if images.labels is None:
                raise SystemExit(f"{folder} has no labels.csv")
            right[r][folder] = top1(session, images.images, images.labels)

    print(f"{art.variant} @ {art.img_size}, crop {prep.crop}, {prep.interpolation}, mean {prep.mean}, "
          f"std {prep.std}; reference resize {resizes[0]}\n")
    print("| photos | n | " + " | ".join(f"top-1 at resize {r}" for r in resizes) + " | "
          + " | ".join(f"{r} vs {resizes[0]} (points, 95% interval)" for r in resizes[1:]) + " |")
    print("|---|--:|" + "--:|" * (2 * len(resizes) - 1))
    for name in [*args.images, "all"]:
        got = {r: np.concatenate(list(right[r].values())) if name == "all" else right[r][name] for r in resizes}
        base = got[resizes[0]]
        cells = [f"{100 * got[r].mean():.2f}%" for r in resizes]
        for r in resizes[1:]:
            ci = intervals(base, got[r], np.ones_like(base))
            drop = 100 * (int(base.sum()) - int(got[r].sum())) / len(base)
            cells.append(f"{-drop:+.2f} [{-ci['accuracy_drop_ci95_high']:+.2f}, {-ci['accuracy_drop_ci95_low']:+.2f}]")
        print(f"| {Path(name).name} | {len(base)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
