"""Explicit quantization, INT8 or FP8 (E4M3): QuantizeLinear/DequantizeLinear pairs written into the
ONNX graph (TensorRT 11 has no calibrators and no precision flags; it reads the scales from these
nodes and runs every other tensor in the type the graph gives it).

The recipe, each part chosen by measurement on a real trained ViT and real photographs
(docs/precision.md, docs/quantizers.md); the format (``formats.py``) is a parameter of every step:
1. **Weight layers** (patch embedding Conv, qkv, proj, fc1, fc2, head; FP8 leaves the patch
   embedding, which reads the image, in FP16: ``QuantFormat.quantizes_image``): quantized weights with
   symmetric per-output-channel scales, quantized activations with one symmetric per-tensor scale,
   biases float, no Q/DQ on GEMM outputs (``qdq.py``).
2. **SmoothQuant** (INT8; FP8 is better without it: ``QuantFormat.smoothquant``) folded into the
   LayerNorm affine and the V columns of qkv, and one Mul after each GELU; the strength alpha chosen
   per layer (``smoothquant.py``) on a sample of rows in which the class token, the one row the head
   reads, weighs half of each image. Without SmoothQuant the real ViT-Ti agrees with FP32 on 89.6% of
   held-out photos instead of 96-97% in INT8 (mean cosine 0.943 vs 0.993): one GELU-output channel
   reaches 219 where the rest stay under 9.
3. **Ranges** per tensor from exact, batch-independent histograms, by the chosen method
   (``calibrate.py``; the format's default first: ``mse`` for INT8, ``minmax`` for FP8).
4. **The accuracy budget**, last resort (:func:`fit_budget`): the most sensitive weight layers
   left in float, at most 10% of them, when the graph strays too far from FP32.
5. **The float parts** (TensorRT target): everything that is not quantized runs in FP16 under the
   FP16 graph's own policy (``fp16.float_parts_fp16``: LayerNormalization stays FP32, nothing else),
   at :data:`QDQ_OPSET`, with every scale a value FP16 holds exactly, so each DequantizeLinear feeds
   its FP16 GEMM with no Cast between. An FP32 float part would run in FP32 on the GPU and make the
   quantized engine slower than the FP16 one. The CPU target keeps FP32 floats (OpenVINO runs them
   in its own precision, and its INT8 path was measured fastest so).

Attention (the two MatMuls whose inputs are both activations, Q*scale @ K^T and P @ V): with
``quantize_attention``, Q/DQ go on both inputs of both, the pattern TensorRT's fused attention
takes (Q and K^T, the softmax output and V), but only where TensorRT can fuse it for the format
(``QuantFormat.fused_attention_*``: INT8 up to 512 tokens and head size 16/32/64); elsewhere it stays
float, and the policy says why. The default per format (:data:`ATTENTION_DEFAULT`) is the one the
real model's accuracy allows (docs/precision.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..batching import batches
from ..errors import UsageError
from ..progress import Progress
from ..specs import INT8_TARGETS, TOLERANCES
from . import calibrate, qdq, smoothquant
from .formats import INT8, QuantFormat, quant_format
from .graph import save_model

CACHE_VERSION = 6
MAX_FLOAT_FRACTION = 0.1  # the fallback leaves at most 10% of the weight layers in float
BUDGET_CHECK_IMAGES = 128  # images the fallback checks each candidate graph on
CLIP_CANDIDATES = 6  # activation ranges tried between the histogram's choice and no clipping
# The class token (row 0 of every [batch, tokens, channels] activation) is the one row the head reads.
# It weighs half of each image in the sample that chooses the SmoothQuant strengths and clips: held-out
# mean cosine of the real ViT-Ti 0.9951 -> 0.9956 (all INT8) on one half of the photos, 0.9957 -> 0.9960 on
# the other (docs/precision.md).
CLASS_TOKEN_ROW = 0
CLASS_TOKEN_SHARE = 0.5
# Whether attention is quantized when the caller does not say, per format (measured: docs/precision.md)
ATTENTION_DEFAULT = {"int8": False, "fp8": False}
# The opset of every quantized TensorRT graph: FP16 scales and FLOAT8E4M3FN Q/DQ need >= 19.
QDQ_OPSET = 19


@dataclass(frozen=True)
class Budget:
    """How far the quantized graph may stray from FP32 on the check images before layers go back to float.

    The last resort of the recipe: when the fully quantized graph misses these bounds, the most
    sensitive weight layers are left in float, one at a time, up to ``max_float_layers``.
    Defaults: the INT8 validation bounds (``specs.TOLERANCES["int8"]``).
    """

    min_top1_agreement: float = TOLERANCES["int8"].min_top1_agreement or 0.0
    min_mean_cosine: float = TOLERANCES["int8"].min_mean_cosine or 0.0
    max_float_layers: int | None = None  # None: 10% of the weight layers; 0: never fall back (no check)
    gate_top1: bool = True  # False for random weights, whose near-tied logits make agreement noise

    def misses(self, metrics: dict[str, float]) -> list[str]:
        out = []
        if not metrics["mean_cosine"] >= self.min_mean_cosine:
            out.append(f"mean cosine {metrics['mean_cosine']:.4f} < {self.min_mean_cosine}")
        if self.gate_top1 and not metrics["top1_agreement"] >= self.min_top1_agreement:
            out.append(f"top-1 agreement {metrics['top1_agreement']:.1%} < {self.min_top1_agreement:.1%}")
        return out

    def hint(self, metrics: dict[str, float], precision: str) -> str:
        """The options that would let this graph through, naming only those that govern what it missed."""
        options = ["allow more float layers with --max-float-layers N"]
        if not metrics["mean_cosine"] >= self.min_mean_cosine:
            options.append(f"lower the fallback's cosine with --budget-cosine (now {self.min_mean_cosine}; validation "
                           f"asks for {TOLERANCES[precision].min_mean_cosine})")
        if self.gate_top1 and not metrics["top1_agreement"] >= self.min_top1_agreement:
            options.append("loosen --accuracy-budget")
        options.append("skip the fallback with --max-float-layers 0 (validation still judges the graph)")
        return ", ".join(options)


class BudgetNotMet(UsageError):
    """Even with the allowed layers in float the quantized graph misses the budget."""


class RangeError(UsageError):
    """A calibrated range the graph's types cannot hold (non-finite, or beyond FP16 in the float parts)."""


