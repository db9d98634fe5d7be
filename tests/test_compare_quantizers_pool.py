"""tools/compare_quantizers_real.py --pool: folds that score different photos pool into one table whose
numbers are those of all the photos together; a photo scored in two folds is refused."""

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
