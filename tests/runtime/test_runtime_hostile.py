"""The Python API under careless and hostile use: wrong argument types, devices and tensors,
random inputs (hypothesis), close() racing infer() from real threads, and the default backend
an artifact records. Nothing may come out but a result or one of the package's typed errors.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vit_deploy import runtime
from vit_deploy.artifact import read_manifest, write_manifest
from vit_deploy.errors import ArtifactError, UsageError
from vit_deploy.runtime.base import check_images

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
BACKENDS = ["onnxruntime", "pytorch",
            pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed"))]
CHW = (3, 32, 32)


@pytest.mark.parametrize("artifact", [None, 3, 2.5, b"bytes", ["a"], object()], ids=repr)
def test_open_refuses_what_is_not_a_path(artifact):
    with pytest.raises(UsageError, match="an artifact is a folder path"):
        runtime.open(artifact)


def test_open_a_missing_path(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        runtime.open(tmp_path / "gone")


@pytest.mark.parametrize("device", ["bogus", "", "cuda:x", None, 3])
def test_unknown_devices_are_usage_errors(tiny_artifacts, device):
    with pytest.raises(UsageError, match="device"):
        runtime.open(tiny_artifacts["fp32"], "pytorch", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(tiny_artifacts):
    with pytest.raises(UsageError, match="sees no CUDA GPU"):
        runtime.open(tiny_artifacts["fp32"], "pytorch", device="cuda:0")


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "4"])
def test_bad_counts_are_usage_errors(tiny_artifacts, value):
    for option in ("max_batch", "threads"):
        with pytest.raises(UsageError, match=f"{option} must be >= 1"):
            runtime.open(tiny_artifacts["fp32"], **{option: value})


@pytest.mark.parametrize("make", [
    lambda: torch.empty(2, *CHW, device="meta"),
    lambda: torch.zeros(2, *CHW).to_sparse(),
    lambda: [[0.0] * 32] * 3,
], ids=["meta", "sparse", "list"])
def test_tensors_without_readable_data_are_refused(tiny_artifacts, make):
    with runtime.open(tiny_artifacts["fp32"]) as runner:
        with pytest.raises(UsageError, match=r"float32 \[batch, 3, 32, 32\]"):
            runner.infer(make())


# -- property: random arrays are accepted exactly when they are the model's contract -----------
DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex64])
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
    st.tuples(st.integers(0, 3), st.sampled_from([1, 3, 4]), st.sampled_from([16, 32]), st.sampled_from([31, 32])),
)


@st.composite
def arrays(draw):
    dtype, shape = draw(DTYPES), draw(SHAPES)
    elements = st.floats(width=32, allow_nan=True, allow_infinity=True) if dtype == np.float32 else None
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    return torch.from_numpy(array.copy()) if draw(st.booleans()) and dtype != np.uint8 else array


def is_contract(x) -> bool:
    array = x.numpy() if isinstance(x, torch.Tensor) else x
    return (array.dtype == np.float32 and array.ndim == 4 and array.shape[0] >= 1 and array.shape[1:] == CHW
            and bool(np.isfinite(array).all()))


@settings(max_examples=300, deadline=None)
@given(arrays())
def test_check_images_accepts_exactly_the_contract(x):
    try:
        check_images(x, CHW)
    except UsageError:
        assert not is_contract(x)
    else:
        assert is_contract(x)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=arrays())
def test_infer_gives_logits_or_a_usage_error(tiny_artifacts, x):
    with runtime.open(tiny_artifacts["fp32"], verify=False) as runner:
        try:
            logits = runner.infer(x)
        except UsageError:
            assert not is_contract(x)
            return
    assert is_contract(x) and tuple(logits.shape) == (x.shape[0], 5) and type(logits) is type(x)


# -- close() racing infer() ------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_close_racing_infer_from_threads(tiny_artifacts, backend):
    """Threads call infer in a loop while the main thread closes the runner at a random moment:
    every call returns logits or raises "closed", never anything else, and no call hangs."""
    x = np.zeros((2, *CHW), np.float32)
    rng = np.random.default_rng(0)
    for _ in range(25):
        runner = runtime.open(tiny_artifacts["fp32"], backend, verify=False)
        errors: list[BaseException] = []
        started = threading.Barrier(5)

        def work(runner=runner, errors=errors, started=started):
            started.wait()
            while True:
                try:
                    assert runner.infer(x).shape == (2, 5)
                except UsageError as e:
                    if "closed" not in str(e):
                        errors.append(e)
                    return
                except BaseException as e:  # noqa: BLE001 - the point: anything else is a failure
                    errors.append(e)
                    return

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(rng.uniform(0, 0.01))
        runner.close()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads) and not errors, errors
        with pytest.raises(UsageError, match="closed"):
            runner.infer(x)


# -- the default backend the artifact records --------------------------------------------------
@pytest.fixture
def made_for_openvino(tiny_artifacts, tmp_path):
    copy = shutil.copytree(tiny_artifacts["int8"], tmp_path / "int8")
    manifest = read_manifest(copy)
    manifest["runtime"] = {"backend": "openvino"}
    write_manifest(copy, manifest)
    return copy


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed")
def test_the_recorded_backend_is_the_default(made_for_openvino, tiny_artifacts):
    with runtime.open(made_for_openvino) as runner:
        assert runner.backend == "openvino"
    with runtime.open(made_for_openvino, "onnxruntime") as runner:  # an explicit choice wins
        assert runner.backend == "onnxruntime"
    with runtime.open(tiny_artifacts["int8"]) as runner:  # no record: the kind's default, as before
        assert runner.backend == "onnxruntime"


def test_a_missing_recorded_backend_falls_back_saying_so_once(made_for_openvino, monkeypatch, caplog):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else find_spec(name))
    monkeypatch.setattr(runtime, "_fallbacks_said", set())
    with caplog.at_level(logging.WARNING, logger="vit_deploy.runtime"):
        for _ in range(3):
            with runtime.open(made_for_openvino) as runner:
                assert runner.backend == "onnxruntime"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "made for backend 'openvino'" in said[0] and "pip install openvino" in said[0]
