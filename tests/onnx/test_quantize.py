"""The quantization recipe's parts against independent references: range rules against brute force (INT8
and FP8), the SmoothQuant fold against the unfolded graph, weight quantization against its analytic error
bound, calibration statistics against a single pass over all images, the accuracy-budget fallback, the
calibration cache's checks, and the finished TensorRT graph's types."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from vit_deploy.images.synthetic import random_images
from vit_deploy.onnx import calibrate, qdq, smoothquant
from vit_deploy.onnx import quantize as quant
from vit_deploy.onnx.calibrate import choose_amax
from vit_deploy.onnx.formats import FP8, INT8
from vit_deploy.specs import Preprocessing

INT8_LEVELS = 127

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def fp32(tiny_artifacts) -> Path:
    return tiny_artifacts["fp32"] / "model.onnx"


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return RNG.uniform(-1, 1, size=(12, 3, 32, 32)).astype(np.float32)


def fake_quant(x: np.ndarray, clip: float) -> np.ndarray:
    step = clip / INT8_LEVELS
    return np.clip(np.rint(x / step), -INT8_LEVELS, INT8_LEVELS) * step


def test_range_rules_against_brute_force():
    x = np.abs(np.concatenate([RNG.normal(size=200_000), [40.0, -35.0]]))  # Gaussian bulk, two outliers
    top = float(x.max())
    hist = np.histogram(x, bins=calibrate.HISTOGRAM_BINS, range=(0, top))[0]
    assert choose_amax(hist, top, "minmax") == top
    assert choose_amax(hist, top, "percentile") == pytest.approx(np.percentile(x, calibrate.PERCENTILE), rel=0.05)
    # mse: the histogram's choice is within 2% of the expected error of the best clip found by quantizing
    grid = np.linspace(0.5, top, 400)
    errors = [np.mean(np.square(fake_quant(x, c) - x)) for c in grid]
    mse_clip = choose_amax(hist, top, "mse")
    assert np.mean(np.square(fake_quant(x, mse_clip) - x)) <= 1.02 * min(errors)
    assert mse_clip < top  # the far outlier is clipped
    # entropy clips the far outliers too, and keeps the bulk (99.99% of a unit Gaussian is below 4)
    assert 3.5 < choose_amax(hist, top, "entropy") < 10
    with pytest.raises(ValueError):
        choose_amax(hist, top, "kl")
    with pytest.raises(ValueError, match="FP8"):
        choose_amax(hist, top, "entropy", FP8)  # a rule for 128 uniform levels: no meaning on a float grid


def test_statistics_do_not_depend_on_the_batch(fp32, images):
    model = onnx.load(str(fp32))
    tensors = [layer.activation for layer in qdq.weight_layers(model)]
    tap = calibrate.Tap(model, tensors)
    one, sample_one = calibrate.channel_absmax(tap, images, 1, sampled=tensors[1:2])
    four, sample_four = calibrate.channel_absmax(tap, images, 4, sampled=tensors[1:2])
    # reference: one run over all images at once, with every tensor exposed
    import onnxruntime as ort

    session = ort.InferenceSession(calibrate._exposing(model, tensors), providers=["CPUExecutionProvider"])
    values = dict(zip(tensors, session.run(tensors, {"images": images}), strict=True))
    for name in tensors:
        v = np.abs(values[name])  # per channel: the last axis, or axis 1 of the [N, C, H, W] image input
        expected = v.max(axis=(0, 2, 3)) if v.ndim == 4 else v.reshape(-1, v.shape[-1]).max(axis=0)
        np.testing.assert_allclose(one[name], expected, rtol=1e-6)
        np.testing.assert_allclose(four[name], expected, rtol=1e-6)
    np.testing.assert_array_equal(sample_one[tensors[1]][0], sample_four[tensors[1]][0])
    rows, weights = sample_one[tensors[1]]
    n_tokens = values[tensors[1]].shape[1]
    assert weights.sum() == pytest.approx(len(images) * n_tokens)  # the weighted sample stands for every row
    # 17 tokens: each image gives all its rows, its 4 largest first
    per_token = np.abs(values[tensors[1]]).max(axis=2)
    first_rows = np.abs(rows).max(axis=1).reshape(len(images), n_tokens)[:, :4]
    np.testing.assert_allclose(first_rows, -np.sort(-per_token, axis=1)[:, :4], rtol=1e-5)
    top = {name: float(one[name].max()) for name in tensors}
    h1 = calibrate.histograms(tap, top, images, 1)
    h4 = calibrate.histograms(tap, top, images, 5)
    for name in tensors:
        np.testing.assert_array_equal(h1[name], h4[name])
        assert h1[name].sum() == values[name].size
    # divided by per-channel scales: the histogram of the smoothed tensor, against numpy's
    name = tensors[1]
    scales = np.linspace(0.5, 2, len(one[name])).astype(np.float32)
    top_scaled = float((one[name] / scales).max())
    scaled = calibrate.histograms(tap, {name: top_scaled}, images, 3, divisors={name: scales})[name]
    expected = np.histogram(np.abs(values[name] / scales), bins=calibrate.HISTOGRAM_BINS, range=(0, top_scaled))[0]
    assert np.abs(scaled - expected).sum() <= 2  # float rounding at bin edges only


def test_statistics_over_several_sizes_are_those_of_each_size_together(tiny_dynamic):
    """A dynamic-resolution graph calibrated at 32 and 64 px: each statistic equals the one over both sizes'
    tensors taken from a plain ONNX Runtime run at each size, and the SmoothQuant sample holds rows of both."""
    import onnxruntime as ort

    from vit_deploy.artifact import read_manifest

    folder = tiny_dynamic["fp32"]
    model = onnx.load(str(folder / read_manifest(folder)["files"][0]["path"]))
    tensors = [layer.activation for layer in qdq.weight_layers(model)]
    sized = [random_images(6, 32, Preprocessing(32, 32), seed=1), random_images(4, 64, Preprocessing(64, 64), seed=2)]
    tap = calibrate.Tap(model, tensors)
    absmax, samples = calibrate.channel_absmax(tap, sized, 2, sampled=tensors[1:2])
    session = ort.InferenceSession(calibrate._exposing(model, tensors), providers=["CPUExecutionProvider"])
    runs = [dict(zip(tensors, session.run(tensors, {"images": x}), strict=True)) for x in sized]
    for name in tensors:
        each = [np.abs(r[name]) for r in runs]
        per_size = [v.max(axis=(0, 2, 3)) if v.ndim == 4 else v.reshape(-1, v.shape[-1]).max(axis=0) for v in each]
        np.testing.assert_allclose(absmax[name], np.maximum(*per_size), rtol=1e-6)
    rows, weights = samples[tensors[1]]
    tokens = [r[tensors[1]].shape[1] for r in runs]  # 17 at 32 px, 65 at 64 px
    # all 6 + 4 images are sampled (16 per size at most), each with every row (4 largest + up to 64 others)
    assert tokens == [17, 65] and len(rows) == 6 * 17 + 4 * 65
    assert weights.sum() == pytest.approx(6 * 17 + 4 * 65)
    top = {name: float(absmax[name].max()) for name in tensors}
    together = calibrate.histograms(tap, top, sized, 3)
    for name in tensors:
        alone = [calibrate.histograms(tap, top, [x], 3)[name] for x in sized]
        np.testing.assert_array_equal(together[name], alone[0] + alone[1])
        assert together[name].sum() == sum(r[name].size for r in runs)


def test_the_class_token_row_joins_every_sample_with_its_share(fp32, images):
    model = onnx.load(str(fp32))
    name = next(layer.activation for layer in qdq.weight_layers(model) if "/fc2/" in layer.node)
    tap = calibrate.Tap(model, [name])
    _, plain = calibrate.channel_absmax(tap, images, 4, sampled=[name])
    _, keyed = calibrate.channel_absmax(tap, images, 4, sampled=[name], key_row=0, key_share=0.5)
    import onnxruntime as ort

    session = ort.InferenceSession(calibrate._exposing(model, [name]), providers=["CPUExecutionProvider"])
    values = session.run([name], {"images": images})[0]  # [images, tokens, channels]
    n_tokens = values.shape[1]
    rows, weights = keyed[name]
    per_image_rows, per_image_weights = rows.reshape(len(images), n_tokens, -1), weights.reshape(len(images), -1)
    # each image: its other rows first (the class token not among them), then the class token's row last
    np.testing.assert_allclose(per_image_rows[:, -1], values[:, 0], rtol=1e-4, atol=1e-5)
    for image_rows, image_values in zip(per_image_rows, values, strict=True):
        distance = np.abs(image_rows[:-1, None, :] - image_values[None, :, :]).max(axis=2)
        assert distance.min(axis=1).max() < 1e-4  # every sampled row is a row of the image
        assert sorted(distance.argmin(axis=1)) == list(range(1, n_tokens))  # each other row once, never row 0
    # the class token weighs half of every image; the other rows still stand for every other row
    np.testing.assert_allclose(per_image_weights[:, -1], per_image_weights[:, :-1].sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(per_image_weights[:, :-1].sum(axis=1), n_tokens - 1, rtol=1e-6)
    # without a key row the sample weighs every row alike (1 each, 17 tokens: all of them)
    assert plain[name][1].sum() == pytest.approx(len(images) * n_tokens)


def test_weight_quantization_is_symmetric_per_output_channel():
    w = RNG.normal(size=(64, 48)).astype(np.float32) * np.linspace(0.1, 3, 48)
    q, scale = qdq.quantize_weight(w, 1)
    assert q.dtype == np.int8 and scale.shape == (48,) and np.abs(q).max() == INT8_LEVELS
    np.testing.assert_allclose(scale, np.abs(w).max(axis=0) / INT8_LEVELS, rtol=1e-6)
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-7)  # rounding error at most half a step
    qc, sc = qdq.quantize_weight(np.moveaxis(w, 1, 0), 0)  # the same weights, output channel first
    np.testing.assert_array_equal(qc, q.T)
    np.testing.assert_array_equal(sc, scale)


def test_smoothquant_fold_keeps_the_function_and_covers_every_gemm(fp32, images):
    model = onnx.load(str(fp32))
    layers = qdq.weight_layers(model)
    groups = smoothquant.find_groups(model, layers)
    kinds = sorted(g.kind for g in groups)
    blocks = 2
    assert kinds.count("layernorm") == 2 * blocks + 1  # qkv and fc1 per block, and the head
    assert kinds.count("attention-value") == blocks and kinds.count("scaled-activation") == blocks
    covered = {layer.node for g in groups for layer in g.layers}
    assert covered == {layer.node for layer in layers if layer.op_type != "Conv"}  # all but the patch embedding
    for i, g in enumerate(groups):  # arbitrary positive scales, different per channel
        g.alpha, g.scales = 0.5, np.exp(np.random.default_rng(i).normal(size=len(
            numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == g.layers[0].weight))
            .swapaxes(0, g.layers[0].in_axis)))).astype(np.float32)
    folded = smoothquant.fold(model, groups)
    added = collections.Counter(n.op_type for n in folded.graph.node) - collections.Counter(
        n.op_type for n in model.graph.node)
    assert added == {"Mul": blocks}  # one Mul after each GELU; LayerNorm and V take their scales as they are
    reference = quant.run_graph(model, images)
    np.testing.assert_allclose(quant.run_graph(folded, images), reference, rtol=1e-4, atol=1e-4)


def test_smoothquant_moves_an_outlier_channel_into_the_weight():
    """A GEMM whose input has one channel 50x the rest: unscaled, one per-tensor scale leaves the
    other channels ~2 levels; the chosen scales cut the quantized GEMM's error several-fold."""
    x = RNG.normal(size=(512, 32)).astype(np.float32)
    x[:8, 5] *= 50  # a few tokens carry the outlier
    w = RNG.normal(size=(32, 16)).astype(np.float32)
    sample = (x, np.ones(len(x), np.float32))
    plain = smoothquant._quantized_gemm_error(*sample, [w], np.ones(32, np.float32))
    scales = smoothquant.smoothing_scales(np.abs(x).max(axis=0), np.abs(w).max(axis=1), 0.8)
    smoothed = smoothquant._quantized_gemm_error(*sample, [w], scales)
    # reference for the error itself: the same quantization written out
    xq = fake_quant(x / scales, float(np.abs(x / scales).max()))
    q, s = qdq.quantize_weight(w * scales[:, None], 1)
    exact = x @ w
    direct = np.mean(np.square(xq @ (q * s) - exact).sum(1) / np.square(exact).sum(1))
    assert smoothquant._quantized_gemm_error(*sample, [w], scales, clip=float(np.abs(x / scales).max())) \
        == pytest.approx(direct, rel=1e-4)
    assert smoothed < plain / 3