def attention_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul nodes whose inputs are both activations (no weight initializer)."""
    return [n.name for n in qdq.activation_matmuls(model)]


def quantize(
    fp32_path: Path,
    out_path: Path,
    calib_images: calibrate.Images,
    *,
    precision: str = "int8",
    method: str | None = None,
    num_tokens: int,
    head_size: int | None = None,
    batch: int,
    cache_path: Path | None = None,
    progress: Progress | None = None,
    target: str = "tensorrt",
    smooth: bool | None = None,
    quantize_attention: bool | None = None,
    float_layers: Sequence[str] = (),
    budget: Budget | None = None,
) -> dict[str, Any]:
    """Calibrate on ``calib_images`` and write the ``precision`` Q/DQ graph to ``out_path``.

    ``calib_images``: one float32 array, or one per image size for a dynamic-resolution graph (the
    ranges, the SmoothQuant strengths and the budget check then cover every size).

    ``method``: the range rule (None: the format's default). ``smooth``: SmoothQuant (None: the
    format's default, ``QuantFormat.smoothquant``). ``head_size``: the attention head size
    (decides where TensorRT can fuse quantized attention; None: not checked). ``quantize_attention``:
    None takes :data:`ATTENTION_DEFAULT`. ``float_layers``: weight-layer node names to leave
    unquantized. ``budget``: check the graph on the calibration images and, where it misses, leave
    the most sensitive layers in float (:func:`fit_budget`); raises :class:`BudgetNotMet` when that
    is not enough. Returns the policy record for the manifest. Ranges and smoothing scales are
    cached in ``cache_path`` when given and reused when the file matches these settings (the caller
    keys the file name by the graph and the images).
    """
    fmt = quant_format(precision)
    method = fmt.method(method)
    smooth = fmt.smoothquant if smooth is None else smooth
    if target not in INT8_TARGETS:
        raise ValueError(f"unknown target {target!r}")
    if target == "cpu" and fmt is not INT8:
        raise UsageError(f"--target cpu makes INT8 graphs only (OpenVINO's CPU path); {fmt.label} is for TensorRT")
    attention = ATTENTION_DEFAULT[fmt.name] if quantize_attention is None else quantize_attention
    model = onnx.load(str(fp32_path))
    plan = plan_quantization(model, fmt, target, num_tokens, head_size, attention, float_layers)
    ranges, reused = calibration(model, plan, calib_images, batch, method, smooth, cache_path, progress)
    check_ranges(ranges, plan, target)
    check = None
    if budget is not None and budget.max_float_layers != 0:
        kept_float, check = fit_budget(model, plan, ranges, _first(calib_images, BUDGET_CHECK_IMAGES), budget, progress)
        if kept_float:
            plan = plan_quantization(model, fmt, target, num_tokens, head_size, attention,
                                     list(float_layers) + kept_float)
    save_model(finished_graph(model, plan, ranges), out_path)
    cache = {"path": str(cache_path), "reused": reused} if cache_path is not None else None
    policy = _policy(plan, ranges, method, smooth)
    return policy | {"budget_check": check, "calibration_cache": cache}


def _first(images: calibrate.Images, count: int) -> calibrate.Images:
    """The first ``count`` images, shared out among the sizes when there are several."""
    if isinstance(images, np.ndarray):
        return images[:count]
    arrays = list(images)
    return [a[: max(count // len(arrays), 1)] for a in arrays]


def run_graph(model: onnx.ModelProto, images: calibrate.Images, batch: int = 4) -> np.ndarray:
    """Logits of an in-memory graph on ONNX Runtime's CPU provider, Q/DQ evaluated as written (no fused
    integer kernels: ``qdq.EXACT_QDQ_OPTION``); one row per image, the sizes in
    order when ``images`` holds several."""
    import onnxruntime as ort

    from .export import INPUT_NAME

    options = ort.SessionOptions()
    options.add_session_config_entry(qdq.EXACT_QDQ_OPTION, "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT_NAME: chunk})[0]
                           for array in calibrate.image_arrays(images) for chunk in batches(array, batch)])


def fit_budget(
    model: onnx.ModelProto, plan: dict[str, Any], ranges: dict[str, Any], images: calibrate.Images, budget: Budget,
    progress: Progress | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The fewest weight layers to leave in float for the graph to meet ``budget`` on ``images``.

    Candidates are the layers whose quantized GEMM had the largest error at calibration (twice as
    many as may be kept); each is measured end to end once, left alone in float, and they are added
    in that order until the budget is met. Every candidate graph is measured in its finished form
    (FP16 float parts for TensorRT). Returns (node names, the check's record).
    """
    from ..parity.metrics import compare_logits

    reference = run_graph(model, images)
    count = calibrate.image_count(images)
    everything = [layer.node for layer in plan["layers"]]

    def measure(kept: list[str]) -> dict[str, float]:
        only = [n for n in everything if n not in kept] + [n for n, _ in plan["inputs"] if n not in everything]
        return compare_logits(reference, run_graph(finished_graph(model, plan, ranges, only=only), images))

    def record(kept: list[str], metrics: dict[str, float]) -> dict[str, Any]:
        return {"images": count, "float_layers": kept, "top1_agreement": metrics["top1_agreement"],
                "mean_cosine": metrics["mean_cosine"], "budget": vars(budget)}

    metrics = measure([])
    if not budget.misses(metrics):
        return [], record([], metrics)
    limit = budget.max_float_layers
    limit = int(MAX_FLOAT_FRACTION * len(everything)) if limit is None else limit
    errors = ranges.get("layer_errors", {})
    candidates = sorted(everything, key=lambda n: -errors.get(n, 0.0))[: 2 * limit]
    label = plan["format"].label
    if progress is not None and limit:
        progress.note(f"  {label} misses the budget ({'; '.join(budget.misses(metrics))}): "
                      f"trying up to {limit} of {len(candidates)} candidate layers in float")
    alone = {n: measure([n]) for n in candidates}
    ranked = sorted(candidates, key=lambda n: (-alone[n]["mean_cosine"], -alone[n]["top1_agreement"]))
    kept: list[str] = []
    for node in ranked[:limit]:
        kept.append(node)
        metrics = measure(kept)
        if not budget.misses(metrics):
            return kept, record(kept, metrics)
    tried = ", ".join(qdq.layer_label(n) for n in kept) or "none"
    raise BudgetNotMet(
        f"the {label} graph misses the accuracy budget ({'; '.join(budget.misses(metrics))} on {count} "
        f"calibration images) even with {len(kept)} layer(s) in float: {tried}. To build it: "
        f"{budget.hint(metrics, plan['format'].name)}; or see `vit-deploy inspect --sensitivity`, or use --fp16"
    )


