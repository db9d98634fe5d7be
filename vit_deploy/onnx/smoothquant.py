"""SmoothQuant: per-channel scales migrated from the activations that feed INT8 GEMMs into their
weights, folded into existing ops where there is one, so the function is unchanged.

A trained ViT's activations have channels of very different ranges, and one symmetric per-tensor
INT8 scale (what TensorRT takes) then leaves most channels a handful of levels. Dividing channel j
of the activation X by s_j and multiplying row j of the next weight W by s_j leaves X W unchanged
and moves the range into the weight, whose per-output-channel INT8 scales absorb it (Xiao et al.,
"SmoothQuant", 2023):

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

Where the division goes, per producer of X:
- LayerNorm -> (Gather of the class token ->) qkv / fc1 / head: into the LayerNorm's scale and bias;
- attention output -> proj: into the V columns of the qkv weight and bias (P @ V is linear in each
  channel of V; channel k of the attention output is channel 2D + k of qkv);
- GELU -> fc2: GELU is not linear, so nothing moves into fc1, and the division is one Mul by a
  per-channel constant after GELU: the only op the recipe adds (one per block). Folding it into
  GELU's own constant (``x * (erf(x / sqrt 2) + 1) * 0.5``, the 0.5 as a vector) adds none, but
  then OpenVINO no longer recognises GELU and the CPU path ran 49.6 instead of 63.0 img/s
  (b16@224, batch 8, 2 threads); a Mul before a quantizer it folds into the quantizer, and
  TensorRT fuses it into the pointwise kernel before the INT8 GEMM. This is where a real ViT's
  worst outlier lives (ViT-Ti block 7: one channel reaches 219 in the 4 corner-patch tokens while
  the others stay under 9).

``alpha`` is chosen per group from a grid by the error of the quantized GEMM on a sample of
calibration rows that keeps the outlier tokens and the class token (``calibrate.channel_absmax``;
as NNCF and SmoothQuant's auto-tuning search it),
measured per token relative to the token's norm; "no scaling" is a candidate too, so a group is
only rescaled where that helps.

**No channel is made louder than the median channel.** The scales see only the calibration
images, and a channel quiet there (small max|X_j|, so a small s_j) is multiplied by 1/s_j: when it
fires on other photos it overflows the per-tensor range and is clipped. On the real ViT-Ti, block
11's fc2 input reached 22x its range on held-out photos (even-numbered classes calibrate, odd ones
score), the largest single error of the graph. So max|X_j| is floored at the median over channels
before the scales are computed (:data:`QUIET_CHANNEL_FLOOR`): held-out mean cosine of the all-INT8
graph 0.9930 -> 0.9950, worst image 0.945 -> 0.979 (floors at the 25th-90th percentile measured
0.9945-0.9951).

Tried and measured on the real ViT-Ti (docs/precision.md), and left out because they did not help
there: the channel shift of Outlier Suppression+ (mean cosine 0.9930 -> 0.9932; it hurts channels
with rare huge values), activation-weighted weight clipping (no change), and per-layer bias
correction from the sample (0.9932 -> 0.9822).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import calibrate
from .formats import INT8, QuantFormat
from .qdq import WeightLayer, quantize_weight

ALPHAS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
SCALE_LIMITS = (1e-4, 1e4)
QUIET_CHANNEL_FLOOR = 50  # percentile of max|X_j| over channels below which a channel counts as quiet


@dataclass
class SmoothGroup:
    """Weight layers reading one activation whose channels can be rescaled by folding."""

    kind: str  # "layernorm", "attention-value" or "scaled-activation"
    producer: str  # the LayerNorm node, the qkv MatMul, or the Mul by a constant that ends GELU
    layers: list[WeightLayer]
    bias_add: str | None = None  # attention-value: the qkv bias Add node (none when qkv has no bias)
    alpha: float | None = None  # None: left unscaled (no scaling was better)
    scales: np.ndarray | None = field(default=None, repr=False)
    error: float | None = None  # the INT8 GEMM's sample error at the chosen scales (ranks float fallbacks)

    @property
    def activations(self) -> list[str]:
        return sorted({layer.activation for layer in self.layers})


def folded_name(node: str, index: int) -> str:
    """The name of the copy of ``node``'s input ``index`` that carries folded scales: how a reader of the
    quantized graph (the runtime's embedding) tells a smoothed LayerNorm or GEMM from an untouched one."""
    return f"{node}_smoothed_{index}"


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _channel_preserving(node: onnx.NodeProto) -> bool:
    """Ops between a LayerNorm and a GEMM that keep the last (channel) axis as it is."""
    if node.op_type != "Gather":
        return False
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    return axis in (0, 1)  # batch or token axis of a [batch, tokens, channels] tensor


def find_groups(model: onnx.ModelProto, layers: list[WeightLayer]) -> list[SmoothGroup]:
    """The groups whose scales can be folded (see the module docstring)."""
    inits = {t.name: t for t in model.graph.initializer}
    by_node = {layer.node: layer for layer in layers}
    consumers = _consumers(model)
    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n for n in model.graph.node for o in n.output}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    users = {name: len(found) for name, found in consumers.items()}

    groups = []
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 3:
            continue
        if any(i not in inits for i in node.input[1:3]):
            continue
        frontier, members, ok = list(consumers.get(node.output[0], [])), [], True
        while frontier and ok:
            user = frontier.pop()
            if user.name in by_node and user.op_type != "Conv":
                members.append(by_node[user.name])
            elif _channel_preserving(user):
                frontier += consumers.get(user.output[0], [])
            else:
                ok = False
        if ok and members:
            groups.append(SmoothGroup("layernorm", node.name, members))
    for layer in layers:
        mul = producers.get(layer.activation)
        if mul is None or mul.op_type != "Mul" or users[layer.activation] != 1 or layer.op_type == "Conv":
            continue
        if sum(i in inits or i in constants for i in mul.input) != 1:
            continue
        groups.append(SmoothGroup("scaled-activation", mul.name, [layer]))
    for layer in layers:
        if not layer.node.endswith("/attn/proj/MatMul"):
            continue
        prefix = layer.node[: -len("proj/MatMul")]
        qkv, bias_add = nodes.get(prefix + "qkv/MatMul"), nodes.get(prefix + "qkv/Add")
        if qkv is None or qkv.input[1] not in inits:
            continue
        bias = bias_add.name if bias_add is not None and qkv.output[0] in bias_add.input else None
        groups.append(SmoothGroup("attention-value", qkv.name, [layer], bias_add=bias))
    return groups


