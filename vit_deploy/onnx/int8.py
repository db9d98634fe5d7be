"""INT8 explicit quantization: QuantizeLinear/DequantizeLinear pairs written into the ONNX graph
(TensorRT 11 has no calibrators; it reads the scales from these nodes).

The recipe, each part chosen by measurement on a real trained ViT and real photographs
(docs/precision.md, docs/quantizers.md):
1. **Weight layers** (patch embedding Conv, qkv, proj, fc1, fc2, head): INT8 weights with
   symmetric per-output-channel scales, INT8 activations with one symmetric per-tensor scale,
   biases float, no Q/DQ on GEMM outputs (``qdq.py``).
2. **SmoothQuant** folded into the LayerNorm affine and the V columns of qkv, and one Mul after
   each GELU; the strength alpha chosen per layer (``smoothquant.py``) on a sample of rows in which
   the class token, the one row the head reads, weighs half of each image. Without SmoothQuant the real
   ViT-Ti agrees with FP32 on 89.6% of held-out photos instead of 96-97% (mean cosine 0.943 vs
   0.993): one GELU-output channel reaches 219 where the rest stay under 9.
3. **Ranges** per tensor from exact, batch-independent histograms, by the chosen method
   (``calibrate.py``; default ``mse``).
4. **The accuracy budget**, last resort (:func:`fit_budget`): the most sensitive weight layers
   left in float, at most 10% of them, when the graph strays too far from FP32.

Attention (the two MatMuls whose inputs are both activations, Q*scale @ K^T and P @ V): kept in
float by default for every target. Quantizing them adds error on a real model (the softmax output
has most of its mass near 0 and one per-tensor scale) while the weight layers, where the FLOPs of
a ViT at 224-384 mostly are, are all INT8; TensorRT's fused INT8 attention also stops at 512
tokens (b16 at 384 has 577). ``quantize_attention=True`` quantizes them where tokens <= 512.
OpenVINO (``--target cpu``) fuses float attention into one kernel and runs 1.2x faster with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..batching import batches
from ..errors import UsageError
from ..progress import Progress
from ..specs import CALIBRATION_METHODS, INT8_TARGETS, TOLERANCES
from . import calibrate, qdq, smoothquant
from .graph import save_model

ATTENTION_INT8_MAX_TOKENS = 512
DEFAULT_METHOD = CALIBRATION_METHODS[0]
CACHE_VERSION = 5
MAX_FLOAT_FRACTION = 0.1  # the fallback leaves at most 10% of the weight layers in float
BUDGET_CHECK_IMAGES = 128  # images the fallback checks each candidate graph on
CLIP_CANDIDATES = 6  # activation ranges tried between the histogram's choice and no clipping
# The class token (row 0 of every [batch, tokens, channels] activation) is the one row the head reads.
# It weighs half of each image in the sample that chooses the SmoothQuant strengths and clips: held-out
# mean cosine of the real ViT-Ti 0.9951 -> 0.9956 (all INT8) on one half of the photos, 0.9957 -> 0.9960 on
# the other (docs/precision.md).
CLASS_TOKEN_ROW = 0
CLASS_TOKEN_SHARE = 0.5


@dataclass(frozen=True)
class Budget:
    """How far the INT8 graph may stray from FP32 on the check images before layers go back to float.

    The last resort of the recipe: when the fully INT8 graph misses these bounds, the most
    sensitive weight layers are left in float, one at a time, up to ``max_float_layers``.
    Defaults: the INT8 validation bounds (``specs.TOLERANCES["int8"]``).
    """

    min_top1_agreement: float = TOLERANCES["int8"].min_top1_agreement or 0.0
    min_mean_cosine: float = TOLERANCES["int8"].min_mean_cosine or 0.0
    max_float_layers: int | None = None  # None: 10% of the weight layers; 0: never fall back
    gate_top1: bool = True  # False for random weights, whose near-tied logits make agreement noise

    def misses(self, metrics: dict[str, float]) -> list[str]:
        out = []
        if not metrics["mean_cosine"] >= self.min_mean_cosine:
            out.append(f"mean cosine {metrics['mean_cosine']:.4f} < {self.min_mean_cosine}")
        if self.gate_top1 and not metrics["top1_agreement"] >= self.min_top1_agreement:
            out.append(f"top-1 agreement {metrics['top1_agreement']:.1%} < {self.min_top1_agreement:.1%}")
        return out


class BudgetNotMet(UsageError):
    """Even with the allowed layers in float the INT8 graph misses the budget."""


def attention_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul nodes whose inputs are both activations (no weight initializer)."""
    return [n.name for n in qdq.activation_matmuls(model)]


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calib_images: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    num_tokens: int,
    batch: int,
    cache_path: Path | None = None,
    progress: Progress | None = None,
    target: str = "tensorrt",
    smooth: bool = True,
    quantize_attention: bool = False,
    float_layers: Sequence[str] = (),
    budget: Budget | None = None,
) -> dict[str, Any]:
    """Calibrate on ``calib_images`` and write the Q/DQ graph to ``out_path``.

    ``float_layers``: weight-layer node names to leave unquantized. ``budget``: check the graph on
    the calibration images and, where it misses, leave the most sensitive layers in float
    (:func:`fit_budget`); raises :class:`BudgetNotMet` when that is not enough.
    Returns the policy record for the manifest. Ranges and smoothing scales are cached in
    ``cache_path`` when given and reused when the file matches these settings (the caller keys
    the file name by the graph and the images).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    if target not in INT8_TARGETS:
        raise ValueError(f"unknown target {target!r}")
    model = onnx.load(str(fp32_path))
    plan = plan_int8(model, target, num_tokens, quantize_attention, float_layers)
    ranges, reused = calibration(model, plan, calib_images, batch, method, smooth, cache_path, progress)
    check = None
    if budget is not None:
        kept_float, check = fit_budget(model, plan, ranges, calib_images[:BUDGET_CHECK_IMAGES], budget, progress)
        if kept_float:
            plan = plan_int8(model, target, num_tokens, quantize_attention, list(float_layers) + kept_float)
    save_model(quantized_graph(model, plan, ranges), out_path)
    cache = {"path": str(cache_path), "reused": reused} if cache_path is not None else None
    policy = _policy(plan, ranges, method, target, num_tokens, smooth)
    return policy | {"budget_check": check, "calibration_cache": cache}


def run_graph(model: onnx.ModelProto, images: np.ndarray, batch: int = 4) -> np.ndarray:
    """Logits of an in-memory graph on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    from .export import INPUT_NAME

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT_NAME: chunk})[0] for chunk in batches(images, batch)])