def calibration(
    model: onnx.ModelProto, plan: dict[str, Any], images: calibrate.Images, batch: int, method: str, smooth: bool,
    cache_path: Path | None = None, progress: Progress | None = None,
) -> tuple[dict[str, Any], bool]:
    """``calibrate_ranges`` through the cache file when one is given; (ranges, whether they were cached)."""
    settings = {"format": plan["format"].name, "method": method, "smooth": smooth, "activations": plan["activations"]}
    ranges = _read_cache(cache_path, settings, plan, progress)
    if ranges is not None:
        return ranges, True
    ranges = calibrate_ranges(model, plan, images, batch, method, smooth, progress.tick if progress else None)
    _write_cache(cache_path, ranges, settings, progress)
    return ranges, False


def check_ranges(ranges: dict[str, Any], plan: dict[str, Any], target: str) -> None:
    """Refuse, in one line, a calibrated range the finished graph cannot hold.

    A non-finite range means the FP32 model itself overflowed on a calibration image. With FP16
    float parts (TensorRT target) an activation beyond FP16's largest value (65504) is infinite before
    it reaches its QuantizeLinear, whatever its scale: such a model needs FP32 float parts.
    """
    limit = float(np.finfo(np.float16).max) if target == "tensorrt" else math.inf
    for name in plan["activations"]:
        amax = ranges["absmax"].get(name)
        if amax is None or not math.isfinite(amax) or amax > limit:
            shown = "not finite" if amax is None or not math.isfinite(amax) else f"{amax:.4g} > {limit:g}"
            raise RangeError(
                f"the calibration images drive activation {name} out of range ({shown}): its "
                f"{plan['format'].label} scale cannot be stored in the graph's FP16 float parts. Check the images "
                "(an image the model overflows on?), or make the INT8 CPU graph (--int8 --target cpu, FP32 floats)"
            )


