"""Run a real ``tritonserver`` on loopback: find it, check the ports, start it, wait for readiness, stop it.

    with TritonServer("model_repository", http_port=0) as server:   # 0: any free port
        print(server.http_url, server.models)

The repository is a local folder or an ``s3://bucket/folder`` location (Triton reads the store
itself: :mod:`.remote`).

Where the binary comes from, in order: ``$TRITONSERVER``; ``tritonserver`` on PATH (a Triton
install, which brings its own backends in /opt/tritonserver/backends); the binary inside the
``nvidia-pytriton`` wheel. The wheel's server needs three things to run outside PyTriton:

- a backend folder with the python backend *and* the stub built for this Python
  (``python_backend_stubs/3.X/triton_python_backend_stub``): staged into a temporary folder;
- ``LD_LIBRARY_PATH`` with ``nvidia_pytriton.libs`` (its bundled libraries) and this
  interpreter's ``LIBDIR``: the stub links ``libpython3.X.so``, and without this it picks the
  system Python's, which cannot see this environment's numpy/torch/vit_deploy;
- ``PYTHONPATH`` with this interpreter's ``sys.path`` (and vit-deploy's source root), so the
  stub imports the same packages ``vit-deploy serve`` runs with (editable installs included).

The server's own log goes to a file (``log_path``); startup failures quote its error lines.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from ..objectstore import is_url
from ..objectstore import parse as parse_location

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ServerError(UsageError):
    """tritonserver is missing, could not start, or a model did not load."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port(port: object, option: str) -> int:
    """``port`` as a TCP port number (0: any free one); a UsageError names the option otherwise."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UsageError(f"{option} {port!r} is not a TCP port; give a number in 1..65535 (0: any free port)")
    return port


def check_port_free(port: int, option: str) -> None:
    """Name the busy port (and the option that sets it) before the server would fail on it.

    The probe binds with SO_REUSEADDR, as tritonserver's own listeners do: a port whose last
    connections are still in TIME-WAIT (seconds after a clean stop) is free for a server, and
    only a socket that really holds it (a listener) is refused.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise ServerError(f"port {port} ({option}) is already in use on {HOST} ({e.strerror}); "
                              f"stop what uses it or pass another {option}") from e


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux), else None.

    Even ``kill -KILL`` of ``vit-deploy serve`` then stops tritonserver, and SIGTERM (not SIGKILL)
    lets Triton stop its python-backend stubs and free their shared memory itself. The kernel
    sends the signal when the *thread* that started the child exits: start servers from a thread
    that lives as long as they should.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would ever send the signal
            os._exit(1)

    return preexec


def _pytriton_root() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    root = Path(pytriton.__file__).parent / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def find_tritonserver() -> tuple[Path, Path | None]:
    """(binary, pytriton root or None); ServerError says how to get one."""
    if env := os.environ.get("TRITONSERVER"):
        if not Path(env).is_file():
            raise ServerError(f"$TRITONSERVER is {env}, which is not a file; point it at the tritonserver binary")
        return Path(env), None
    if found := shutil.which("tritonserver"):
        return Path(found), None
    if root := _pytriton_root():
        return root / "bin" / "tritonserver", root
    raise ServerError("no tritonserver found: install Triton (tritonserver on PATH), set $TRITONSERVER, "
                      "or pip install 'vit-deploy[serve]' (the nvidia-pytriton wheel carries one)")