def test_budget_fallback_and_its_refusal(fp32, images, tmp_path):
    from vit_deploy.errors import UsageError

    model = onnx.load(str(fp32))
    plan = quant.plan_quantization(model, INT8, "tensorrt", 17)
    ranges = quant.calibrate_ranges(model, plan, images, 4, "mse", True)
    kept, check = quant.fit_budget(model, plan, ranges, images, quant.Budget(min_mean_cosine=0.9, gate_top1=False))
    assert kept == [] and check["mean_cosine"] >= 0.9
    # a budget only float can meet: every allowed layer is tried, then one line names them and the miss
    impossible = quant.Budget(min_mean_cosine=1.0, max_float_layers=2, gate_top1=False)
    with pytest.raises(quant.BudgetNotMet) as e:
        quant.fit_budget(model, plan, ranges, images, impossible)
    message = str(e.value)
    assert isinstance(e.value, UsageError) and "\n" not in message
    assert "2 layer(s) in float" in message and "mean cosine" in message and "blocks." in message
    # the hint names the options that govern the miss: the cosine one, not --accuracy-budget (top-1 only)
    assert "--budget-cosine" in message and "--max-float-layers 0" in message and "--accuracy-budget" not in message
    # --max-float-layers 0: no fallback at all; the graph is written and validation judges it
    policy = quant.quantize(fp32, tmp_path / "zero.onnx", images, num_tokens=17, batch=4,
                            budget=quant.Budget(min_mean_cosine=1.0, max_float_layers=0))
    assert policy["budget_check"] is None and policy["float_layers"] == []
    # a reachable budget: between the full INT8 graph and the best graph with one layer in float
    from vit_deploy.parity.metrics import compare_logits

    reference = quant.run_graph(model, images)
    nodes = [layer.node for layer in plan["layers"]]

    def cosine(float_nodes):
        graph = quant.finished_graph(model, plan, ranges, only=[n for n in nodes if n not in float_nodes])
        return compare_logits(reference, quant.run_graph(graph, images))["mean_cosine"]

    full, best_one = cosine([]), max(cosine([n]) for n in nodes)
    assert best_one > full
    budget = quant.Budget(min_mean_cosine=(full + best_one) / 2, gate_top1=False, max_float_layers=len(nodes))
    kept, check = quant.fit_budget(model, plan, ranges, images, budget)
    assert len(kept) == 1 and check["mean_cosine"] >= budget.min_mean_cosine
    assert check["mean_cosine"] == pytest.approx(cosine(kept), abs=1e-9)
    policy = quant.quantize(fp32, tmp_path / "q.onnx", images, num_tokens=17, batch=4, budget=budget)
    assert policy["float_layers"] == kept and policy["float_layer_names"][0].startswith(("blocks.", "head"))
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    producers = {o: n for n in g.node for o in n.output}
    for node in g.node:
        if node.op_type in ("MatMul", "Gemm", "Conv") and node.input[1] in producers:
            quantized = producers[node.input[0]].op_type == "DequantizeLinear" if node.input[0] in producers else False
            assert quantized == (node.name not in kept) or node.name not in nodes, node.name


