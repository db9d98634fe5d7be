"""The INT8 recipe's parts against independent references: range rules against brute force, the
SmoothQuant fold against the unfolded graph, weight quantization against its analytic error bound,
calibration statistics against a single pass over all images, and the accuracy-budget fallback."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from vit_deploy.onnx import calibrate, int8, qdq, smoothquant
from vit_deploy.onnx.calibrate import INT8_LEVELS, choose_amax

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
        expected = np.abs(values[name]).reshape(-1, values[name].shape[-1]).max(axis=0)
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
    reference = int8.run_graph(model, images)
    np.testing.assert_allclose(int8.run_graph(folded, images), reference, rtol=1e-4, atol=1e-4)


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
    plan = int8.plan_int8(model, "tensorrt", 17)
    ranges = int8.calibrate_ranges(model, plan, images, 4, "mse", True)
    kept, check = int8.fit_budget(model, plan, ranges, images, int8.Budget(min_mean_cosine=0.9, gate_top1=False))
    assert kept == [] and check["mean_cosine"] >= 0.9
    # a budget only float can meet: every allowed layer is tried, then one line names them and the miss
    impossible = int8.Budget(min_mean_cosine=1.0, max_float_layers=2, gate_top1=False)
    with pytest.raises(int8.BudgetNotMet) as e:
        int8.fit_budget(model, plan, ranges, images, impossible)
    assert isinstance(e.value, UsageError) and "\n" not in str(e.value)
    assert "2 layer(s) in float" in str(e.value) and "mean cosine" in str(e.value) and "blocks." in str(e.value)
    with pytest.raises(int8.BudgetNotMet, match="none"):
        int8.fit_budget(model, plan, ranges, images, int8.Budget(min_mean_cosine=1.0, max_float_layers=0))
    # a reachable budget: between the full INT8 graph and the best graph with one layer in float
    from vit_deploy.parity.metrics import compare_logits

    reference = int8.run_graph(model, images)
    nodes = [layer.node for layer in plan["layers"]]

    def cosine(float_nodes):
        graph = int8.quantized_graph(model, plan, ranges, only=[n for n in nodes if n not in float_nodes])
        return compare_logits(reference, int8.run_graph(graph, images))["mean_cosine"]

    full, best_one = cosine([]), max(cosine([n]) for n in nodes)
    assert best_one > full
    budget = int8.Budget(min_mean_cosine=(full + best_one) / 2, gate_top1=False, max_float_layers=len(nodes))
    kept, check = int8.fit_budget(model, plan, ranges, images, budget)
    assert len(kept) == 1 and check["mean_cosine"] >= budget.min_mean_cosine
    assert check["mean_cosine"] == pytest.approx(cosine(kept), abs=1e-9)
    policy = int8.quantize_int8(fp32, tmp_path / "q.onnx", images, num_tokens=17, batch=4, budget=budget)
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
