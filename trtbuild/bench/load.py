"""The load generator: prompts of requested token lengths from local text, and concurrent
streaming clients (tritonclient gRPC, or HTTP generate_stream) or the in-process scheduler.

Concurrency mode keeps C requests in flight (each worker sends its next request when the last one
ends); request-rate mode sends at Poisson arrival times (gamma-distributed gaps with shape
`burstiness`: 1 = Poisson, < 1 burstier), each request on its own thread.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trtbuild.bench.metrics import RequestRecord
from trtbuild.bench.speculation import stats_counters
from trtbuild.common.errors import ConfigError, GenerationError, TrtbuildError


class BenchFailed(TrtbuildError):
    """A load point failed: every request did, or more than the allowed fraction."""


@dataclass(frozen=True)
class Prompt:
    text: str
    input_tokens: int
    max_tokens: int


def bench_tokenizer(path: Path, what: str):
    """The tokenizer in `path` for `what` (the option naming it), or a one-line ConfigError."""
    from trtbuild.runtime.tokenizer import load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{what} {path}: no such directory")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConfigError(f"{what} {path} has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json): "
                          "give the served engine dir (OUT/engine) or the model's HF dir")
    try:
        return load_tokenizer(path)
    except (OSError, ValueError) as e:  # transformers' own for unreadable tokenizer or config files
        raise ConfigError(f"{what} {path}: cannot load the tokenizer: {' '.join(str(e).split())}") from None


def parse_length(text: str, what: str) -> tuple[int, int]:
    """'MEAN[:STD]' -> (mean, std)."""
    try:
        mean, _, std = text.partition(":")
        m, s = int(mean), int(std or 0)
    except ValueError:
        raise ConfigError(f"{what} must be MEAN[:STD] in tokens, got {text!r}") from None
    if m < 1 or s < 0:
        raise ConfigError(f"{what} needs MEAN >= 1 and STD >= 0, got {text!r}")
    return m, s


def synthetic_prompts(tok, n: int, isl: tuple[int, int], osl: tuple[int, int], seed: int) -> list[Prompt]:
    """Prompts cut from the local standard library's sources to normally distributed lengths."""
    from trtbuild.common.corpus import stdlib_files

    rng = random.Random(seed)
    ids = []
    for f in stdlib_files()[:40]:
        ids += tok(f.read_text(errors="replace"), add_special_tokens=False)["input_ids"]
        if len(ids) > 200_000:
            break
    out = []
    for _ in range(n):
        want = max(1, round(rng.gauss(*isl)) if isl[1] else isl[0])
        start = rng.randrange(0, len(ids) - want - 1)
        text = tok.decode(ids[start:start + want])
        count = len(tok(text)["input_ids"])
        out.append(Prompt(text, count, max(1, round(rng.gauss(*osl)) if osl[1] else osl[0])))
    return out


def dataset_prompts(path: Path, tok, default_max_tokens: int) -> list[Prompt]:
    """JSON lines with "text_input" (or "prompt") and optional "max_tokens" (an integer >= 1)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read dataset {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"cannot read dataset {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"dataset {path} line {i}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"dataset {path} line {i}: not a JSON object")
        text = obj.get("text_input", obj.get("prompt"))
        if not isinstance(text, str) or not text:
            raise ConfigError(f"dataset {path} line {i}: needs a non-empty string \"text_input\"")
        max_tokens = obj.get("max_tokens", default_max_tokens)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ConfigError(f"dataset {path} line {i}: \"max_tokens\" must be an integer >= 1, got {max_tokens!r}")
        out.append(Prompt(text, len(tok(text)["input_ids"]), max_tokens))
    if not out:
        raise ConfigError(f"dataset {path}: no requests")
    return out


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise ConfigError(f"--url must be HOST:PORT, got {url!r}") from None


def _connect_error(url: str, timeout: float = 5.0) -> str | None:
    """Why a TCP connection to `url` fails (e.g. "Connection refused"), or None if it opens."""
    import socket

    try:
        with socket.create_connection(_host_port(url), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__


def check_server(url: str, model: str, protocol: str = "grpc", timeout: float = 10.0) -> None:
    """Fail fast (one line) unless `url` accepts connections and serves `model` as a text model:
    the connection as the load's requests report it, the rest as `ask` checks it."""
    from trtbuild.serve.client import check_text_model

    if (why := _connect_error(url, timeout)) is not None:
        raise ConfigError(f"cannot connect to {url}: {why}")
    check_text_model(url, model, protocol, timeout)


