"""Run tritonserver on a model repository: `trtbuild serve REPO` and `TritonServer` (a context
manager for tests and scripts).

- tensorrt-llm repositories on a GPU host (inside the Triton TRT-LLM container): its tritonserver
  under mpirun, one segment per rank (world size tp x pp), a shm-region prefix per rank, and only
  rank 0 loading the Python models (the others load tensorrt_llm alone, as tensorrtllm_backend's
  launch_triton_server.py does);
- anywhere else (the torch backend): the tritonserver bundled in the `nvidia-pytriton` wheel with
  its Python backend; the Python models run in this environment (PYTHONPATH, the stub for this
  Python).
The server binds to `host` only, is ready when `/v2/health/ready` answers 200, and is stopped with
its whole process group.
"""

from __future__ import annotations

import json
import os
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
from pathlib import Path

from trtbuild.errors import ConfigError
from trtbuild.fsutil import MARKER

TRTLLM_SERVER = Path("/opt/tritonserver/bin/tritonserver")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_repo(repo: Path) -> dict:
    try:
        info = json.loads((Path(repo) / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{repo} is not a model repository written by trtbuild (no {MARKER})") from None
    if info.get("kind") != "triton_repo":
        raise ConfigError(f"{repo} is not a model repository written by trtbuild")
    return info


def moved_engine(repo: Path) -> Path | None:
    """The engine beside a tensorrt-llm build's repository when the build has moved since it was
    written (a volume mounted elsewhere: the repository names its engine by absolute path); None when
    the repository is usable as it is."""
    repo = Path(repo).resolve()
    info = read_repo(repo)
    engine = repo.parent / "engine"
    if info.get("backend") != "tensorrt-llm" or not engine.is_dir() or str(engine) == info.get("engine_dir"):
        return None
    return engine


def relocated_repo(build_dir: Path, out: Path, force: bool = False) -> Path:
    """A build's repository written again at `out` for the build where it is now (same streaming
    switch): what serves a build whose repository names its engine somewhere else."""
    from trtbuild.triton_repo import write_repo

    info = read_repo(Path(build_dir) / "triton_repo")
    return write_repo(Path(build_dir) / "engine", out, streaming=bool(info.get("streaming", True)), force=force)


def pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError:
        raise ConfigError("serving here needs the nvidia-pytriton wheel (pip install 'trtbuild[serve]')") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def local_command(repo: Path, backend_dir: Path, host: str, http: int, grpc: int, metrics: int) -> list[str]:
    server = pytriton_dir() / "bin" / "tritonserver"
    return [str(server), f"--model-repository={repo}", f"--backend-directory={backend_dir}",
            f"--http-address={host}", f"--http-port={http}", f"--grpc-address={host}", f"--grpc-port={grpc}",
            f"--metrics-address={host}", f"--metrics-port={metrics}", "--allow-metrics=true",
            "--disable-auto-complete-config", "--log-verbose=0", "--exit-on-error=false"]


def mpi_command(repo: Path, world_size: int, host: str, http: int, grpc: int, metrics: int,
                server: Path = TRTLLM_SERVER) -> list[str]:
    """The mpirun line for a tensorrt-llm repository: one segment per rank."""
    cmd = ["mpirun", "--allow-run-as-root"]
    for rank in range(world_size):
        if rank:
            cmd.append(":")
        cmd += ["-n", "1", str(server), f"--model-repository={repo}", "--disable-auto-complete-config",
                f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"]
        if rank == 0:
            cmd += [f"--http-address={host}", f"--http-port={http}", f"--grpc-address={host}", f"--grpc-port={grpc}",
                    f"--metrics-address={host}", f"--metrics-port={metrics}"]  # all three on --host
        else:  # ranks > 0: only the engine, no endpoints of their own that could clash
            cmd += ["--model-control-mode=explicit", "--load-model=tensorrt_llm", "--allow-http=false",
                    "--allow-grpc=false", "--allow-metrics=false"]
    return cmd


class TritonServer:
    """`with TritonServer(repo) as s: ...` starts tritonserver, waits until ready, stops it."""

    def __init__(self, repo: Path, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, log_file: Path | None = None, timeout: float = 600.0) -> None:
        self.repo = Path(repo).resolve()
        self.info = read_repo(self.repo)
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.timeout = timeout
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self._tmp: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def _command(self) -> tuple[list[str], dict]:
        env = dict(os.environ)
        if self.info.get("backend") == "tensorrt-llm":
            if not TRTLLM_SERVER.is_file():
                raise ConfigError("this repository serves TensorRT-LLM engines: run `trtbuild serve` inside the Triton "
                                  "TRT-LLM container on a GPU host")
            return mpi_command(self.repo, int(self.info.get("world_size", 1)), self.host, self.http_port,
                               self.grpc_port, self.metrics_port), env
        base = pytriton_dir()
        self._tmp = Path(tempfile.mkdtemp(prefix="trtbuild-backends-"))
        py = self._tmp / "python"
        py.mkdir()
        shutil.copy2(base / "backends" / "python" / "libtriton_python.so", py)
        shutil.copy2(base / "backends" / "python" / "triton_python_backend_utils.py", py)
        stub = base / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
            "triton_python_backend_stub"
        if not stub.is_file():
            raise ConfigError(f"nvidia-pytriton has no Python-backend stub for Python "
                              f"{sys.version_info.major}.{sys.version_info.minor}")
        shutil.copy2(stub, py)
        libs = [str(base.parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")])
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = ":".join([root, *sys.path[1:], env.get("PYTHONPATH", "")])
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return local_command(self.repo, self._tmp, self.host, self.http_port, self.grpc_port, self.metrics_port), env

    def start(self) -> TritonServer:
        for name, port in (("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port)):
            if not port_free(self.host, port):
                raise ConfigError(f"{name} port {port} on {self.host} is busy (another server is running? "
                                  f"choose another --{name.lower()}-port)")
        cmd, env = self._command()
        log = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ConfigError(f"tritonserver exited with code {self.proc.returncode} while starting"
                                  + (f" (log: {self.log_file})" if self.log_file else ""))
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise ConfigError(f"tritonserver was not ready after {self.timeout:.0f} s")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None:  # the Python models' shared cancellation directory
            shutil.rmtree(Path(tempfile.gettempdir()) / f"trtbuild-cancel-{self.proc.pid}", ignore_errors=True)
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
