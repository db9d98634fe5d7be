"""tools/compare_quantizers_real.py: --pool (folds that score different photos pool into one table whose
numbers are those of all the photos together; a photo scored in two folds is refused), the FP32-op count
read from a graph's types, and the per-source split of the held-out protocol."""

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "compare_quantizers_real.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_quantizers_real", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fold(path: Path, files, ref_correct, correct, agree, calibration="even"):
    path.mkdir()
    per_image = {"ref_correct": ref_correct, "correct": correct, "agree": agree, "cosine": [0.99] * len(agree)}
    rows = [{"key": "ours", "eval": {"per_image": per_image}}]
    (path / "results.json").write_text(json.dumps({
        "eval_files": files, "halves": {"calibration": calibration, "split_seed": 1}, "rows": rows}))
    return path


def test_pooled_numbers_are_those_of_all_photos(tool, tmp_path):
    a = fold(tmp_path / "a", ["1.jpg", "2.jpg", "3.jpg", "4.jpg"], [1, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1])
    b = fold(tmp_path / "b", ["5.jpg", "6.jpg", "7.jpg", "8.jpg"], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1], "odd")
    table = tool.pool([a, b])
    row = next(line for line in table.splitlines() if line.startswith("| ours |"))
    # 8 photos: FP32 right on 5, INT8 on 5 (one lost, one gained): drop 0.0; agreement 6 of 8
    assert "| 62.5% | +0.0 [" in row and "| 75.0% [" in row
    assert "8 photos scored" in table


def test_a_photo_scored_twice_is_refused(tool, tmp_path):
    a = fold(tmp_path / "a", ["1.jpg", "2.jpg"], [1, 1], [1, 1], [1, 1])
    b = fold(tmp_path / "b", ["2.jpg", "3.jpg"], [1, 1], [1, 1], [1, 1])
    with pytest.raises(SystemExit, match="2.jpg is scored in both"):
        tool.pool([a, b])


def test_fp32_compute_ops_reads_the_types_from_the_graph(tool):
    """A hand-built graph whose op types are known: an INT8 GEMM with an FP32 scale (FP32 output), an
    FP16 Add behind a Cast, an FP32 Softmax, a LayerNorm in FP32; Cast, Q and DQ are not compute."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    f32 = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.ones((4, 4), np.int8), "w_q"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.ones(4, np.float16), "b16"),
             numpy_helper.from_array(np.ones(4, np.float32), "g"),
             numpy_helper.from_array(np.zeros(4, np.float32), "beta")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "s"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "s"], ["w_dq"]),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["mm"]),  # INT8 inputs, FP32 output: counted
        helper.make_node("Cast", ["mm"], ["mm16"], to=TensorProto.FLOAT16),
        helper.make_node("Add", ["mm16", "b16"], ["add16"]),  # FP16: not counted
        helper.make_node("Cast", ["add16"], ["add"], to=f32),
        helper.make_node("Softmax", ["add"], ["sm"]),  # FP32: counted
        helper.make_node("LayerNormalization", ["sm", "g", "beta"], ["y"]),  # FP32: counted apart
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, [2, 4])],
                              [helper.make_tensor_value_info("y", f32, [2, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    ops = tool.fp32_compute_ops(model)
    assert ops == {"total": 2, "by_op": {"MatMul": 1, "Softmax": 1}, "layernorm": 1, "untyped": 0}


def test_by_source_splits_the_photos(tool):
    per_image = {"ref_correct": [1, 1, 0, 1], "correct": [1, 0, 0, 1], "agree": [1, 0, 1, 1], "cosine": [1.0] * 4}
    out = tool.by_source(per_image, ["a", "b", "a", "b"])
    assert list(out) == ["a", "b"]
    assert out["a"]["images"] == 2 and out["a"]["drop_points"] == 0.0 and out["a"]["top1_agreement"] == 1.0
    assert out["b"]["reference_accuracy"] == 1.0 and out["b"]["accuracy"] == 0.5 and out["b"]["drop_points"] == 50.0
