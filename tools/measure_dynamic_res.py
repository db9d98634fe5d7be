"""Top-1 of one dynamic-resolution export of the real ViT-Ti at several sizes, FP32, FP16, INT8, FP8; prints markdown.

The numbers in docs/precision.md ("One export, several sizes"). One ``--dynamic-res`` export of the
real ViT-Ti/16 (../shared/realdata, trained at 224, crop_pct 0.9), its FP16 graph and its INT8 / FP8
graphs (calibrated at the native size and both ends of the range, as build-engine does), each run on
ONNX Runtime (CPU; Q/DQ evaluated as written) over every labelled photo at each size. At a size S the photo goes
through the manifest's preprocessing moved to S (``images.sizes.preprocessing_at``: crop S, resize
floor(S * 248 / 224)). Intervals: 95% bootstrap (parity.metrics), the changes paired per photo.

    python tools/measure_dynamic_res.py --work /tmp/dynres --precisions ""          # FP32, all 1,508 photos
    python tools/measure_dynamic_res.py --work /tmp/dynres --images ../shared/realdata/imagenet-val-dev \\
        --max-photos 300                                                              # + FP16 and INT8
    python tools/measure_dynamic_res.py --work /tmp/dynres --precisions int8,fp8 ...   # the quantized ones

FP32 over the 1,508 photos: about 25 minutes on 2 shared cores; FP16 (slow on ONNX Runtime's CPU)
and INT8 on 300 photos about 15. The INT8 graph is made with the default budget; where it misses
it, make it first (``build-engine ... --int8 --max-float-layers N --out WORK/ti16-224-dyn-int8``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
SIZES = (224, 288, 384)
QUANTIZED = ("int8", "fp8")
CHUNK = 32


def build(work: Path, weights: Path, calib: Path, calib_count: int, sizes: tuple[int, ...],
          precisions: tuple[str, ...]) -> dict[str, Path]:
    """The FP32 dynamic export and its FP16 / INT8 graphs under ``work`` (reused when already there)."""
    from vit_deploy.steps.export import ExportOptions, export_artifact
    from vit_deploy.steps.precision import PrecisionOptions, build_precision_artifact

    fp32 = work / "ti16-224-dyn"
    if not (fp32 / "manifest.json").is_file():
        export_artifact(ExportOptions("ti16", 224, weights=str(weights), out_dir=fp32, crop_pct=0.9,
                                      dynamic_res=f"{min(sizes)}:{max(sizes)}"))
    made = {"fp32": fp32}
    for precision in precisions:
        out = work / f"ti16-224-dyn-{precision}"
        if not (out / "manifest.json").is_file():
            calib_opts = {"calib": str(calib), "calib_images": calib_count} if precision in QUANTIZED else {}
            build_precision_artifact(PrecisionOptions(precision, fp32, out, **calib_opts))
        made[precision] = out
    return made


def photos(folders: list[Path]) -> list[tuple[Path, int, str]]:
    """(file, label, set name) for every photo in the labelled folders."""
    from vit_deploy.images.decode import find_images
    from vit_deploy.images.sets import read_labels

    out = []
    for folder in folders:
        labels = read_labels(folder, 1000)
        out += [(p, labels[p.resolve()], folder.name) for p in find_images(folder)]
    return out


def run_all(artifacts: dict[str, Path], items: list[tuple[Path, int, str]], sizes: tuple[int, ...],
            threads: int) -> dict[str, dict[int, np.ndarray]]:
    """Logits {precision: {size: [N, 1000]}}: each photo decoded once, preprocessed at each size."""
    from vit_deploy import runtime
    from vit_deploy.images.decode import load_rgb, preprocess
    from vit_deploy.images.sizes import preprocessing_at

    runners = {k: runtime.open(v, "onnxruntime", threads=threads, exact_qdq=k in QUANTIZED)
               for k, v in artifacts.items()}
    prep = runners["fp32"].preprocessing
    at = {s: preprocessing_at(prep, s) for s in sizes}
    logits: dict[str, dict[int, list[np.ndarray]]] = {k: {s: [] for s in sizes} for k in runners}
    start = time.perf_counter()
    for i in range(0, len(items), CHUNK):
        rgbs = [load_rgb(p) for p, _, _ in items[i:i + CHUNK]]
        for s in sizes:
            batch = np.stack([preprocess(rgb, at[s]) for rgb in rgbs])
            for name, runner in runners.items():
                logits[name][s].append(runner.infer(batch))
        print(f"  {min(i + CHUNK, len(items))}/{len(items)} photos, {time.perf_counter() - start:.0f} s", flush=True)
    for runner in runners.values():
        runner.close()
    return {k: {s: np.concatenate(v) for s, v in by_size.items()} for k, by_size in logits.items()}


def summarize(logits: dict[str, dict[int, np.ndarray]], labels: np.ndarray, subset: np.ndarray,
              sizes: tuple[int, ...]) -> dict[str, dict]:
    from vit_deploy.parity.metrics import accuracy_interval, intervals

    out: dict[str, dict] = {}
    base = logits["fp32"][sizes[0]][subset].argmax(-1) == labels[subset]
    for s in sizes:
        ref = logits["fp32"][s][subset].argmax(-1)
        right = ref == labels[subset]
        row = {"photos": int(subset.sum()), "fp32_top1": float(right.mean()),
               "fp32_top1_ci95": accuracy_interval(right)}
        change = intervals(base, right, np.ones(len(right), int))
        row["fp32_drop_vs_first_size"] = 100 * float(base.mean() - right.mean())
        row["fp32_drop_vs_first_size_ci95"] = (change["accuracy_drop_ci95_low"], change["accuracy_drop_ci95_high"])
        for precision in [k for k in logits if k != "fp32"]:
            cand = logits[precision][s][subset].argmax(-1)
            found = intervals(right, cand == labels[subset], ref == cand)
            row[precision] = {"top1": float((cand == labels[subset]).mean()),
                              "drop": 100 * float(right.mean() - (cand == labels[subset]).mean()),
                              "drop_ci95": (found["accuracy_drop_ci95_low"], found["accuracy_drop_ci95_high"]),
                              "agreement": float((ref == cand).mean())}
        out[str(s)] = row
    return out


def markdown(name: str, rows: dict[str, dict]) -> str:
    others = [k for k in next(iter(rows.values())) if isinstance(next(iter(rows.values()))[k], dict)]
    head = "".join(f" {p.upper()} drop (pt) [95%] |" + (f" {p.upper()} agreement |" if p in QUANTIZED else "")
                   for p in others)
    cols = 4 + sum(2 if p in QUANTIZED else 1 for p in others)
    lines = [f"**{name}**", "", "| size | photos | FP32 top-1 [95%] | vs first size (pt) [95%] |" + head,
             "|---|" + "--:|" * (cols - 1)]
    for s, r in rows.items():
        lo, hi = r["fp32_top1_ci95"]
        dlo, dhi = r["fp32_drop_vs_first_size_ci95"]
        cells = [f"{s}x{s}", str(r["photos"]), f"{100 * r['fp32_top1']:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]",
                 f"{r['fp32_drop_vs_first_size']:+.2f} [{dlo:+.2f}, {dhi:+.2f}]"]
        for precision in others:
            p = r[precision]
            cells.append(f"{p['drop']:+.2f} [{p['drop_ci95'][0]:+.2f}, {p['drop_ci95'][1]:+.2f}]")
            if precision in QUANTIZED:
                cells.append(f"{100 * p['agreement']:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the artifacts (reused when there)")
    ap.add_argument("--weights", type=Path, default=REALDATA / "vit-ti16-augreg" / "model.safetensors")
    ap.add_argument("--images", type=Path, nargs="+",
                    default=[REALDATA / "imagenet-val-dev", REALDATA / "imagenet-dev-500"])
    ap.add_argument("--calib", type=Path, default=REALDATA / "imagenet-dev-500",
                    help="INT8/FP8 calibration photos (their drops are reported on the other sets only)")
    ap.add_argument("--calib-count", type=int, default=256)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--precisions", default="fp16,int8", help="graphs besides FP32")
    ap.add_argument("--max-photos", type=int, default=None, help="a seeded sample of this many photos (FP16 on "
                    "ONNX Runtime's CPU takes ~1 s per photo and size)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    artifacts = build(args.work, args.weights, args.calib, args.calib_count, sizes, precisions)
    items = photos(args.images)
    if args.max_photos is not None and args.max_photos < len(items):
        import random

        items = sorted(random.Random(0).sample(items, args.max_photos))
    logits = run_all(artifacts, items, sizes, args.threads)
    labels = np.array([label for _, label, _ in items])
    sets = np.array([name for _, _, name in items])
    calib_name = args.calib.name
    report = {}
    for name in [*dict.fromkeys(sets), "all"]:
        subset = np.ones(len(items), bool) if name == "all" else sets == name
        chosen = (logits if name != calib_name and name != "all"
                  else {k: v for k, v in logits.items() if k not in QUANTIZED})
        report[name] = summarize(chosen, labels, subset, sizes)
        print("\n" + markdown(f"{name} ({int(subset.sum())} photos)", report[name]))
    (args.work / "results.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
