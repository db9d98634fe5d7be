"""``vit-deploy serve`` as a process: the server dies with it, however it ends, and restarts at once on the same ports.

Each test runs the real command (``python -m vit_deploy.cli serve``) on a python-backend repository
of the tiny model, sends it a signal, and checks what a user would: the exit code, then, within
a few seconds, no tritonserver or python-backend stub left from it and its ports closed.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient: pip install 'vit-deploy[serve]'")

from vit_deploy.serving.server import free_port  # noqa: E402

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def repo(tiny_artifacts, tmp_path_factory) -> Path:
    from vit_deploy.serving.repository import RepoOptions, write_repository

    out = tmp_path_factory.mktemp("lifecycle") / "repo"
    write_repository(RepoOptions([tiny_artifacts["fp32"]], out, backend="python", name="tiny", threads=1))
    return out


def _ports() -> list[int]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    return sorted(ports)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/tiny/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _serve(repo: Path, ports: list[int]) -> subprocess.Popen:
    http, grpc, metrics = ports
    proc = subprocess.Popen([sys.executable, "-m", "vit_deploy.cli", "serve", str(repo), "--http-port", str(http),
                             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--ready-timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _ready(http):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve did not come up: {proc.communicate()}")
        time.sleep(0.2)
    return proc


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command name of every process below ``pid``."""
    tree, found, todo = _children(), {}, [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            try:
                found[child] = Path(f"/proc/{child}/comm").read_text().strip()
            except OSError:
                continue
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _assert_all_gone(processes: dict[int, str], ports: list[int], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = {pid: name for pid, name in processes.items() if _alive(pid)}
        if not left and all(_refused(p) for p in ports):
            return
        time.sleep(0.2)
    pytest.fail(f"{within:.0f} s after serve ended: still running {left}, "
                f"ports still open {[p for p in ports if not _refused(p)]}")


def _server_and_stub(serve: subprocess.Popen) -> dict[int, str]:
    below = _descendants(serve.pid)
    names = set(below.values())
    assert "tritonserver" in names and any(n.startswith("triton_python") for n in names), below
    return below


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGHUP, 0)])
def test_the_server_dies_with_serve(signum, exit_code, repo):
    ports = _ports()
    serve = _serve(repo, ports)
    below = _server_and_stub(serve)
    serve.send_signal(signum)
    _, err = serve.communicate(timeout=30)
    assert serve.returncode == exit_code, err
    if signum == signal.SIGHUP:  # stopped in order, and said so
        assert err.strip().splitlines()[-1] == "SIGHUP: tritonserver stopped", err
    _assert_all_gone(below, ports)


def test_ctrl_c_exits_130_and_a_restart_on_the_same_ports_serves(repo):
    ports = _ports()
    first = _serve(repo, ports)
    below = _server_and_stub(first)
    client = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=5)
    client.request("GET", "/v2/health/ready", headers={"Connection": "close"})  # the server closes first ...
    assert client.getresponse().read() == b""
    client.close()  # ... so its side of the connection stays in TIME-WAIT for a minute
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=30)
    assert first.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted"), err
    _assert_all_gone(below, ports)
    with socket.socket() as plain, pytest.raises(OSError):  # what the old port check saw: "already in use"
        plain.bind(("127.0.0.1", ports[0]))

    second = _serve(repo, ports)  # at once, on the same ports
    below = _server_and_stub(second)
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=30)
    assert second.returncode == 0 and err.strip().splitlines()[-1] == "SIGTERM: tritonserver stopped", err
    _assert_all_gone(below, ports)
