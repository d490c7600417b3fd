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
its whole process group, Python-backend stubs included, and its /dev/shm regions removed (named
with a prefix of its own, so concurrent servers never touch each other's). `supervise.py`: the
`trtbuild serve` loop (signals, a server that dies); `ask.py`: one request to a running server.

May import: trtbuild.common, trtbuild.triton_repo (and what they may).
"""

from __future__ import annotations

import json
import os
import re
import secrets
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

from trtbuild.common.errors import ConfigError
from trtbuild.common.fsutil import MARKER

TRTLLM_SERVER = Path("/opt/tritonserver/bin/tritonserver")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(http: int, grpc: int, metrics: int) -> None:
    """Refuse one port given to two endpoints (tritonserver would only say it failed to start)."""
    seen: dict[int, str] = {}
    for name, port in (("HTTP", http), ("gRPC", grpc), ("metrics", metrics)):
        if port in seen:
            raise ConfigError(f"the {seen[port]} and {name} ports are both {port}: give each endpoint its own port")
        seen[port] = name


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def repo_of(path: Path) -> Path:
    """The model repository `path` names: itself, or a build directory's triton_repo."""
    path = Path(path)
    return path / "triton_repo" if (path / "triton_repo").is_dir() and not (path / "ensemble").is_dir() else path


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
                server: Path = TRTLLM_SERVER, shm_prefix: str = "prefix") -> list[str]:
    """The mpirun line for a tensorrt-llm repository: one segment per rank, each rank's Python
    backend regions named `{shm_prefix}{rank}_...`."""
    cmd = ["mpirun", "--allow-run-as-root"]
    for rank in range(world_size):
        if rank:
            cmd.append(":")
        cmd += ["-n", "1", str(server), f"--model-repository={repo}", "--disable-auto-complete-config",
                f"--backend-config=python,shm-region-prefix-name={shm_prefix}{rank}_"]
        if rank == 0:
            cmd += [f"--http-address={host}", f"--http-port={http}", f"--grpc-address={host}", f"--grpc-port={grpc}",
                    f"--metrics-address={host}", f"--metrics-port={metrics}"]  # all three on --host
        else:  # ranks > 0: only the engine, no endpoints of their own that could clash
            cmd += ["--model-control-mode=explicit", "--load-model=tensorrt_llm", "--allow-http=false",
                    "--allow-grpc=false", "--allow-metrics=false"]
    return cmd


SHM_DIR = Path("/dev/shm")
LOG_LINE = re.compile(r"^[IWE]\d{4} [\d:.]+ +\d+ ")
ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+ +\d+ [^\]]*\] ?(.*)$")


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def how_it_ended(code: int) -> str:
    """'exited with code N' or 'was killed by SIGKILL' for a Popen return code."""
    return f"was killed by {_signal_name(code)}" if code < 0 else f"exited with code {code}"


# errors a CPU-only host always logs: never the reason a server failed
LOG_NOISE = re.compile(r"CudaDriverHelper|CUDA driver version|NVML|DCGM|^Signal \(\d+\) received")


def log_reason(log: Path | None, start: int = 0) -> str | None:
    """The last error line of a tritonserver log after byte `start` (its message alone: no
    timestamp, quotes or source location), or None."""
    if log is None:
        return None
    try:
        with open(log, "rb") as f:
            f.seek(max(start, os.path.getsize(log) - 256 * 1024))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    errors = [m.group(1).strip().strip('"') for line in lines if (m := ERROR_LINE.match(line.strip()))]
    # else a line of its own: what tritonserver prints after its usage text for a bad option
    plain = [line for line in lines if line[:1].isalpha() and not LOG_LINE.match(line)]
    for text in (*reversed(errors), *reversed(plain)):
        if text and not LOG_NOISE.search(text):
            return " ".join(text.split())[:400]
    return None


def _proc_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _stat_pgid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[2]) if fields[0] != "Z" else None  # a zombie holds nothing


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def _cmdline(pid: int) -> str:
    return " ".join(_argv(pid))