def test_a_channel_quiet_at_calibration_keeps_headroom():
    """Calibration rows where channel 3 is 100x quieter than the rest; other rows where it is not.
    Scales from the raw maxima amplify channel 3 by ~100^alpha, so on the other rows it overflows the
    per-tensor range; with the quiet channels raised to the median its error stays that of the rest."""
    w = RNG.normal(size=(32, 16)).astype(np.float32)
    calib = RNG.normal(size=(512, 32)).astype(np.float32)
    calib[:4, 7] *= 30  # an outlier channel, the reason to smooth at all
    calib[:, 3] *= 0.01
    other = RNG.normal(size=(512, 32)).astype(np.float32)
    raw = np.abs(calib).max(axis=0)
    floored = smoothquant.with_headroom(raw)
    assert floored[3] == pytest.approx(np.median(raw)) and floored[7] == raw[7]  # only quiet channels move
    assert np.all(floored >= raw) and np.sum(floored > raw) <= len(raw) // 2

    def error_on_other_rows(x_absmax):
        s = smoothquant.smoothing_scales(x_absmax, np.abs(w).max(axis=1), 0.8)
        clip = float(np.abs(calib / s).max())  # the range calibration would set
        return smoothquant._quantized_gemm_error(other, np.ones(len(other), np.float32), [w], s, clip=clip)

    assert error_on_other_rows(floored) < error_on_other_rows(raw) / 5