def fit_budget(
    model: onnx.ModelProto, plan: dict[str, Any], ranges: dict[str, Any], images: np.ndarray, budget: Budget,
    progress: Progress | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The fewest weight layers to leave in float for the graph to meet ``budget`` on ``images``.

    Candidates are the layers whose INT8 GEMM had the largest error at calibration (twice as many
    as may be kept); each is measured end to end once, left alone in float, and they are added
    in that order until the budget is met. Returns (node names, the check's record).
    """
    from ..parity.metrics import compare_logits

    reference = run_graph(model, images)
    everything = [layer.node for layer in plan["layers"]]

    def measure(kept: list[str]) -> dict[str, float]:
        only = [n for n in everything if n not in kept] + [n for n, _ in plan["inputs"] if n not in everything]
        return compare_logits(reference, run_graph(quantized_graph(model, plan, ranges, only=only), images))

    def record(kept: list[str], metrics: dict[str, float]) -> dict[str, Any]:
        return {"images": len(images), "float_layers": kept, "top1_agreement": metrics["top1_agreement"],
                "mean_cosine": metrics["mean_cosine"], "budget": vars(budget)}

    metrics = measure([])
    if not budget.misses(metrics):
        return [], record([], metrics)
    limit = budget.max_float_layers
    limit = int(MAX_FLOAT_FRACTION * len(everything)) if limit is None else limit
    errors = ranges.get("layer_errors", {})
    candidates = sorted(everything, key=lambda n: -errors.get(n, 0.0))[: 2 * limit]
    if progress is not None and limit:
        progress.note(f"  INT8 misses the budget ({'; '.join(budget.misses(metrics))}): "
                      f"trying up to {limit} of {len(candidates)} candidate layers in float")
    alone = {n: measure([n]) for n in candidates}
    ranked = sorted(candidates, key=lambda n: (-alone[n]["mean_cosine"], -alone[n]["top1_agreement"]))
    kept: list[str] = []
    for node in ranked[:limit]:
        kept.append(node)
        metrics = measure(kept)
        if not budget.misses(metrics):
            return kept, record(kept, metrics)
    tried = ", ".join(qdq.layer_label(n) for n in kept) or "none (--max-float-layers 0)"
    raise BudgetNotMet(
        f"the INT8 graph misses the accuracy budget ({'; '.join(budget.misses(metrics))} on {len(images)} "
        f"calibration images) even with {len(kept)} layer(s) in float: {tried}. Allow more with "
        "--max-float-layers, loosen --accuracy-budget, see `vit-deploy inspect --sensitivity`, or use --fp16"
    )


def calibration(
    model: onnx.ModelProto, plan: dict[str, Any], images: np.ndarray, batch: int, method: str, smooth: bool,
    cache_path: Path | None = None, progress: Progress | None = None,
) -> tuple[dict[str, Any], bool]:
    """``calibrate_ranges`` through the cache file when one is given; (ranges, whether they were cached)."""
    settings = {"method": method, "smooth": smooth, "activations": plan["activations"]}
    ranges = _read_cache(cache_path, settings, progress)
    if ranges is not None:
        return ranges, True
    ranges = calibrate_ranges(model, plan, images, batch, method, smooth, progress.tick if progress else None)
    _write_cache(cache_path, ranges, settings, progress)
    return ranges, False


def quantized_graph(
    model: onnx.ModelProto, plan: dict[str, Any], ranges: dict[str, Any], only: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """The smoothed FP32 graph with Q/DQ on the planned inputs (or on those of the nodes in ``only``)."""
    inputs = [(node, i) for node, i in plan["inputs"] if only is None or node in only]
    nodes = {n.name: n for n in model.graph.node}
    activations = {nodes[node].input[i] for node, i in inputs}
    layers = [layer for layer in plan["layers"] if only is None or layer.node in only]
    smoothed = smoothquant.fold(model, _groups_with_scales(plan["groups"], ranges["smoothing"]))
    return qdq.insert_qdq(smoothed, layers, {t: ranges["amax"][t] for t in sorted(activations)}, inputs)


def plan_int8(
    model: onnx.ModelProto, target: str, num_tokens: int, quantize_attention: bool = False,
    float_layers: Sequence[str] = (),
) -> dict[str, Any]:
    """What to quantize: weight layers, smoothing groups, activation tensors and the inputs that read them."""
    skipped = set(float_layers)
    layers = [layer for layer in qdq.weight_layers(model) if layer.node not in skipped]
    attention = qdq.activation_matmuls(model)
    with_attention = quantize_attention and target == "tensorrt" and num_tokens <= ATTENTION_INT8_MAX_TOKENS
    inputs = [(layer.node, 0) for layer in layers]
    if with_attention:
        inputs += [(node.name, i) for node in attention for i in (0, 1)]
    nodes = {n.name: n for n in model.graph.node}
    activations = sorted({nodes[name].input[i] for name, i in inputs})
    groups = smoothquant.find_groups(model, layers)
    return {
        "layers": layers, "groups": groups, "inputs": inputs, "activations": activations,
        "attention": [n.name for n in attention], "attention_quantized": with_attention,
        "float_layers": sorted(skipped),
    }


def calibrate_ranges(
    model: onnx.ModelProto, plan: dict[str, Any], images: np.ndarray, batch: int, method: str, smooth: bool,
    tick: Any = None,
) -> dict[str, Any]:
    """Smoothing scales per group and the clipping range per activation tensor (two passes)."""
    groups: list[smoothquant.SmoothGroup] = plan["groups"] if smooth else []
    sampled = [g.activations[0] for g in groups]
    tap = calibrate.Tap(model, plan["activations"])
    channel, samples = calibrate.channel_absmax(tap, images, batch, tick, sampled,
                                                key_row=CLASS_TOKEN_ROW, key_share=CLASS_TOKEN_SHARE)
    top = {name: float(values.max()) for name, values in channel.items()}  # the range the quantizer sees
    smoothing = {}
    for group in groups:
        x_absmax = np.max([channel[a] for a in group.activations], axis=0)
        smoothquant.choose_scales(model, group, x_absmax, samples.get(group.activations[0]))
        smoothing[group.producer] = {"alpha": group.alpha, "scales": group.scales.tolist()}
        for a in group.activations:
            top[a] = float((channel[a] / group.scales).max())
    divisors = {a: group.scales for group in groups for a in group.activations if group.alpha is not None}
    hist = calibrate.histograms(tap, top, images, batch, tick, divisors) if method != "minmax" else {}
    del tap
    amax = {name: calibrate.choose_amax(hist[name], top[name], method) if hist else top[name] for name in top}
    for group in groups if method != "minmax" else []:
        # where a group was rescaled, the clip is checked against the GEMM's own error
        sample = samples.get(group.activations[0])
        if sample is not None and group.alpha is not None and len(group.activations) == 1:
            name = group.activations[0]
            candidates = list(np.linspace(amax[name], top[name], CLIP_CANDIDATES))
            amax[name] = float(smoothquant.best_clip(model, group, sample, candidates))
    errors = {layer.node: group.error for group in groups for layer in group.layers if group.error is not None}
    return {"smoothing": smoothing, "amax": amax, "absmax": top, "layer_errors": errors,
            "channel_absmax": {name: values.tolist() for name, values in channel.items()}}


def _groups_with_scales(groups: list[smoothquant.SmoothGroup], smoothing: dict[str, Any]):
    chosen = []
    for group in groups:
        if group.producer in smoothing:
            group.alpha = smoothing[group.producer]["alpha"]
            group.scales = np.asarray(smoothing[group.producer]["scales"], dtype=np.float32)
            chosen.append(group)
    return chosen


def _read_cache(path: Path | None, settings: dict[str, Any], progress: Progress | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("version") == CACHE_VERSION and data.get("settings") == settings:
            return data
        reason = "made by another version or with other settings"
    except (OSError, ValueError, AttributeError) as e:
        reason = f"unreadable ({e.__class__.__name__})"
    if progress is not None:
        progress.note(f"  calibration cache {path} is {reason}: calibrating again and rewriting it")
    return None


def _write_cache(
    path: Path | None, ranges: dict[str, Any], settings: dict[str, Any], progress: Progress | None,
) -> None:
    """Save the ranges whole (atomic replace), or warn: a cache that cannot be written costs only time.

    Concurrent runs with the same key compute the same ranges, so the last one to finish may replace
    the other's file; a reader sees one complete file or the other, never a mix.
    """
    if path is None:
        return
    from ..fileio import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"version": CACHE_VERSION, "settings": settings, **ranges}))
    except OSError as e:
        if progress is not None:
            progress.note(f"  warning: cannot save the calibration cache {path} ({e.strerror or e}); "
                          "the next run calibrates again")


def _policy(
    plan: dict[str, Any], ranges: dict[str, Any], method: str, target: str, num_tokens: int, smooth: bool,
) -> dict[str, Any]:
    alphas = [g["alpha"] for g in ranges["smoothing"].values() if g["alpha"] is not None]
    return {
        "quantizer": "vit-deploy (SmoothQuant folded, per-tensor ranges from histograms)",
        "activations": "int8 symmetric per-tensor (zero point 0)",
        "weights": "int8 symmetric per-channel (output channel)",
        "op_types": ["MatMul", "Gemm", "Conv"],
        "calibration_method": method,
        "percentile": calibrate.PERCENTILE if method == "percentile" else None,
        "target": target,
        "smoothquant": {
            "enabled": smooth, "groups": len(alphas), "left_unscaled": len(ranges["smoothing"]) - len(alphas),
            "alpha": {"min": min(alphas), "max": max(alphas)} if alphas else None,
        },
        "int8_weight_layers": len(plan["layers"]),
        "float_layers": plan["float_layers"],
        "float_layer_names": [qdq.layer_label(n) for n in plan["float_layers"]],
        "weight_layers_int8_fraction": len(plan["layers"]) / max(len(plan["layers"]) + len(plan["float_layers"]), 1),
        "attention": _attention_note(target, num_tokens, plan["attention_quantized"]),
        "excluded_nodes": plan["float_layers"] + ([] if plan["attention_quantized"] else plan["attention"]),
    }


def _attention_note(target: str, num_tokens: int, quantized: bool) -> str:
    if quantized:
        return f"quantized ({num_tokens} tokens <= {ATTENTION_INT8_MAX_TOKENS})"
    if target == "cpu":
        return "float: CPU target (OpenVINO fuses float attention)"
    if num_tokens > ATTENTION_INT8_MAX_TOKENS:
        return f"float: {num_tokens} tokens > {ATTENTION_INT8_MAX_TOKENS} (TensorRT fused INT8 MHA limit)"
    return "float (the default: quantizing it costs accuracy on trained models; docs/precision.md)"