class TritonServer:
    """`with TritonServer(repo) as s: ...` starts tritonserver, waits until ready, stops it.

    Every process of the server (tritonserver, mpirun's ranks, the Python backend stubs) is in one
    process group or names the server's own shm-region prefix (`shm_prefix`) on its command line;
    `stop()` ends all of them, on every path (the server dead or alive), and removes the /dev/shm
    regions with that prefix. Without `log_file` the log goes to a temporary file, read for the
    reason when the server fails (`exit_reason`) and removed by `stop()`."""

    def __init__(self, repo: Path, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, log_file: Path | None = None, timeout: float = 600.0) -> None:
        self.repo = Path(repo).resolve()
        self.info = read_repo(self.repo)
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        check_ports(http_port, grpc_port, metrics_port)
        self.timeout = timeout
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self._log: Path | None = Path(log_file) if log_file else None
        self._stubs: dict[int, str] = {}
        self._log_from = 0  # a failure is explained by what was logged since start (then since ready)
        # unique per server, so concurrent servers never touch each other's regions
        self.shm_prefix = f"trtbuild-{os.getpid()}-{secrets.token_hex(4)}-"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def _command(self, tmp: Path) -> tuple[list[str], dict]:
        env = dict(os.environ)
        env["TRTBUILD_CANCEL_DIR"] = str(tmp / "cancel")  # shared by this server's Python models
        if self.info.get("backend") == "tensorrt-llm":
            if not TRTLLM_SERVER.is_file():
                raise ConfigError("this repository serves TensorRT-LLM engines: run `trtbuild serve` inside the Triton "
                                  "TRT-LLM container on a GPU host")
            return mpi_command(self.repo, int(self.info.get("world_size", 1)), self.host, self.http_port,
                               self.grpc_port, self.metrics_port, shm_prefix=self.shm_prefix), env
        base = pytriton_dir()
        py = tmp / "python"
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
        cmd = local_command(self.repo, tmp, self.host, self.http_port, self.grpc_port, self.metrics_port)
        return [*cmd, f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"], env

    def start(self) -> TritonServer:
        """Start and wait until ready. On any failure, or an exception (Ctrl-C) while waiting, the
        server is stopped (nothing left behind) before the exception propagates."""
        for name, port in (("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port)):
            if not port_free(self.host, port):
                raise ConfigError(f"{name} port {port} on {self.host} is busy (another server is running? "
                                  f"choose another --{name.lower()}-port)")
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix="trtbuild-server-"))
            cmd, env = self._command(self._tmp)
            (self._tmp / "cancel").mkdir()
            if self._log is None:
                self._log = self._tmp / "tritonserver.log"
            self._log_from = self._log.stat().st_size if self._log.exists() else 0
            with open(self._log, "ab") as log:
                self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ConfigError(f"tritonserver {self.exit_reason()} while starting"
                                      + (f" (log: {self.log_file})" if self.log_file else ""))
                if self.ready():
                    self._stubs = self.stubs()
                    self._log_from = self._log.stat().st_size if self._log.exists() else 0
                    return self
                time.sleep(0.5)
            why = log_reason(self._log, self._log_from)
            raise ConfigError(f"tritonserver was not ready after {self.timeout:.0f} s"
                              + (f": {why}" if why else "") + (f" (log: {self.log_file})" if self.log_file else ""))
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def exit_reason(self) -> str:
        """How the server ended ('exited with code 1', 'was killed by SIGKILL') and the last error
        line of its log, if any."""
        code = self.proc.poll() if self.proc is not None else None
        what = "is running" if code is None else how_it_ended(code)
        why = log_reason(self._log, self._log_from)
        return what + (f": {why}" if why else "")

    def failure(self) -> str | None:
        """None while the server is whole; else what broke: tritonserver ended, or one of the Python
        backend stubs alive at ready died (Triton goes on reporting the model ready)."""
        if self.proc is None:
            return "tritonserver was never started"
        if self.proc.poll() is not None:
            return f"tritonserver {self.exit_reason()}"
        alive = self.stubs()
        for pid, name in self._stubs.items():
            if pid not in alive:
                why = log_reason(self._log, self._log_from)
                return (f"the Python backend stub of model instance {name} (pid {pid}) died"
                        + (f": {why}" if why else ""))
        return None

    def stubs(self) -> dict[int, str]:
        """The server's Python backend stubs now alive: pid -> model instance name."""
        out = {}
        for pid in self._pids():
            args = _argv(pid)  # stub argv: path, model path, region, sizes, parent pid, lib dir, handle, instance
            if args and args[0].endswith("triton_python_backend_stub") and len(args) > 8:
                out[pid] = args[8]
        return out

    def _pids(self) -> set[int]:
        """Every live process of this server: its process group, and anything naming its shm prefix
        (a stub or rank that left the group)."""
        me, group = os.getpid(), self.proc.pid if self.proc is not None else None
        # without self.proc (a signal between fork and Popen's return) the prefix still finds it
        return {pid for pid in _proc_pids() if pid != me and (
            (group is not None and _stat_pgid(pid) == group) or self.shm_prefix in _cmdline(pid))}

    def _drained(self, start: int) -> bool:
        """Whether tritonserver logged, after byte `start`, that no inference is in flight (what it
        logs once a shutdown has drained them, before unloading the models)."""
        try:
            with open(self._log, "rb") as f:
                f.seek(start)
                return b"All models are stopped" in f.read()
        except (OSError, TypeError):
            return False

    def regions(self) -> list[Path]:
        """The /dev/shm regions of this server."""
        try:
            return sorted(p for p in SHM_DIR.iterdir() if p.name.startswith(self.shm_prefix))
        except OSError:
            return []

    def stop(self, grace: float = 30.0, unload_grace: float = 3.0) -> None:
        """SIGTERM to the server's group: tritonserver lets the requests in flight finish (its exit
        timeout is 30 s) and then unloads the models. Once its log says none is in flight, the
        unload (each Python stub's finalize and interpreter teardown, seconds apiece on a busy host)
        gets `unload_grace` s; SIGKILL after that, or after `grace` s in all. Then SIGKILL to
        whatever of the server is left (stubs ignore SIGTERM and outlive a killed tritonserver),
        and its regions and files are removed."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            mark = self._log.stat().st_size if self._log is not None and self._log.exists() else 0
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline, drained = time.monotonic() + grace, None
            while proc.poll() is None and time.monotonic() < deadline:
                if drained is None and self._drained(mark):
                    drained = time.monotonic()
                    deadline = min(deadline, drained + unload_grace)
                try:
                    proc.wait(0.2)
                except subprocess.TimeoutExpired:
                    pass
        deadline = time.monotonic() + 15  # what is left, found even without `proc` (by its prefix)
        while (pids := self._pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if proc is not None and proc.poll() is None:
                try:
                    proc.wait(0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.1)
        if proc is not None:
            proc.poll()
        for region in self.regions():
            region.unlink(missing_ok=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            if self.log_file is None:
                self._log = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