def e4m3_grid() -> np.ndarray:
    """Every finite non-negative E4M3 value, from its definition: subnormals m/8 * 2^-6, normals
    (1 + m/8) * 2^(e - 7) for e = 1..15, the top one (e 15, m 7) being NaN in the FN variant."""
    subnormal = [m / 8 * 2.0**-6 for m in range(8)]
    normal = [(1 + m / 8) * 2.0 ** (e - 7) for e in range(1, 16) for m in range(8) if (e, m) != (15, 7)]
    return np.array(subnormal + normal)


def test_fp8_storage_is_the_e4m3_grid_with_saturation():
    grid = e4m3_grid()
    assert grid.max() == FP8.max_value == 448
    x = np.concatenate([RNG.uniform(-460, 460, 20_000), RNG.normal(scale=0.05, size=20_000)]).astype(np.float32)
    stored = FP8.fake(x)
    nearest = grid[np.abs(np.abs(x)[:, None] - grid[None, :]).argmin(axis=1)] * np.sign(x)
    inside = np.abs(x) <= 448
    np.testing.assert_array_equal(stored[inside], nearest[inside].astype(np.float32))  # round to nearest
    assert np.all(np.abs(stored[~inside]) == 448)  # saturation, never NaN or inf
    # INT8: QuantizeLinear's rule, round half to even and clip to the symmetric range
    np.testing.assert_array_equal(INT8.fake(np.array([2.5, -3.5, 200.0, -130.0])), [2, -4, 127, -127])


