"""Serving without a server: options refused up front, the auto backend, per-request answers in the python model.

What the user sees is checked: exit 1, one line on stderr naming the option and what to do, and
nothing written. The python model's per-request logic runs here with stand-ins for Triton's
request objects (the logic is ours; the real server batches requests in test_lifecycle.py).
"""

from __future__ import annotations

import socket
import sys
import types

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient: pip install 'vit-deploy[serve]'")

from vit_deploy.errors import UsageError  # noqa: E402
from vit_deploy.serving import repository  # noqa: E402
from vit_deploy.serving.config import parse_config  # noqa: E402
from vit_deploy.serving.repository import RepoOptions, resolve_backend, write_repository  # noqa: E402
from vit_deploy.serving.triton_model import TritonPythonModel, answer_each  # noqa: E402


def _one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit 1 and one error line, the last on stderr (a progress line such as "starting ..." may precede it)."""
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert [ln for ln in lines if ln.startswith("error")] == lines[-1:], err
    for needle in needles:
        assert needle in lines[-1], (needle, err)


@pytest.mark.parametrize("argv, needle", [
    (["--max-batch", "0"], "--max-batch"),  # was silently 32
    (["--max-batch", "-4"], "--max-batch"),  # was written, and failed only when Triton loaded it
    (["--max-batch-size", "0"], "--max-batch-size"),
    (["--threads", "-3"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--instances", "0"], "--instances"),
    (["--version", "0"], "--version"),
    (["--queue-delay-us", "-1"], "--queue-delay-us"),
    (["--name", ".."], "'..'"),  # was a FileExistsError traceback from inside the staging folder
    (["--name", "."], "'.'"),
    (["--name", "a/b"], "'a/b'"),
    (["--name", ".hidden"], "'.hidden'"),
    (["--name", ""], "--name"),
    (["--name", "x" * 129], "--name"),
])
def test_triton_repo_refuses_bad_options_before_writing(argv, needle, tiny_artifacts, tmp_path, run_cli):
    out = tmp_path / "repo"
    code, _, err = run_cli("triton-repo", str(tiny_artifacts["fp32"]), "--out", str(out), "--backend", "python", *argv)
    _one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []  # no repository, no staging folder


@pytest.mark.parametrize("field, value", [("max_batch", 0), ("max_batch", -4), ("threads", -3), ("instances", 0),
                                          ("version", 0), ("queue_delay_us", -1), ("name", ".."), ("name", "a/b"),
                                          ("max_batch", 2.5), ("threads", True)])
def test_write_repository_checks_the_same_options(field, value, tiny_artifacts, tmp_path):
    with pytest.raises(UsageError):
        write_repository(RepoOptions([tiny_artifacts["fp32"]], tmp_path / "repo", backend="python", **{field: value}))
    assert not (tmp_path / "repo").exists()


def test_a_safe_name_and_max_batch_1_are_written(tiny_artifacts, tmp_path, run_cli):
    code, _, err = run_cli("triton-repo", str(tiny_artifacts["fp32"]), "--out", str(tmp_path / "repo"),
                           "--backend", "python", "--name", "b16_v2.1-int8", "--max-batch", "1", "--threads", "1")
    assert code == 0, err
    config = parse_config((tmp_path / "repo" / "b16_v2.1-int8" / "config.pbtxt").read_text())
    assert config.max_batch_size == 1 and config.parameters["threads"].string_value == "1"


@pytest.fixture
def repo_dir(tmp_path):
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    return tmp_path / "repo"


@pytest.mark.parametrize("argv, needle", [
    (["--http-port", "70000"], "--http-port"),  # was an OverflowError traceback
    (["--grpc-port", "-1"], "--grpc-port"),
    (["--metrics-port", "x"], "--metrics-port"),
    (["--ready-timeout", "0"], "--ready-timeout"),
])
def test_serve_refuses_bad_options_before_starting(argv, needle, repo_dir, run_cli):
    code, _, err = run_cli("serve", str(repo_dir), *argv)
    _one_line_error(code, err, needle)


def test_serve_api_checks_ports():
    from vit_deploy.serving.server import TritonServer

    for port in (70000, -1, "8000", True):
        with pytest.raises(UsageError, match="--http-port .* is not a TCP port"):
            TritonServer("unused", http_port=port)


def test_serve_names_an_unwritable_log(repo_dir, tmp_path, run_cli):
    code, _, err = run_cli("serve", str(repo_dir), "--log", str(tmp_path), "--http-port", "0", "--grpc-port", "0",
                           "--metrics-port", "0")  # a folder: cannot be opened as the log file
    if "no tritonserver" in err:
        pytest.skip(err)
    _one_line_error(code, err, "cannot write the server log", "--log")


def _time_wait_port() -> int:
    """A loopback port whose only socket is in TIME-WAIT, as right after a server's clean stop."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver's listeners
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end of the connection goes to TIME-WAIT
    client.recv(1)
    client.close()
    listener.close()
    return port


def test_a_port_in_time_wait_is_free_and_a_listened_one_is_not():
    from vit_deploy.serving.server import ServerError, check_port_free

    port = _time_wait_port()
    with socket.socket() as plain, pytest.raises(OSError):  # the old probe (no SO_REUSEADDR) called it busy
        plain.bind(("127.0.0.1", port))
    check_port_free(port, "--http-port")
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {busy} \\(--grpc-port\\) is already in use"):
            check_port_free(busy, "--grpc-port")