def _weights(model: onnx.ModelProto, group: SmoothGroup, channels: int) -> list[np.ndarray]:
    """Each layer's weight as [input channels, outputs]."""
    inits = {t.name: t for t in model.graph.initializer}
    return [np.moveaxis(numpy_helper.to_array(inits[m.weight]), m.in_axis, 0).reshape(channels, -1)
            for m in group.layers]


def smoothing_scales(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    s = np.power(np.maximum(x_absmax, 1e-8), alpha) / np.power(np.maximum(w_absmax, 1e-8), 1 - alpha)
    return np.clip(s, *SCALE_LIMITS).astype(np.float32)


def with_headroom(x_absmax: np.ndarray) -> np.ndarray:
    """Per-channel maxima with the quiet channels raised to the median one's, so that a channel quiet on
    the calibration images is not amplified past the others and keeps headroom for other photos."""
    return np.maximum(x_absmax, np.percentile(x_absmax, QUIET_CHANNEL_FLOOR))


def _quantized_gemm_error(
    x: np.ndarray, row_weights: np.ndarray, weights: list[np.ndarray], s: np.ndarray, clip: float | None = None,
    exact: list[np.ndarray] | None = None, fmt: QuantFormat = INT8,
) -> float:
    """Mean per-token relative squared error of the quantized GEMM(s) on sample rows ``x`` (each standing
    for ``row_weights`` rows) after scaling by ``s``: per-channel weight scales, and a per-tensor
    activation range ``clip`` (default: the format's default range rule on the sample). ``exact``: the float
    products ``x @ w``, when the caller has them (they do not depend on the candidate)."""
    xs = x / s
    if clip is None:
        top = float(np.abs(xs).max())
        hist = np.histogram(np.abs(xs), bins=calibrate.HISTOGRAM_BINS, range=(0.0, max(top, 1e-12)),
                            weights=np.broadcast_to(row_weights[:, None], xs.shape))[0]
        clip = calibrate.choose_amax(hist, top, fmt.methods[0], fmt)  # the format's default range rule
    step = max(clip, 1e-12) / fmt.max_value
    xq = fmt.fake(xs / step) * step
    err = np.zeros(len(x))
    ref = np.zeros(len(x))
    for w, product in zip(weights, exact or [x @ w for w in weights], strict=True):
        q, scale = quantize_weight(w * s[:, None], 1, fmt)
        err += np.square(xq @ (q.astype(np.float32) * scale) - product).sum(axis=1)
        ref += np.square(product).sum(axis=1)
    # per token, relative: the next LayerNorm rescales every token, so a token's error counts
    # against its own norm (a plain sum would let the few huge-norm outlier tokens decide)
    return float(row_weights @ (err / np.maximum(ref, 1e-30)) / row_weights.sum())


def choose_scales(
    model: onnx.ModelProto, group: SmoothGroup, x_absmax: np.ndarray,
    sample: tuple[np.ndarray, np.ndarray] | None, alphas: tuple[float, ...] = ALPHAS, fmt: QuantFormat = INT8,
) -> None:
    """Set ``group.alpha`` and ``group.scales``: the alpha of the grid with the least quantized-GEMM
    error on ``sample`` (rows and their weights), or no scaling where that is at least as good;
    alpha 0.5 without a sample. Channels quieter than the median one are scaled as the median one.
    With no ``alphas`` the group stays unscaled and only its error is measured (``group.error``)."""
    weights = _weights(model, group, len(x_absmax))
    w_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    x_absmax = with_headroom(x_absmax)
    if sample is None:
        group.alpha, group.scales = (0.5, smoothing_scales(x_absmax, w_absmax, 0.5)) if alphas else (
            None, np.ones_like(x_absmax, dtype=np.float32))
        return
    candidates: dict[float | None, np.ndarray] = {a: smoothing_scales(x_absmax, w_absmax, a) for a in alphas}
    candidates[None] = np.ones_like(x_absmax, dtype=np.float32)  # no scaling
    exact = [sample[0] @ w for w in weights]
    errors = {a: _quantized_gemm_error(*sample, weights, scales, exact=exact, fmt=fmt)
              for a, scales in candidates.items()}
    group.alpha = min(errors, key=lambda a: errors[a])
    group.scales, group.error = candidates[group.alpha], errors[group.alpha]


def best_clip(
    model: onnx.ModelProto, group: SmoothGroup, sample: tuple[np.ndarray, np.ndarray], candidates: list[float],
    fmt: QuantFormat = INT8,
) -> float:
    """The activation range among ``candidates`` with the least error of the group's quantized GEMM(s).

    A histogram of the scaled tensor treats every value alike, but a channel that carried an
    outlier multiplies a weight row scaled up by the same factor: the GEMM's own error on the
    sample, outlier tokens included, weighs that.
    """
    assert group.scales is not None, "choose_scales first"
    weights = _weights(model, group, len(group.scales))
    exact = [sample[0] @ w for w in weights]
    errors = {c: _quantized_gemm_error(*sample, weights, group.scales, clip=c, exact=exact, fmt=fmt)
              for c in candidates}
    best = min(errors, key=errors.__getitem__)
    group.error = errors[best]
    return best


def fold(model: onnx.ModelProto, groups: list[SmoothGroup]) -> onnx.ModelProto:
    """A copy of ``model`` with every group's scales folded in (groups need ``scales`` set)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    nodes = {n.name: n for n in out.graph.node}
    constants = {o: n for n in out.graph.node if n.op_type == "Constant" for o in n.output}

    def value(name: str) -> np.ndarray:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return numpy_helper.to_array(helper.get_attribute_value(constants[name].attribute[0]))

    def replace(node: onnx.NodeProto, index: int, array: np.ndarray) -> None:
        """Give ``node`` its own copy of the input: onnxsim merges equal initializers (a random
        init's LayerNorm ones, zero biases), and one reader's scales must not reach the others."""
        name = folded_name(node.name, index)
        tensor = numpy_helper.from_array(array.astype(np.float32), name)
        if name in inits:
            inits[name].CopyFrom(tensor)
        else:
            out.graph.initializer.append(tensor)
            inits[name] = out.graph.initializer[-1]
        node.input[index] = name

    def along(array: np.ndarray, factor: np.ndarray, axis: int) -> np.ndarray:
        shape = [1] * array.ndim
        shape[axis] = -1
        return array * factor.reshape(shape)

    inserted: dict[str, onnx.NodeProto] = {}  # new node, to go right after the named one
    for group in groups:
        s = group.scales
        assert s is not None, "choose_scales first"
        if group.alpha is None:
            continue  # left unscaled
        for layer in group.layers:
            node = nodes[layer.node]
            replace(node, 1, along(value(node.input[1]), s, layer.in_axis))
        if group.kind == "layernorm":
            ln = nodes[group.producer]
            replace(ln, 1, value(ln.input[1]) / s)
            replace(ln, 2, value(ln.input[2]) / s)
        elif group.kind == "attention-value":
            qkv = nodes[group.producer]
            factor = np.concatenate([np.ones(2 * len(s), np.float32), 1 / s])
            replace(qkv, 1, along(value(qkv.input[1]), factor, 1))
            if group.bias_add is not None:
                add = nodes[group.bias_add]
                index = next(i for i, name in enumerate(add.input) if name in inits)
                replace(add, index, value(add.input[index]) * factor)
        else:  # scaled-activation: one Mul by 1/s after GELU, which keeps its own pattern intact
            mul = nodes[group.producer]
            original, scale = mul.output[0], f"{group.producer}_smoothing"
            mul.output[0] = f"{original}_unsmoothed"
            out.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), scale))
            inits[scale] = out.graph.initializer[-1]
            inserted[mul.name] = helper.make_node("Mul", [mul.output[0], scale], [original],
                                                  name=f"{group.producer}_Smoothing")
    if inserted:
        ordered = [m for n in out.graph.node for m in ([n, inserted[n.name]] if n.name in inserted else [n])]
        del out.graph.node[:]
        out.graph.node.extend(ordered)
    used = {i for n in out.graph.node for i in n.input}
    kept = [t for t in out.graph.initializer if t.name in used]  # the originals that were copied
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out
