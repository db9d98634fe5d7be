"""Measure FP16 keep-in-FP32 policies and the INT8 and FP8 calibration methods; prints markdown tables.

The numbers behind the defaults in vit_deploy/onnx/fp16.py, formats.py and quantize.py and the
tables in docs/precision.md. Every candidate graph runs on ONNX Runtime (CPU, Q/DQ as written) and is
compared with the FP32 graph of the same artifact (itself validated against PyTorch at export to 1e-5).

    python tools/measure_precision.py ARTIFACT [--images DIR|LIST] [--calib DIR|LIST] [--calib-count N]

~1 minute for the trained mini model, ~5 minutes for b16 at 384 on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from vit_deploy import artifact
from vit_deploy.images.sets import load_image_set
from vit_deploy.onnx.formats import FORMATS
from vit_deploy.onnx.fp16 import convert_fp16
from vit_deploy.onnx.graph import save_model
from vit_deploy.onnx.qdq import EXACT_QDQ_OPTION
from vit_deploy.onnx.quantize import quantize
from vit_deploy.parity.metrics import accuracy, compare_logits

FP16_POLICIES = {
    "all FP16": (),
    "LayerNorm FP32": ("LayerNormalization",),
    "LayerNorm + Softmax FP32": ("LayerNormalization", "Softmax"),
    "LayerNorm + Softmax + Add FP32": ("LayerNormalization", "Softmax", "Add"),
}


def run(path: Path, images: np.ndarray) -> tuple[np.ndarray, float]:
    options = ort.SessionOptions()
    options.add_session_config_entry(EXACT_QDQ_OPTION, "1")  # the arithmetic TensorRT does, on any CPU
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    out = np.concatenate([session.run(None, {"images": images[i : i + 8]})[0] for i in range(0, len(images), 8)])
    return out, (time.perf_counter() - start) / len(images) * 1000


def row(name: str, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None, ms: float, extra: str = "") -> str:
    m = compare_logits(ref, out)
    acc = f"{accuracy(out, labels):.2%}" if labels is not None else "-"
    return (f"| {name} | {m['min_cosine']:.7f} | {m['rel_l2']:.2e} | {m['top1_agreement']:.2%} | {acc} | "
            f"{ms:.1f} |{extra}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--images", required=True, help="evaluation images (a folder with labels.csv adds accuracy)")
    ap.add_argument("--calib", required=True, help="calibration images")
    ap.add_argument("--calib-count", "--calib-images", dest="calib_images", type=int, default=128)
    args = ap.parse_args()

    export = artifact.open(args.artifact)
    cfg = export.model_config
    fp32 = export.model_file
    evalset = load_image_set(args.images, cfg.preprocessing)
    calib = load_image_set(args.calib, cfg.preprocessing, args.calib_images, batch=8)
    ref, ms = run(fp32, evalset.images)
    print(f"## {cfg.variant} @ {cfg.img_size} ({cfg.num_tokens} tokens), eval: {len(evalset.files)} images from "
          f"{args.images}, calibration: {len(calib.files)} images from {args.calib}\n")
    header = "| graph | worst cosine | rel L2 | top-1 agreement | top-1 accuracy | ms/img (ORT CPU) |"
    print(header + "\n|---|---|---|---|---|---|")
    print(row("FP32", ref, ref, evalset.labels, ms))
    with tempfile.TemporaryDirectory() as tmp:
        graph = onnx.load(str(fp32))
        for name, keep in FP16_POLICIES.items():
            path = Path(tmp) / "fp16.onnx"
            save_model(convert_fp16(graph, keep), path)
            out, ms = run(path, evalset.images)
            print(row(f"FP16, {name}", ref, out, evalset.labels, ms))
        for fmt in FORMATS.values():
            for method in fmt.methods:
                path = Path(tmp) / f"{fmt.name}.onnx"
                start = time.perf_counter()
                quantize(fp32, path, calib.images, precision=fmt.name, method=method, num_tokens=cfg.num_tokens,
                         head_size=cfg.dim // cfg.heads, batch=8)
                seconds = time.perf_counter() - start
                out, ms = run(path, evalset.images)
                print(row(f"{fmt.label}, {method}", ref, out, evalset.labels, ms, f" calibration {seconds:.0f} s"))


if __name__ == "__main__":
    main()