def _stage_pytriton(root: Path, workdir: Path) -> tuple[Path, dict[str, str]]:
    """Backend folder and environment that let the wheel's server run this Python's models."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the nvidia-pytriton wheel has no python backend stub for Python {version}; "
                          "use a Python it ships a stub for (3.8-3.12) or a Triton install")
    backends = workdir / "backends"
    shutil.copytree(root / "backends", backends)
    shutil.copy2(stub, backends / "python" / stub.name)
    libs = [root.parent.parent / "nvidia_pytriton.libs", Path(sysconfig.get_config_var("LIBDIR") or "")]
    env = {"LD_LIBRARY_PATH": os.pathsep.join([*(str(p) for p in libs if p.is_dir()),
                                               os.environ.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)}
    return backends, env


def _pythonpath() -> str:
    source_root = str(Path(__file__).resolve().parents[2])  # makes vit_deploy importable from a checkout
    paths = [source_root, *(p for p in sys.path if p and Path(p).exists()), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(dict.fromkeys(p for p in paths if p))


def available_backends(backend_dir: Path | None) -> set[str] | None:
    """Backends the server can load (None: unknown, e.g. a Triton install with its default folder)."""
    if backend_dir is None:
        default = Path("/opt/tritonserver/backends")
        backend_dir = default if default.is_dir() else None
    if backend_dir is None:
        return None
    return {p.name for p in backend_dir.iterdir() if p.is_dir()}


# tritonserver logs in glog's form: "I1206 11:28:37.315435 13164 cuda_memory_manager.cc:117] ..."
_LOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def is_server_log(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is empty or a tritonserver log (what ``serve --log`` may replace without --force)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode(errors="replace")
    except OSError:
        return False
    first = next((line for line in head.splitlines() if line.strip()), None)
    return first is None or bool(_LOG_LINE.match(first))


class TritonServer:
    """A tritonserver process on loopback; a context manager that waits for readiness and stops it."""

    def __init__(self, repository: str | os.PathLike[str], *, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, log_path: str | os.PathLike[str] | None = None,
                 ready_timeout: float = 120.0, extra_args: tuple[str, ...] = ()) -> None:
        ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
        self.ports = {k: check_port(v, k) or free_port() for k, v in ports.items()}
        if len(set(self.ports.values())) != 3:
            raise ServerError(f"the HTTP, gRPC and metrics ports must differ; got {self.ports}")
        self._configs: dict[str, str] | None = None  # config.pbtxt texts, for a repository on object storage
        if is_url(str(repository)):
            from .remote import config_texts

            self.repository = parse_location(str(repository), "REPOSITORY")
            self._configs = config_texts(self.repository)
            self.models = sorted(self._configs)
        else:
            self.repository = Path(repository).absolute()
            if not self.repository.is_dir():
                raise ServerError(f"{self.repository} is not a folder; make one with vit-deploy triton-repo")
            self.models = sorted(p.name for p in self.repository.iterdir() if (p / "config.pbtxt").is_file())
        if not self.models:
            raise ServerError(f"{self.repository} holds no model (no */config.pbtxt); "
                              "make one with vit-deploy triton-repo")
        self.ready_timeout = ready_timeout
        self.extra_args = extra_args
        self._workdir = Path(tempfile.mkdtemp(prefix="vit-deploy-triton-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    http_url = property(lambda self: f"{HOST}:{self.ports['--http-port']}")
    grpc_url = property(lambda self: f"{HOST}:{self.ports['--grpc-port']}")
    metrics_url = property(lambda self: f"http://{HOST}:{self.ports['--metrics-port']}/metrics")

    def _check_backends(self, backend_dir: Path | None) -> None:
        from .config import parse_config

        have = available_backends(backend_dir)
        if have is None:
            return
        for model in self.models:
            text = self._configs[model] if self._configs is not None else \
                (self.repository / model / "config.pbtxt").read_text(errors="replace")
            config = parse_config(text)
            if config.backend and config.backend not in have:
                raise ServerError(f"model {model} needs Triton's {config.backend} backend, which this tritonserver "
                                  f"lacks (it has: {', '.join(sorted(have))}); regenerate it with "
                                  "vit-deploy triton-repo --backend python, or use a full Triton install")

    def start(self) -> TritonServer:
        for option, port in self.ports.items():
            check_port_free(port, option)
        binary, pytriton_root = find_tritonserver()
        env = dict(os.environ, PYTHONPATH=_pythonpath())
        backend_dir = None
        if pytriton_root is not None:
            backend_dir, extra_env = _stage_pytriton(pytriton_root, self._workdir)
            env.update(extra_env)
        self._check_backends(backend_dir)
        self.source = str(self.repository)  # what --model-repository says
        if self._configs is not None:  # Triton reads the store itself, with the credentials boto3 found
            from .remote import triton_source

            self.source, store_env = triton_source(self.repository)
            env.update(store_env)
        args = [str(binary), f"--model-repository={self.source}",
                f"--http-address={HOST}", f"--grpc-address={HOST}", f"--metrics-address={HOST}",
                *(f"{k}={v}" for k, v in self.ports.items()),
                "--exit-timeout-secs=10", "--log-verbose=0", *self.extra_args]
        if backend_dir is not None:
            args.append(f"--backend-directory={backend_dir}")
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes to it for its whole life
        except OSError as e:
            raise ServerError(f"cannot write the server log {self.log_path} ({e.strerror or e}); "
                              "pass a writable file to --log") from e
        # Its own session and process group (its python-backend stubs join it): Ctrl-C and a closing
        # terminal reach only us, and we stop the server in order (SIGTERM, drain, then the group).
        # If we die without that, the parent-death signal stops it.
        with log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, preexec_fn=_die_with_parent())
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting: "
                                  f"{self.log_errors()} (full log: {self.log_path})")
            if self._get("/v2/health/ready") == 200 and all(
                    self._get(f"/v2/models/{m}/ready") == 200 for m in self.models):
                return
            time.sleep(0.2)
        raise ServerError(f"tritonserver was not ready after {self.ready_timeout:.0f} s; see {self.log_path}")

    def log_errors(self, limit: int = 3) -> str:
        """The server's error lines (NVML/DCGM/CUDA noise on CPU hosts left out)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        noise = ("nvml", "dcgm", "cudadriverhelper", "cuda driver")
        errors = [ln.strip() for ln in lines if (ln.startswith("E") or "UNAVAILABLE" in ln or "error:" in ln)
                  and not any(n in ln.lower() for n in noise)]
        return " | ".join(dict.fromkeys(errors[-limit:])) or (lines[-1] if lines else "empty log")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests and stops its stubs), then SIGKILL after ``timeout``.

        Whatever is left in the server's process group afterwards (a stub whose server was killed)
        gets SIGKILL too, so no process outlives ``stop``. Returns the server's exit code.
        """
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            code = proc.returncode
            try:  # the group id is the server's pid, which the kernel keeps while any member lives
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # the group is empty: everything exited
        # the staged backends go; the log stays (a few kB in the temp folder) for a look after a failure
        shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