def finished_graph(
    model: onnx.ModelProto, plan: dict[str, Any], ranges: dict[str, Any], only: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """The graph as it is written: Q/DQ in place (:func:`quantized_graph`), float parts typed for the target."""
    graph = quantized_graph(model, plan, ranges, only)
    if plan["target"] != "tensorrt":
        return graph
    from .fp16 import float_parts_fp16

    return float_parts_fp16(graph, QDQ_OPSET)


def quantized_graph(
    model: onnx.ModelProto, plan: dict[str, Any], ranges: dict[str, Any], only: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """The smoothed FP32 graph with Q/DQ on the planned inputs (or on those of the nodes in ``only``).

    Scales hold values exact in the finished graph's float type (FP16 for TensorRT), so the typing
    pass changes no number the quantization relies on."""
    inputs = [(node, i) for node, i in plan["inputs"] if only is None or node in only]
    nodes = {n.name: n for n in model.graph.node}
    activations = {nodes[node].input[i] for node, i in inputs}
    layers = [layer for layer in plan["layers"] if only is None or layer.node in only]
    smoothed = smoothquant.fold(model, _groups_with_scales(plan["groups"], ranges["smoothing"]))
    scale_dtype = np.float16 if plan["target"] == "tensorrt" else np.float32
    return qdq.insert_qdq(smoothed, layers, {t: ranges["amax"][t] for t in sorted(activations)}, inputs,
                          plan["format"], scale_dtype)


def attention_verdict(
    fmt: QuantFormat, target: str, num_tokens: int, head_size: int | None, requested: bool,
) -> tuple[bool, str]:
    """(whether attention is quantized, why): where TensorRT cannot fuse quantized attention it stays float."""
    if not requested:
        return False, "float (the default for this precision: docs/precision.md)"
    if target == "cpu":
        return False, "float: CPU target (OpenVINO fuses float attention)"
    limit = fmt.fused_attention_max_tokens
    if limit is not None and num_tokens > limit:
        return False, (f"float: {num_tokens} tokens > {limit} (TensorRT fuses {fmt.label} attention up to {limit}); "
                       "quantized it would run unfused")
    if head_size is not None and head_size not in fmt.fused_attention_head_sizes:
        return False, (f"float: head size {head_size} is not one TensorRT fuses in {fmt.label} "
                       f"({fmt.head_sizes_text()}); "
                       "quantized it would run unfused")
    return True, f"{fmt.label} on both inputs of both attention MatMuls (TensorRT's fused attention pattern)"


def plan_quantization(
    model: onnx.ModelProto, fmt: QuantFormat, target: str, num_tokens: int, head_size: int | None = None,
    quantize_attention: bool = False, float_layers: Sequence[str] = (),
) -> dict[str, Any]:
    """What to quantize: weight layers, smoothing groups, activation tensors and the inputs that read them."""
    skipped = set(float_layers)
    image = {i.name for i in model.graph.input}
    kept_float_by_format = [] if fmt.quantizes_image else [
        layer.node for layer in qdq.weight_layers(model) if layer.activation in image]
    layers = [layer for layer in qdq.weight_layers(model)
              if layer.node not in skipped and layer.node not in kept_float_by_format]
    attention = qdq.activation_matmuls(model)
    with_attention, note = attention_verdict(fmt, target, num_tokens, head_size, quantize_attention)
    inputs = [(layer.node, 0) for layer in layers]
    if with_attention:
        inputs += [(node.name, i) for node in attention for i in (0, 1)]
    nodes = {n.name: n for n in model.graph.node}
    activations = sorted({nodes[name].input[i] for name, i in inputs})
    groups = smoothquant.find_groups(model, layers)
    # a softmax output's range is [0, 1] by definition: FP8's relative precision needs no clip below 1 (as
    # ModelOpt's FP8 MHA), where INT8's uniform levels are better spent by calibration (docs/precision.md)
    bounded = {} if fmt.integer else {n.output[0]: 1.0 for n in model.graph.node
                                      if n.op_type == "Softmax" and n.output[0] in activations}
    return {
        "format": fmt, "target": target, "layers": layers, "groups": groups, "inputs": inputs, "bounded": bounded,
        "activations": activations, "attention": [n.name for n in attention], "attention_quantized": with_attention,
        "attention_note": note, "attention_requested": quantize_attention,
        "float_layers": sorted(skipped | set(kept_float_by_format)), "float_by_format": kept_float_by_format,
    }


def calibrate_ranges(
    model: onnx.ModelProto, plan: dict[str, Any], images: calibrate.Images, batch: int, method: str, smooth: bool,
    tick: Any = None,
) -> dict[str, Any]:
    """Smoothing scales per group and the clipping range per activation tensor (two passes).

    Without ``smooth`` every group is still sampled and its quantized GEMM's error measured unscaled:
    that error ranks the layers the accuracy fallback tries first."""
    fmt: QuantFormat = plan["format"]
    groups: list[smoothquant.SmoothGroup] = plan["groups"]
    sampled = [g.activations[0] for g in groups]
    tap = calibrate.Tap(model, plan["activations"])
    channel, samples = calibrate.channel_absmax(tap, images, batch, tick, sampled,
                                                key_row=CLASS_TOKEN_ROW, key_share=CLASS_TOKEN_SHARE)
    top = {name: float(values.max()) for name, values in channel.items()}  # the range the quantizer sees
    smoothing = {}
    for group in groups:
        x_absmax = np.max([channel[a] for a in group.activations], axis=0)
        smoothquant.choose_scales(model, group, x_absmax, samples.get(group.activations[0]),
                                  alphas=smoothquant.ALPHAS if smooth else (), fmt=fmt)
        smoothing[group.producer] = {"alpha": group.alpha, "scales": group.scales.tolist()}
        for a in group.activations:
            top[a] = float((channel[a] / group.scales).max())
    divisors = {a: group.scales for group in groups for a in group.activations if group.alpha is not None}
    hist = calibrate.histograms(tap, top, images, batch, tick, divisors) if method != "minmax" else {}
    del tap
    amax = {name: calibrate.choose_amax(hist[name], top[name], method, fmt) if hist else top[name] for name in top}
    for group in groups if method != "minmax" else []:
        # where a group was rescaled, the clip is checked against the GEMM's own error
        sample = samples.get(group.activations[0])
        if sample is not None and group.alpha is not None and len(group.activations) == 1:
            name = group.activations[0]
            candidates = list(np.linspace(amax[name], top[name], CLIP_CANDIDATES))
            amax[name] = float(smoothquant.best_clip(model, group, sample, candidates, fmt))
    amax.update(plan["bounded"])
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


def cache_problem(data: Any, plan: dict[str, Any]) -> str | None:
    """What is wrong with a parsed cache file for ``plan`` (None: every field is usable).

    The file is ours, but it sits in a user's cache folder: a value edited, truncated or written by
    a bug must be refused here, not blamed on the model later (a NaN range makes a NaN graph)."""
    def positive(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0

    def numbers(value: Any, length: int) -> bool:
        return isinstance(value, list) and len(value) == length and all(positive(v) for v in value)

    for key in ("amax", "absmax", "smoothing", "channel_absmax", "layer_errors"):
        if not isinstance(data.get(key), dict):
            return f"has no {key} table"
    for name in plan["activations"]:
        for key in ("amax", "absmax"):
            if not positive(data[key].get(name)):
                return f"holds {key}[{name}] = {data[key].get(name)!r}, not a positive finite number"
        channels = data["channel_absmax"].get(name)
        if not isinstance(channels, list) or not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0
                                                     for v in channels):
            return f"holds channel_absmax[{name}] that is not a list of finite numbers >= 0"
    for group in plan["groups"]:
        entry = data["smoothing"].get(group.producer)
        if entry is None:
            continue  # smoothing off, or a group the cache does not cover: left unscaled
        channels = len(data["channel_absmax"].get(group.activations[0], []))
        if not isinstance(entry, dict) or not numbers(entry.get("scales"), channels):
            return f"holds smoothing scales for {group.producer} that are not {channels} positive finite numbers"
        alpha = entry.get("alpha")
        if alpha is not None and not (isinstance(alpha, int | float) and 0 <= alpha <= 1):
            return f"holds smoothing alpha {alpha!r} for {group.producer}, not a number in [0, 1]"
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in data["layer_errors"].values()):
        return "holds layer errors that are not finite numbers"
    return None


def _read_cache(
    path: Path | None, settings: dict[str, Any], plan: dict[str, Any], progress: Progress | None,
) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            reason = "not a calibration record"
        elif data.get("version") != CACHE_VERSION or data.get("settings") != settings:
            reason = "made by another version or with other settings"
        else:
            problem = cache_problem(data, plan)
            if problem is None:
                return data
            reason = f"damaged: it {problem}"
    except (OSError, ValueError) as e:
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


def _policy(plan: dict[str, Any], ranges: dict[str, Any], method: str, smooth: bool) -> dict[str, Any]:
    fmt: QuantFormat = plan["format"]
    alphas = [g["alpha"] for g in ranges["smoothing"].values() if g["alpha"] is not None]
    fp16 = plan["target"] == "tensorrt"
    return {
        "quantizer": "vit-deploy (SmoothQuant folded, per-tensor ranges from histograms)",
        "format": fmt.name,
        "activations": f"{fmt.name} symmetric per-tensor (zero point 0)",
        "weights": f"{fmt.name} symmetric per-channel (output channel)",
        "op_types": ["MatMul", "Gemm", "Conv"],
        "float_parts": ("fp16, LayerNormalization fp32 (the FP16 graph's policy); FP32 inputs/outputs" if fp16
                        else "fp32 (CPU target)"),
        "keep_fp32_ops": _kept_fp32() if fp16 else None,
        "scale_dtype": "float16" if fp16 else "float32",
        "opset": QDQ_OPSET if fp16 else None,
        "calibration_method": method,
        "percentile": calibrate.PERCENTILE if method == "percentile" else None,
        "target": plan["target"],
        "smoothquant": {
            "enabled": smooth, "groups": len(alphas), "left_unscaled": len(ranges["smoothing"]) - len(alphas),
            "alpha": {"min": min(alphas), "max": max(alphas)} if alphas else None,
        },
        "quantized_weight_layers": len(plan["layers"]),
        "float_layers": plan["float_layers"],
        "float_layer_names": [qdq.layer_label(n) for n in plan["float_layers"]],
        "float_by_format": [qdq.layer_label(n) for n in plan["float_by_format"]],
        "weight_layers_quantized_fraction": len(plan["layers"]) / max(len(plan["layers"]) + len(plan["float_layers"]),
                                                                       1),
        "attention": plan["attention_note"],
        "attention_quantized": plan["attention_quantized"],
        "attention_requested": plan["attention_requested"],
        "excluded_nodes": plan["float_layers"] + ([] if plan["attention_quantized"] else plan["attention"]),
    }


def _kept_fp32() -> list[str]:
    from .fp16 import DEFAULT_KEEP_FP32

    return list(DEFAULT_KEEP_FP32)
