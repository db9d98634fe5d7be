"""Where INT8 or FP8 loses accuracy: ``vit-deploy inspect ARTIFACT --sensitivity --calib ... --val ...``.

Calibrates once (the same recipe as ``build-engine --int8`` / ``--fp8``, float parts as the build
writes them), then measures on real images, for
every weight layer (patch embedding, qkv, proj, fc1, fc2, head):
- **only**: the FP32 graph with just this layer quantized: the error the layer adds by itself;
- **all but**: the full INT8 graph with just this layer left in float: what leaving it out buys;
each as top-1 agreement with FP32, mean and worst cosine of the logits, and top-1 accuracy when
the images have labels. Per quantized activation tensor it reports the statistics behind the
error: range (max |x|), the clipping range chosen, the fraction of values clipped, the
outlier channels (channel max over 8x the median channel max; before SmoothQuant) and the
SmoothQuant strength applied. Anchors: ONNX Runtime's ``qdq_loss_debug``, Polygraphy's
``debug precision``, ModelOpt's per-layer reports.

The per-layer runs reuse one calibration (ranges and smoothing scales), so a report costs one
calibration plus two inferences of the validation set per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import UsageError
from .onnx import calibrate
from .onnx.formats import quant_format
from .onnx.qdq import layer_kind, layer_label
from .onnx.quantize import calibrate_ranges, finished_graph, plan_quantization, run_graph
from .parity.metrics import accuracy, compare_logits
from .progress import Progress
from .specs import QUANTIZED_PRECISIONS

SENSITIVITY_BATCH = 8  # calibration batch: the fewest calibration images a report takes
OUTLIER_FACTOR = 8.0  # a channel whose max |x| exceeds 8x the median channel's is an outlier


def _metrics(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    m = compare_logits(reference, logits)
    out = {"top1_agreement": m["top1_agreement"], "mean_cosine": m["mean_cosine"], "min_cosine": m["min_cosine"]}
    if labels is not None:
        out["accuracy"] = accuracy(logits, labels)
    return out


def sensitivity_report(
    fp32_path: Path,
    calib_images: np.ndarray,
    val_images: np.ndarray,
    labels: np.ndarray | None,
    *,
    num_tokens: int,
    precision: str = "int8",
    method: str | None = None,
    target: str = "tensorrt",
    batch: int = SENSITIVITY_BATCH,
    smooth: bool | None = None,
    tick: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Per-layer and per-tensor sensitivity of the FP32 graph at ``fp32_path`` in ``precision`` (see the module doc)."""
    fmt = quant_format(precision)
    method = fmt.method(method)
    smooth = fmt.smoothquant if smooth is None else smooth
    model = onnx.load(str(fp32_path))
    plan = plan_quantization(model, fmt, target, num_tokens)
    ranges = calibrate_ranges(model, plan, calib_images, batch, method, smooth, tick)
    reference = run_graph(model, val_images)
    full = run_graph(finished_graph(model, plan, ranges), val_images)

    layers = []
    for layer in plan["layers"]:
        everyone_else = [other.node for other in plan["layers"] if other.node != layer.node]
        only = run_graph(finished_graph(model, plan, ranges, only=[layer.node]), val_images)
        all_but = run_graph(finished_graph(model, plan, ranges, only=everyone_else), val_images)
        layers.append({
            "layer": layer_label(layer.node), "node": layer.node, "kind": layer_kind(layer.node),
            "only": _metrics(reference, only, labels), "all_but": _metrics(reference, all_but, labels),
        })
        if tick is not None:
            tick()

    report = {
        "fp32_graph": str(fp32_path),
        "precision": precision,
        "method": method,
        "target": target,
        "smoothquant": smooth,
        "images": {"calibration": len(calib_images), "validation": len(val_images), "labels": labels is not None},
        "fp32": {"accuracy": accuracy(reference, labels)} if labels is not None else {},
        "quantized": _metrics(reference, full, labels),
        "layers": layers,
        "tensors": tensor_statistics(model, plan, ranges, calib_images, batch),
    }
    return report


REPORT_KEYS = {"fp32_graph", "method", "layers", "tensors"}  # what every report holds (no schema field)
WHOLE_GRAPH_KEYS = ("quantized", "int8")  # the whole graph's metrics: "int8" in reports before FP8