def test_fp8_rounding_error_model_against_the_grid():
    """``rounding_mse`` (what the mse rule weighs) against the measured error of rounding to the grid,
    binade by binade and in the subnormals."""
    for low, high in ((2.0**-9, 2.0**-6), (0.5, 1.0), (3.0, 4.0), (100.0, 128.0)):
        x = RNG.uniform(low, high, 200_000)
        measured = np.mean(np.square(FP8.fake(x) - x))
        assert np.mean(FP8.rounding_mse(x)) == pytest.approx(measured, rel=0.05), (low, high)


def test_fp8_mse_rule_against_brute_force():
    """On a heavy-tailed |x|, the FP8 mse clip's real error is within 3% of the best clip on a fine grid,
    measured by rounding every value to the E4M3 grid."""
    x = np.abs(RNG.standard_t(3, 100_000))
    top = float(x.max())
    hist = np.histogram(x, bins=calibrate.HISTOGRAM_BINS, range=(0, top))[0]

    def error(clip):
        scale = clip / FP8.max_value
        return np.mean(np.square(FP8.fake(x / scale) * scale - x))

    best = min(error(c) for c in np.linspace(top / 16, top, 300))
    assert error(choose_amax(hist, top, "mse", FP8)) <= 1.03 * best
    assert choose_amax(hist, top, "minmax", FP8) == top