@pytest.mark.parametrize("argv, needles", [
    (["--name", ".."], ["'..'"]),
    (["--name", "m", "--clients", "0"], ["--clients"]),
    (["--name", "m", "--threads", "-3"], ["--threads"]),
    (["--name", "m", "--url", "http://127.0.0.1:8000"], ["--url", "HOST:PORT"]),  # was a tritonclient traceback
    (["--name", "m", "--url", "127.0.0.1:99999"], ["--url", "HOST:PORT"]),
    (["--name", "m", "--url", "localhost"], ["--url", "HOST:PORT"]),
])
def test_triton_load_refuses_bad_options(argv, needles, run_cli):
    code, _, err = run_cli("triton-load", *argv)
    _one_line_error(code, err, *needles)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_load_without_a_server_says_what_to_do(protocol, run_cli):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{s.getsockname()[1]}"
    code, _, err = run_cli("triton-load", "--name", "m", "--url", url, "--protocol", protocol)
    _one_line_error(code, err, f"cannot reach model 'm' at {url}", "vit-deploy serve", "--url")


# -- the auto backend follows the server that `serve` would run ------------------------------------------------

@pytest.mark.parametrize("requested, kind, have, backend, note", [
    ("auto", "onnx", None, "onnxruntime", None),  # no local server: write for a full Triton install
    ("auto", "onnx", {"python", "onnxruntime"}, "onnxruntime", None),
    ("auto", "onnx", {"python"}, "python", "--backend auto chose python"),  # the nvidia-pytriton wheel's server
    ("auto", "tensorrt", {"python"}, "python", "cannot load tensorrt"),
    ("auto", "tensorrt", {"tensorrt", "python"}, "tensorrt", None),
    ("onnxruntime", "onnx", {"python"}, "onnxruntime", "cannot load onnxruntime"),  # asked for: kept, but said
    ("python", "onnx", {"python"}, "python", None),
])
def test_resolve_backend(requested, kind, have, backend, note, tmp_path):
    got, got_note = resolve_backend(requested, kind, tmp_path, have)
    assert got == backend
    assert (got_note is None) if note is None else (note in got_note)


def test_triton_repo_auto_says_when_it_picks_python(tiny_artifacts, tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(repository, "local_server_backends", lambda: {"python"})
    code, out, err = run_cli("triton-repo", str(tiny_artifacts["fp32"]), "--out", str(tmp_path / "repo"))
    assert code == 0, err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("note: --backend auto chose python")
    config = parse_config((tmp_path / "repo" / "vit-test-32" / "config.pbtxt").read_text())
    assert config.backend == "python" and "python backend" in out


# -- per-request answers in the python model ------------------------------------------------------------------

class _Stand:
    """Stand-ins for what Triton's python backend passes to execute() and takes back."""

    def __init__(self):
        import torch

        self.module = types.ModuleType("triton_python_backend_utils")
        self.module.TritonError = lambda message: ("error", message)
        self.module.InferenceResponse = lambda output_tensors=None, error=None: (output_tensors, error)
        self.module.get_input_tensor_by_name = lambda request, name: request[name]
        self.module.Tensor = types.SimpleNamespace(
            from_dlpack=lambda name, capsule: (name, torch.utils.dlpack.from_dlpack(capsule).numpy()))

    @staticmethod
    def request(array: np.ndarray) -> dict:
        import torch

        capsule = torch.utils.dlpack.to_dlpack
        return {"images": types.SimpleNamespace(to_dlpack=lambda: capsule(torch.from_numpy(array)))}


def test_one_bad_request_does_not_fail_the_others_batched_with_it(tiny_artifacts, monkeypatch):
    from vit_deploy import runtime

    stand = _Stand()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stand.module)
    rng = np.random.default_rng(0)
    good = [rng.standard_normal((n, 3, 32, 32), dtype=np.float32) for n in (2, 1, 3)]
    nan = good[1].copy()
    nan[0, 1, 2, 3] = np.nan
    inf = np.full((1, 3, 32, 32), np.inf, np.float32)
    arrays = [good[0], nan, np.zeros((1, 3, 16, 16), np.float32), good[1], np.zeros((1, 3, 32, 32)), inf, good[2]]
    model = TritonPythonModel()
    model.input_name, model.output_name = "images", "logits"
    with runtime.open(tiny_artifacts["fp32"]) as runner:
        model.runner = runner
        responses = model.execute([stand.request(a) for a in arrays])
        expected = [runner.infer(g) for g in good]  # each alone: no other request can touch its rows
    assert len(responses) == len(arrays)
    for i, want in zip((0, 3, 6), expected, strict=True):
        tensors, error = responses[i]
        assert error is None and tensors[0][0] == "logits"
        np.testing.assert_allclose(tensors[0][1], want, rtol=1e-5, atol=1e-5)
    for i, needle in ((1, "NaN or Inf"), (2, "16x16"), (4, "float64"), (5, "NaN or Inf")):
        tensors, error = responses[i]
        assert tensors is None and error[0] == "error" and "this request's images" in error[1] and needle in error[1]


def test_a_batch_that_fails_anyway_is_answered_request_by_request():
    class Runner:  # refuses any batch that holds a 7, which no input check can know about
        chw = (1, 2, 2)

        def infer(self, x):
            if (x == 7).any():
                raise RuntimeError("sevens are not served")
            return x.reshape(len(x), -1).sum(1, keepdims=True)

    arrays = [np.ones((2, 1, 2, 2), np.float32), np.full((1, 1, 2, 2), 7, np.float32), ValueError("unreadable"),
              np.full((1, 1, 2, 2), 2, np.float32)]
    answers = answer_each(Runner(), arrays)
    np.testing.assert_array_equal(answers[0], [[4], [4]])
    assert isinstance(answers[1], RuntimeError) and isinstance(answers[2], ValueError)
    np.testing.assert_array_equal(answers[3], [[8]])
