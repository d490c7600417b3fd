"""The load generator: prompts of requested token lengths from local text, and concurrent
streaming clients (tritonclient gRPC, HTTP generate_stream, or an OpenAI-compatible server's
/v1/chat/completions or /v1/completions) or the in-process scheduler.

Concurrency mode keeps C requests in flight (each worker sends its next request when the last one
ends); request-rate mode sends at Poisson arrival times (gamma-distributed gaps with shape
`burstiness`: 1 = Poisson, < 1 burstier), each request on its own thread.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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


def check_server(url: str, model: str | None, protocol: str = "grpc", timeout: float = 10.0) -> str:
    """Fail fast (one line) unless `url` accepts connections and serves `model` as a text model:
    the connection as the load's requests report it, the rest as `ask` checks it (openai: GET
    /v1/models lists `model`). Returns the model to send to: `model`, or for openai with `model`
    None the first one /v1/models lists."""
    from trtbuild.serve.client import ServerError, check_text_model

    if (why := _connect_error(url, timeout)) is not None:
        raise ConfigError(f"cannot connect to {url}: {why}")
    if protocol != "openai":
        check_text_model(url, model or "ensemble", protocol, timeout)
        return model or "ensemble"
    ids = openai_models(url, timeout)
    if model is not None and model not in ids:
        raise ServerError(f"the server at {url} has no model {model!r} (GET /v1/models lists: {', '.join(ids)})")
    return model or ids[0]


def sender(url: str, model: str, protocol: str = "grpc",
           openai_api: str = "chat") -> Callable[[Prompt, RequestRecord], None]:
    """Send one prompt as a streamed request (gRPC, HTTP generate_stream, or OpenAI `openai_api`:
    OpenAISender), recording each response's arrival time, the text and the server's draft
    counters. A request that fails because the server cannot be reached raises "cannot connect to
    URL: <reason>"."""
    from trtbuild.serve.client import stream_grpc, stream_http

    if protocol == "openai":
        return OpenAISender(url, model, openai_api)
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


OPENAI_APIS = ("chat", "completions")
OPENAI_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def _openai_error(obj) -> str:
    """The message of an error answer: OpenAI's {"error": {"message": ...}} (or a bare string)."""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        err = err.get("message") or json.dumps(err)
    return " ".join(str(err if err is not None else obj).split())