@pytest.mark.parametrize("fmt", [INT8, FP8], ids=["int8", "fp8"])
def test_scales_are_exact_in_fp16_and_never_narrow_the_range(fmt):
    amax = np.concatenate([RNG.uniform(1e-4, 50, 500), [1e-9, 0.0, 3e7]])
    scale = qdq.representable_scale(amax, fmt, np.float16)
    assert scale.dtype == np.float32
    np.testing.assert_array_equal(scale.astype(np.float16).astype(np.float32), scale)  # FP16 holds it exactly
    finite = amax / fmt.max_value <= np.finfo(np.float16).max
    assert np.all(scale[finite] >= np.maximum(amax[finite], 1e-12) / fmt.max_value)  # rounded up: no new clipping
    assert np.all(scale > 0) and np.all(np.isfinite(scale))
    # weights are quantized with the very scale the graph holds: the DQ gives back each weight within half a step
    w = RNG.normal(size=(64, 48)).astype(np.float32) * np.linspace(1e-4, 3, 48)
    q, s = qdq.quantize_weight(w, 1, fmt, np.float16)
    np.testing.assert_array_equal(s.astype(np.float16).astype(np.float32), s)
    back = q.astype(np.float32) * s
    if fmt.integer:
        assert np.all(np.abs(back - w) <= s / 2 + 1e-7)
    else:  # FP8: half a grid step at the value's own binade, relative 1/16 for normal values
        assert np.all(np.abs(back - w) <= np.maximum(np.abs(w) / 16, s * 2.0**-10) + 1e-7)


