"""`trtbuild serve`: one server's life under supervision, until it dies or a signal stops it.

`serve_repo` resolves what to serve (a build directory's triton_repo; a moved tensorrt-llm build's
repository rewritten, in a temporary directory, for where its engine is now), starts the server,
optionally streams one request (`once`), else watches it. SIGTERM, SIGINT and SIGHUP (tritonserver
has a session of its own, so a closed terminal would orphan it) unwind whatever runs, start-up
included, to the server's stop; the stop, once begun, runs to its end. A server that dies is a
ServerDied error (`the server died: ...`); nothing of the server is left either way.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from trtbuild.common.errors import TrtbuildError
from trtbuild.serve import TritonServer, check_ports, moved_engine, relocated_repo, repo_of

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _print(text: str = "", nl: bool = True) -> None:
    print(text, end="\n" if nl else "", flush=True)


class ServerDied(TrtbuildError):
    """The server (tritonserver or one of its Python models' processes) died while serving."""


@dataclass(frozen=True)
class Ports:
    host: str = "127.0.0.1"
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


@dataclass(frozen=True)
class Stopped:
    """How serving ended: `signal` (its number) stopped it, before the server was `ready` or after."""

    signal: int | None
    ready: bool

    @property
    def exit_code(self) -> int:
        """0, or 128 + the signal for a server stopped before it was ready."""
        return 128 + self.signal if self.signal is not None and not self.ready else 0


class Companion(Protocol):
    """Something served next to tritonserver once it is ready (the OpenAI frontend): started after
    the server, watched with it, stopped before it."""

    def start(self) -> object: ...
    def alive(self) -> bool: ...
    def stop(self) -> None: ...


class _Stop(BaseException):
    """A signal: unwinds whatever runs (start-up included) to the server's stop."""


def serve_repo(repo_dir: Path, ports: Ports = Ports(), *, log_file: Path | None = None, once: str | None = None,
               max_tokens: int = 64, start_timeout: int = 600, echo: Callable[..., None] = _print,
               companion: Callable[[str], Companion] | None = None) -> Stopped:
    """Serve `repo_dir` (a repository or a build directory) until a signal (or, with `once`, one
    streamed request); `echo(text, nl=True)` gets the ready line and the streamed text.
    `companion(repo)`: made for the repository served, started once the server is ready."""
    check_ports(ports.http, ports.grpc, ports.metrics)
    repo_dir = repo_of(repo_dir)
    moved, tmp = moved_engine(repo_dir), None
    if moved is not None:  # serve a copy of the repository that names the engine where it is now
        tmp = Path(tempfile.mkdtemp(prefix="trtbuild-repo-"))
        repo_dir = relocated_repo(moved.parent, tmp / "triton_repo")
        echo(f"the build has moved: serving its repository rewritten for {moved}")
    try:
        server = TritonServer(repo_dir, ports.host, ports.http, ports.grpc, ports.metrics, log_file,
                              timeout=start_timeout)
        return supervise(server, ports, once=once, max_tokens=max_tokens, echo=echo,
                         companion=companion(str(repo_dir)) if companion is not None else None)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def supervise(server: TritonServer, ports: Ports, *, once: str | None = None, max_tokens: int = 64,
              echo: Callable[..., None] = _print, poll: float = 0.5, companion: Companion | None = None) -> Stopped:
    """Start `server` (and then `companion`), then stream `once` or watch both until one dies
    (ServerDied) or a signal stops them."""
    state: dict = {"signal": None, "stopping": False, "ready": False}

    def handler(signum, frame):  # noqa: ARG001
        if state["signal"] is None:
            state["signal"] = signum
        if not state["stopping"]:  # once stopping, the stop runs to its end
            state["stopping"] = True
            raise _Stop

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        server.start()
        echo(f"ready: HTTP http://{ports.host}:{ports.http}  gRPC {ports.host}:{ports.grpc}  "
             f"metrics http://{ports.host}:{ports.metrics}/metrics  (model: ensemble)")
        state["ready"] = True
        if companion is not None:
            companion.start()
        if once is not None:
            from trtbuild.serve.client import stream_grpc

            echo(f"> {once}")
            for out in stream_grpc(server.grpc_url, once, max_tokens):
                echo(out.get("text_output", ""), nl=False)
            echo("")
        else:
            while (why := server.failure()) is None:
                if companion is not None and not companion.alive():
                    why = "the OpenAI frontend stopped"
                    break
                time.sleep(poll)
            state["stopping"] = True
            raise ServerDied(f"the server died: {why}")
    except _Stop:
        pass
    finally:
        state["stopping"] = True
        if companion is not None:
            companion.stop()
        server.stop()
        for sig, h in previous.items():
            signal.signal(sig, h)
    return Stopped(state["signal"], state["ready"])