def _body_error(raw: bytes) -> str:
    try:
        return _openai_error(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return " ".join(raw.decode("utf-8", "replace").split())[:300] or "(empty body)"


def sse_events(lines: Iterable[bytes]) -> Iterator[dict]:
    """The JSON object of each server-sent event (its `data:` lines joined; an event ends at a
    blank line) up to `data: [DONE]`; comments (`:`) and other fields are skipped. Raises
    ServerError for a data payload that is not a JSON object, or a stream ending without [DONE]."""
    from trtbuild.serve.client import ServerError

    data: list[str] = []
    for raw in itertools.chain(lines, [b""]):  # a last event without its blank line still counts
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line:
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
            continue
        if not data:
            continue
        payload, data = "\n".join(data), []
        if payload.strip() == "[DONE]":
            return
        try:
            event = json.loads(payload)
        except json.JSONDecodeError:
            raise ServerError(f"the server sent an event that is not JSON: {payload[:200]!r}") from None
        if not isinstance(event, dict):
            raise ServerError(f"the server sent an event that is not a JSON object: {payload[:200]!r}")
        yield event
    raise ServerError("the event stream ended without data: [DONE]")


def openai_models(url: str, timeout: float = 10.0) -> list[str]:
    """The model ids GET /v1/models lists at `url`, or a one-line error: unreachable, not HTTP, not
    an OpenAI-compatible server, no model."""
    from trtbuild.serve.client import ServerError, UnreachableError

    conn = http.client.HTTPConnection(*_host_port(url), timeout=timeout)
    try:
        conn.request("GET", "/v1/models")
        r = conn.getresponse()
        raw = r.read()
    except http.client.HTTPException as e:  # BadStatusLine, RemoteDisconnected: another protocol
        raise UnreachableError(f"{url} does not answer HTTP ({type(e).__name__}): give the OpenAI frontend's port "
                               "(trtbuild serve --openai-port)") from None
    except OSError as e:
        raise UnreachableError(f"cannot connect to {url}: {e.strerror or e}") from None
    finally:
        conn.close()
    if r.status != 200:
        raise ServerError(f"{url} is not an OpenAI-compatible server: GET /v1/models answered HTTP {r.status} "
                          f"({_body_error(raw)}); give the OpenAI frontend's port (trtbuild serve --openai-port)")
    try:
        data = json.loads(raw)["data"]
        ids = [m["id"] for m in data]
        if not all(isinstance(i, str) for i in ids):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ServerError(f"{url} is not an OpenAI-compatible server: GET /v1/models gave no model list") from None
    if not ids:
        raise ServerError(f"the server at {url} lists no models (GET /v1/models)")
    return ids


class OpenAISender:
    """Send one prompt to an OpenAI-compatible server as a streamed /v1/chat/completions (the
    prompt as one user message, so the server applies its chat template) or /v1/completions
    (the prompt as is: the same text the ensemble gets) request, greedy (temperature 0) with
    max_tokens, asking for the usage chunk (stream_options.include_usage).

    Like the Triton senders it does not force the output length (no min_tokens / ignore_eos): a
    request may end at EOS before max_tokens, as it would through the ensemble. Recorded: each
    chunk with text (its arrival), the text, output tokens (and prompt tokens) from the usage chunk
    (else run_load counts the text), and the `trtbuild` extension's draft counters when present.

    Connections are kept alive and reused (a pool, at most one per request in flight), so a
    request's times do not include a TCP set-up; an idle connection the server has closed is
    replaced. Errors (one line): "cannot connect to URL: <reason>", "HTTP <status>: <message>" for
    a non-200 answer, the message of an error event or body."""

    def __init__(self, url: str, model: str, api: str = "chat", timeout: float = 600.0) -> None:
        if api not in OPENAI_APIS:
            raise ConfigError(f"--openai-api must be one of {', '.join(OPENAI_APIS)}, got {api!r}")
        self.url, self.model, self.api, self.timeout = url, model, api, timeout
        self.host, self.port = _host_port(url)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def body(self, p: Prompt) -> dict:
        body: dict = {"model": self.model}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": p.text}]
        else:
            body["prompt"] = p.text
        return {**body, "max_tokens": p.max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}

    def close(self) -> None:
        """Close the idle connections (those in use close when their request ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection that is still open (reused: True), else a new one, connected."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]:
                return conn, True  # nothing to read on an idle connection: still open
            conn.close()  # readable while idle: the server closed it (EOF)
        return self._connect(), False

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise ConnectionError(f"cannot connect to {self.url}: {e.strerror or e}") from None
        return conn

    def _post(self, conn: http.client.HTTPConnection, payload: bytes) -> http.client.HTTPResponse:
        conn.request("POST", OPENAI_PATHS[self.api], body=payload,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        return conn.getresponse()

    def __call__(self, p: Prompt, rec: RequestRecord) -> None:
        from trtbuild.serve.client import ServerError

        payload = json.dumps(self.body(p)).encode("utf-8")
        conn, reused = self._take()
        resp = None
        try:
            try:
                resp = self._post(conn, payload)
            except ConnectionError:  # the server closed the kept-alive connection just now: once more, anew
                if not reused:
                    raise
                conn.close()
                conn = self._connect()
                resp = self._post(conn, payload)
            self._read(resp, rec)
        except BaseException as e:
            if isinstance(e, ServerError) and resp is not None and resp.isclosed() and not resp.will_close:
                self._give(conn)  # an error answer read to its end: the connection stays usable
            else:
                conn.close()
            if isinstance(e, http.client.HTTPException):
                raise ServerError(f"the answer of {self.url} broke off or is not HTTP ({type(e).__name__}: "
                                  f"{e})") from None
            if isinstance(e, OSError) and not str(e).startswith("cannot connect"):
                if (why := _connect_error(self.url)) is not None:
                    raise ConnectionError(f"cannot connect to {self.url}: {why}") from None
                raise ConnectionError(f"the connection to {self.url} failed: {e.strerror or e}") from None
            raise
        if resp.will_close:
            conn.close()
        else:
            self._give(conn)

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)

    def _read(self, resp: http.client.HTTPResponse, rec: RequestRecord) -> None:
        from trtbuild.serve.client import ServerError

        if resp.status != 200:
            raise ServerError(f"HTTP {resp.status}: {_body_error(resp.read())}")
        kind = resp.getheader("Content-Type", "")
        if not kind.startswith("text/event-stream"):
            raw = resp.read()
            if isinstance(obj := _json_or_none(raw), dict) and "error" in obj:
                raise ServerError(_openai_error(obj))
            raise ServerError(f"the server answered {kind or 'no Content-Type'}, not an event stream (stream: true)")
        chat = self.api == "chat"
        for event in sse_events(resp):
            now = time.monotonic()
            if "error" in event:  # the frontend ends the stream with [DONE] right after it
                resp.read()
                raise ServerError(_openai_error(event))
            choices = event.get("choices") or []
            if choices and isinstance(choices[0], dict):
                text = (choices[0].get("delta") or {}).get("content") if chat else choices[0].get("text")
                if text:
                    rec.responses.append(now)
                    rec.text += text
            if isinstance(usage := event.get("usage"), dict):
                rec.output_tokens = int(usage.get("completion_tokens") or 0)
                rec.input_tokens = int(usage.get("prompt_tokens") or rec.input_tokens)
            if isinstance(spec := event.get("trtbuild"), dict):
                rec.draft_tokens = int(spec.get("draft_tokens") or 0)
                rec.accepted_draft_tokens = int(spec.get("accepted_draft_tokens") or 0)
        resp.read()  # the end of the body ([DONE] is its last event): the connection can be reused


def _json_or_none(raw: bytes):
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def run_load(send: Callable[[Prompt, RequestRecord], None], prompts: list[Prompt], tok, *, concurrency: int | None,
             rate: float | None = None, burstiness: float = 1.0, seed: int = 0,
             progress: Callable[[], None] | None = None, duration: float | None = None) -> list[RequestRecord]:
    """Send every prompt (with `duration`: cycle through them until that many seconds have passed,
    then let the requests in flight finish); returns one record per request sent, in order. A
    record's output tokens are the tokenizer's count of its text unless `send` set them (the
    server's own count, OpenAI's usage)."""
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
        if not rec.output_tokens:
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

    return send, stop, stats_counters(sched.stats_now)