def test_a_quantized_matmul_on_onnx_runtime_equals_its_numpy_emulation():
    """One MatMul with our Q/DQ writer, each format, FP16 float parts: ONNX Runtime's result equals the
    same arithmetic done in numpy (round x / scale to the format, multiply the dequantized values)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from vit_deploy.onnx.fp16 import float_parts_fp16

    w = RNG.normal(size=(32, 24)).astype(np.float32)
    x = RNG.normal(size=(5, 32)).astype(np.float32) * 3
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 24])],
        [numpy_helper.from_array(w, "w")])
    layer = qdq.weight_layers(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))[0]
    for fmt in (INT8, FP8):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        amax = float(np.abs(x).max()) * 0.8  # clips the largest inputs
        qdq.insert_qdq(model, [layer], {"x": amax}, [("mm", 0)], fmt, np.float16)
        model = float_parts_fp16(model, quant.QDQ_OPSET)
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        step = qdq.representable_scale(amax, fmt, np.float16)
        q, s = qdq.quantize_weight(w, 1, fmt, np.float16)
        x16 = x.astype(np.float16).astype(np.float32)  # the graph's input Cast to FP16
        expected = (fmt.fake(x16 / step) * step) @ (q.astype(np.float32) * s)
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def test_the_finished_tensorrt_graph_feeds_every_gemm_from_fp16_dequantizers(fp32, images, tmp_path):
    """What TensorRT reads: opset 19, FP16 scales, each DequantizeLinear straight into its GEMM (no Cast), and
    nothing in FP32 but LayerNormalization; the CPU target keeps today's FP32 floats at the export's opset."""
    from vit_deploy.onnx.readiness import _Graph

    for precision in ("int8", "fp8"):
        out = tmp_path / f"{precision}.onnx"
        quant.quantize(fp32, out, images, precision=precision, num_tokens=17, batch=4)
        model = onnx.load(str(out))
        assert next(o.version for o in model.opset_import if o.domain == "") == quant.QDQ_OPSET
        g = _Graph(model)
        fmt = {"int8": INT8, "fp8": FP8}[precision]
        dequantizers = [n for n in g.nodes if n.op_type == "DequantizeLinear"]
        assert len([n for n in dequantizers if n.input[0] in g.initializers]) == 10 - (not fmt.quantizes_image)
        assert dequantizers and all(g.types[n.input[1]] == onnx.TensorProto.FLOAT16 for n in dequantizers)
        assert all(g.types[n.input[0]] == fmt.onnx_type for n in dequantizers)
        for n in dequantizers:
            assert {c.op_type for c in g.consumers[n.output[0]]} <= {"MatMul", "Gemm", "Conv"}, n.name
        float32 = {n.op_type for n in g.nodes if g.types.get(n.output[0]) == onnx.TensorProto.FLOAT}
        assert float32 <= {"LayerNormalization", "Cast"}, float32  # Cast: to and from LayerNorm, and the output
    cpu = tmp_path / "cpu.onnx"
    quant.quantize(fp32, cpu, images, num_tokens=17, batch=4, target="cpu")
    model = onnx.load(str(cpu))
    assert next(o.version for o in model.opset_import if o.domain == "") == 17
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def test_attention_is_quantized_only_where_tensorrt_fuses_it():
    verdict = quant.attention_verdict
    assert verdict(INT8, "tensorrt", 197, 64, True)[0] and verdict(FP8, "tensorrt", 577, 64, True)[0]
    quantized, why = verdict(INT8, "tensorrt", 577, 64, True)
    assert not quantized and "577 tokens > 512" in why
    quantized, why = verdict(INT8, "tensorrt", 197, 128, True)
    assert not quantized and "head size 128" in why
    quantized, why = verdict(FP8, "tensorrt", 197, 512, True)
    assert not quantized and "head size 512" in why and "16-256" in why
    assert not verdict(INT8, "cpu", 197, 64, True)[0]
    assert verdict(FP8, "tensorrt", 197, 64, False) == (False, "float (the default for this precision: "
                                                               "docs/precision.md)")


def test_a_calibration_cache_with_bad_values_is_said_recalibrated_and_rewritten(fp32, images, tmp_path):
    import json

    model = onnx.load(str(fp32))
    cache = tmp_path / "cache.json"
    plan = quant.plan_quantization(model, INT8, "tensorrt", 17)
    good, reused = quant.calibration(model, plan, images, 4, "mse", True, cache)
    assert not reused and quant.calibration(model, plan, images, 4, "mse", True, cache)[1]
    data = json.loads(cache.read_text())
    name = plan["activations"][0]
    producer = next(g.producer for g in plan["groups"] if g.producer in data["smoothing"])
    damages = {
        "NaN range": lambda d: d["amax"].__setitem__(name, float("nan")),
        "zero range": lambda d: d["amax"].__setitem__(name, 0.0),
        "negative range": lambda d: d["absmax"].__setitem__(name, -1.0),
        "a string": lambda d: d["amax"].__setitem__(name, "12"),
        "short scales": lambda d: d["smoothing"][producer].__setitem__("scales", [1.0]),
        "negative scale": lambda d: d["smoothing"][producer]["scales"].__setitem__(0, -2.0),
        "no table": lambda d: d.pop("amax"),
    }

    class Notes:
        lines: list[str] = []

        def note(self, line):
            self.lines.append(line)

        def tick(self, n=1):
            pass

    for what, damage in damages.items():
        bad = json.loads(json.dumps(data))
        damage(bad)
        cache.write_text(json.dumps(bad))  # NaN is written as JSON's NaN literal, which Python reads back
        notes = Notes()
        notes.lines = []
        ranges, reused = quant.calibration(model, plan, images, 4, "mse", True, cache, notes)
        assert not reused, what
        assert any("damaged" in line and "calibrating again" in line for line in notes.lines), (what, notes.lines)
        assert ranges["amax"] == pytest.approx(good["amax"]), what  # recalibrated: the good values again
        assert json.loads(cache.read_text())["amax"] == pytest.approx(good["amax"]), what  # and rewritten


def test_a_range_fp16_cannot_hold_is_one_line(fp32):
    model = onnx.load(str(fp32))
    plan = quant.plan_quantization(model, FP8, "tensorrt", 17)
    name = plan["activations"][0]
    for value, shown in ((1e6, "1e+06 > 65504"), (float("inf"), "not finite")):
        ranges = {"absmax": {a: 1.0 for a in plan["activations"]} | {name: value}}
        with pytest.raises(quant.RangeError) as e:
            quant.check_ranges(ranges, plan, "tensorrt")
        assert shown in str(e.value) and name in str(e.value) and "\n" not in str(e.value)
    quant.check_ranges({"absmax": {a: 1e6 for a in plan["activations"]}}, plan, "cpu")  # FP32 floats hold it