def is_report(path: Path) -> bool:
    """Whether ``path`` holds a sensitivity report (JSON), which ``inspect --sensitivity --report`` may replace."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and REPORT_KEYS <= set(doc) and any(k in doc for k in WHOLE_GRAPH_KEYS)


def tensor_statistics(
    model: onnx.ModelProto, plan: dict[str, Any], ranges: dict[str, Any], images: np.ndarray, batch: int,
) -> list[dict[str, Any]]:
    """Range, chosen clip, clipped fraction, outlier channels and smoothing of each quantized activation."""
    activations = plan["activations"]
    tap = calibrate.Tap(model, activations)
    divisors = {a: np.asarray(ranges["smoothing"][g.producer]["scales"], dtype=np.float32)
                for g in plan["groups"] for a in g.activations if ranges["smoothing"].get(g.producer, {}).get("alpha")}
    hist = calibrate.histograms(tap, {a: ranges["absmax"][a] for a in activations}, images, batch, divisors=divisors)
    readers = {}
    for node, i in plan["inputs"]:
        readers.setdefault(next(n for n in model.graph.node if n.name == node).input[i], []).append(node)
    alpha_of = {}
    for group in plan["groups"]:
        for a in group.activations:
            alpha_of[a] = ranges["smoothing"].get(group.producer, {}).get("alpha")
    rows = []
    for name in activations:
        channels = np.asarray(ranges["channel_absmax"][name])  # before SmoothQuant, from the calibration
        median = float(np.median(channels))
        outliers = np.flatnonzero(channels > OUTLIER_FACTOR * max(median, 1e-12))
        top, clip = ranges["absmax"][name], ranges["amax"][name]
        counts = hist[name]
        above = int(counts[min(int(clip / max(top, 1e-12) * len(counts)), len(counts)) :].sum())
        rows.append({
            "tensor": name,
            "read_by": [layer_label(n) for n in readers.get(name, [])],
            "max_abs": float(channels.max()),
            "median_channel_max": median,
            "outlier_channels": len(outliers),
            "outlier_channel_ids": outliers[:8].tolist(),
            "smoothquant_alpha": alpha_of.get(name),
            "max_abs_smoothed": top,
            "clip": clip,
            "clipped_fraction": above / max(int(counts.sum()), 1),
        })
    return rows


def sensitivity_for_artifact(
    artifact: Path, calib: str | None, val_images: str | None, calib_images: int | None = 256,
    method: str | None = None, target: str | None = None, progress: Progress | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """:func:`sensitivity_report` for an FP32 export, or for an INT8/FP8 graph (then its parent export, its
    precision and its target), with the image sets loaded through the artifact's preprocessing.

    Args:
        artifact: an FP32 export folder, or an INT8/FP8 graph folder.
        calib: calibration images (a folder or a definition file); required.
        val_images: labelled images to score on (a folder with labels.csv); None: the calibration images.
        calib_images: use at most this many calibration images (a seeded sample).
        method: the activation range rule (None: the precision's default).
        target: ``"tensorrt"`` or ``"cpu"`` (None: the graph's, else tensorrt).
        progress: where progress goes (None: silent).
        precision: ``"int8"`` or ``"fp8"`` (None: the graph's, else int8).
    """
    from .artifact import open as open_artifact
    from .images.sets import load_image_set

    if not calib:
        raise UsageError("--sensitivity needs calibration images: pass --calib FOLDER or a definition file")
    if calib_images is not None and calib_images < 1:
        raise UsageError("--calib-count must be positive")
    art = open_artifact(artifact, verify=False)
    if art.kind == "onnx" and art.precision in QUANTIZED_PRECISIONS:
        target = target or art.section("precision_policy").get("target", "tensorrt")
        precision = precision or art.precision
        art = open_artifact(Path(art.section("parent")["path"]), verify=True)
    elif art.kind != "onnx" or art.precision != "fp32":
        raise UsageError(f"{artifact} is a {art.precision} {art.kind} artifact; --sensitivity reads an FP32 "
                         "export or an INT8/FP8 graph (whose export it then uses)")
    else:
        art = open_artifact(artifact, verify=True)
    precision = precision or "int8"
    fmt = quant_format(precision)
    fmt.method(method)  # refuses a rule the format has no use for, before any work
    if target == "cpu" and fmt.name != "int8":
        raise UsageError(f"--target cpu applies to INT8 only; {fmt.label} graphs are for TensorRT")
    cfg = art.model_config
    progress = progress or Progress(enabled=False)
    calib_set = load_image_set(calib, cfg.preprocessing, calib_images, SENSITIVITY_BATCH, 0, progress,
                               too_few=f"add images (--sensitivity calibrates on at least {SENSITIVITY_BATCH})")
    if val_images:
        val = load_image_set(val_images, cfg.preprocessing, None, 1, 0, progress, role="validation",
                             num_classes=cfg.num_classes)
        if val.labels is None:
            raise UsageError(f"--val {val_images} has no labels.csv, and the report's accuracy needs one "
                             "('file,label' rows); add it, or omit --val to score on the calibration images")
        images, labels = val.images, val.labels
    else:
        images, labels = calib_set.images, None
    layers = len(plan_quantization(onnx.load(str(art.model_file), load_external_data=False), fmt,
                                   target or "tensorrt", cfg.num_tokens)["layers"])
    with progress.step(f"Calibrating and measuring {layers} layers, each alone and each left out"), \
            progress.counter(2 * len(calib_set.images) + layers, "calibration images and layers"):
        report = sensitivity_report(
            art.model_file, calib_set.images, images, labels, num_tokens=cfg.num_tokens, precision=precision,
            method=method, target=target or "tensorrt", tick=progress.tick,
        )
    report["artifact"] = str(art.directory)
    report["calibration_set"] = calib_set.summary()
    report["validation_set"] = val_images or "the calibration images"
    return report