def sender(url: str, model: str, protocol: str = "grpc") -> Callable[[Prompt, RequestRecord], None]:
    """Send one prompt as a streamed request (gRPC or HTTP generate_stream), recording each
    response's arrival time, the text and the server's draft counters. A request that fails
    because the server cannot be reached raises "cannot connect to URL: <reason>"."""
    from trtbuild.serve.client import stream_grpc, stream_http

    stream = stream_grpc if protocol == "grpc" else stream_http

    def send(p: Prompt, rec: RequestRecord) -> None:
        try:
            for out in stream(url, p.text, p.max_tokens, model):
                if out.get("text_output"):
                    rec.responses.append(time.monotonic())
                    rec.text += out["text_output"]
                rec.accepted_draft_tokens = int(out.get("total_accepted_draft_tokens", 0) or 0)
                rec.draft_tokens = int(out.get("total_draft_tokens", 0) or 0)
        except Exception as e:  # gRPC's stream error can hide the cause: say when the server is not there
            if (why := _connect_error(url)) is not None:
                raise ConnectionError(f"cannot connect to {url}: {why}") from e
            raise
    return send


def run_load(send: Callable[[Prompt, RequestRecord], None], prompts: list[Prompt], tok, *, concurrency: int | None,
             rate: float | None = None, burstiness: float = 1.0, seed: int = 0,
             progress: Callable[[], None] | None = None, duration: float | None = None) -> list[RequestRecord]:
    """Send every prompt (with `duration`: cycle through them until that many seconds have passed,
    then let the requests in flight finish); returns one record per request sent, in order."""
    records: list[RequestRecord] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration if duration else None

    def take() -> int | None:
        with lock:
            k = len(records)
            if (deadline is None and k >= len(prompts)) or (deadline is not None and time.monotonic() >= deadline):
                return None
            p = prompts[k % len(prompts)]
            records.append(RequestRecord(k, 0.0, p.input_tokens))
            return k

    def one(i: int) -> None:
        rec = records[i]
        rec.sent = time.monotonic()
        try:
            send(prompts[i % len(prompts)], rec)
        except Exception as e:  # noqa: BLE001 (recorded per request, reported in the results)
            rec.error = " ".join(str(e).split())
        rec.output_tokens = len(tok(rec.text, add_special_tokens=False)["input_ids"]) if rec.text else 0
        if progress:
            progress()

    if rate is None:
        def worker() -> None:
            while (i := take()) is not None:
                one(i)

        threads = [threading.Thread(target=worker) for _ in range(concurrency or 1)]
        for t in threads:
            t.start()
    else:
        rng = random.Random(seed)
        threads = []
        while (i := take()) is not None:
            t = threading.Thread(target=one, args=(i,))
            t.start()
            threads.append(t)
            time.sleep(rng.gammavariate(burstiness, 1.0 / (rate * burstiness)))
    for t in threads:
        t.join()
    return records


def inprocess_sender(engine_dir: Path) -> tuple[Callable[[Prompt, RequestRecord], None], Callable[[], None]]:
    """Requests straight into the reference runtime's scheduler (no server): (send, stop); see
    `inprocess_target`."""
    send, stop, _ = inprocess_target(engine_dir)
    return send, stop


def inprocess_target(engine_dir: Path) -> tuple[Callable[[Prompt, RequestRecord], None], Callable[[], None],
                                                 Callable[[], dict | None]]:
    """Requests straight into the reference runtime's scheduler (no server): (send, stop, counters),
    counters reading the scheduler's Stats as a server's gauges would give them (bench.speculation).

    The engine loads in the scheduler's own thread; a load error is raised here, and a request
    whose scheduler thread has died fails instead of waiting forever. Requests are refused as the
    server's preprocessing refuses them (prompt longer than max_input_len)."""
    from trtbuild.runtime import Request
    from trtbuild.runtime.scheduler import serve_engine
    from trtbuild.runtime.tokenizer import default_end_ids
    from trtbuild.triton_repo.python_models import Detokenizer

    engine_dir = Path(engine_dir)
    tok = bench_tokenizer(engine_dir, "--in-process")
    ends = default_end_ids(engine_dir, tok)
    sched, thread = serve_engine(engine_dir)  # the engine loads in the loop's thread; load errors raise here
    max_input_len = sched.model.cfg.max_input_len  # the engine's build_config, as the model read it

    def stop() -> None:
        sched.shutdown()
        thread.join(30)

    def send(p: Prompt, rec: RequestRecord) -> None:
        ids = tuple(tok(p.text)["input_ids"])
        if len(ids) > max_input_len:
            raise GenerationError(f"prompt has {len(ids)} tokens, more than max_input_len {max_input_len}")
        done = threading.Event()
        detok = Detokenizer(tok)
        jid = sched.reserve_id()

        def on_tokens(tokens, result):
            text = detok.add(tokens, final=result is not None)
            if text:
                rec.responses.append(time.monotonic())
                rec.text += text
            steps, rec.accepted_draft_tokens, rec.draft_tokens = sched.progress(jid)
            if result is not None:
                done.set()

        sched.submit(Request(ids, p.max_tokens, end_ids=ends), on_tokens, job_id=jid)
        while not done.wait(0.5):
            if not thread.is_alive():
                raise GenerationError(f"the scheduler stopped: {sched.error or 'shut down'}")

    return send, stop, stats_counters(lambda: sched.stats)
