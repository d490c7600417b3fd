"""The OpenAI-compatible HTTP frontend (FastAPI): `/v1/models`, `/v1/completions`,
`/v1/chat/completions` (streaming as server-sent events ending in `data: [DONE]`), `/health`,
`/metrics`, translated to the ensemble of a repository trtbuild wrote (`Served.read`), so both
backends are served the same way.

Prompts are counted with the ensemble's own tokenizer (the preprocessing model's, with its
add_special_tokens), chat messages rendered with the model's chat template as `generate --chat` does.
Stop sequences are matched on the text (OpenAI's semantics: the output ends before the first one) and
end the Triton request; so does a client that goes away. `Frontend` runs the app under uvicorn in a
thread of its own (`trtbuild serve --openai-port`, `trtbuild openai`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import secrets
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from trtbuild.common.errors import ConfigError
from trtbuild.openai_api import protocol as P
from trtbuild.openai_api.triton import Triton

_PARAM = re.compile(r'key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}')


def model_parameters(config_pbtxt: Path) -> dict[str, str]:
    """A config.pbtxt's `parameters` (key -> string_value), as trtbuild writes them."""
    return dict(_PARAM.findall(config_pbtxt.read_text()))


@dataclass(frozen=True)
class Served:
    """What the frontend serves: the repository's model name, limits and tokenizer."""

    name: str
    created: int
    limits: P.Limits
    tokenizer_dir: Path
    add_special_tokens: bool
    streaming: bool

    @staticmethod
    def read(repo: Path, name: str | None = None) -> Served:
        from trtbuild.serve import read_repo, repo_of

        repo = repo_of(repo)
        info = read_repo(repo)
        try:
            pre = model_parameters(repo / "preprocessing" / "config.pbtxt")
            limits = P.Limits(int(pre["max_input_len"]), int(pre["max_seq_len"]))
        except (OSError, KeyError, ValueError):
            raise ConfigError(f"{repo}/preprocessing/config.pbtxt has no max_input_len / max_seq_len: "
                              "rewrite the repository with this trtbuild") from None
        build = repo.resolve().parent
        return Served(name or (build.name if repo.name == "triton_repo" else repo.resolve().name),
                      int((repo / "trtbuild.json").stat().st_mtime), limits,
                      repo / "preprocessing" / pre.get("tokenizer_dir", "tokenizer"),
                      pre.get("add_special_tokens", "true") == "true", bool(info.get("streaming", True)))


@dataclass
class Choice:
    """One generation's result as it accumulates."""

    index: int
    text: str = ""
    tokens: int = 0
    log_probs: list = field(default_factory=list)
    pieces: list = field(default_factory=list)   # the text of each token with a log prob
    drafted: int = 0
    accepted: int = 0
    finish_reason: str | None = None


class Engine:
    """The frontend's state: the served model, its tokenizer, the Triton channel."""

    def __init__(self, served: Served, grpc_url: str, metrics_url: str | None = None) -> None:
        from trtbuild.runtime.tokenizer import load_tokenizer

        self.served, self.metrics_url = served, metrics_url
        self.tok = load_tokenizer(served.tokenizer_dir)
        self.triton = Triton(grpc_url, "ensemble", served.streaming)
        self._ready_until = 0.0

    def count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=self.served.add_special_tokens)["input_ids"])

    def chat_prompt(self, messages: list[dict]) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise P.bad("messages", f"the model '{self.served.name}' has no chat template: use /v1/completions")
        try:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # the template's own checks (roles, order) are Jinja exceptions
            raise P.bad("messages", f"the chat template refused the messages: {e}") from None
        bos = self.tok.bos_token
        # the preprocessing tokenizer adds its special tokens: do not send a BOS the template wrote too
        if self.served.add_special_tokens and bos and text.startswith(bos) and \
                self.tok("", add_special_tokens=True)["input_ids"][:1] == [self.tok.bos_token_id]:
            text = text[len(bos):]
        return text

    async def check_ready(self) -> None:
        now = time.monotonic()
        if now < self._ready_until:
            return
        if not await self.triton.ready():
            raise P.APIError(503, "the Triton server is not ready", type="server_error", code="not_ready")
        self._ready_until = now + 1.0

    async def run(self, g: P.Generation, index: int, seed: int | None) -> AsyncIterator[tuple[str, Choice]]:
        """Generate one choice: yields (text safe to send, the choice so far); the last yield has
        its finish_reason set. Leaving early (a stop sequence, a client gone) cancels the request."""
        choice = Choice(index)
        stops = P.StopMatcher(g.stop)
        gen = self.triton.generate(g, seed, secrets.token_hex(8))
        try:
            async for chunk in gen:
                choice.tokens += chunk.tokens
                choice.drafted, choice.accepted = chunk.drafted, chunk.accepted
                if g.logprobs and chunk.log_probs:
                    choice.log_probs += chunk.log_probs
                    choice.pieces += self._pieces(chunk.text, len(chunk.log_probs))
                delta = stops.add(chunk.text, final=chunk.final)
                choice.text += delta
                if stops.stopped or chunk.final:
                    choice.finish_reason = "stop" if stops.stopped or choice.tokens < g.max_tokens else "length"
                    yield delta, choice
                    return
                if delta:
                    yield delta, choice
        finally:
            await gen.aclose()

    def _pieces(self, text: str, n: int) -> list[str]:
        """The text of each of a response's n tokens: its text re-tokenized when that gives n tokens,
        else the whole text on the first (the ensemble returns text, not ids)."""
        if n == 1:
            return [text]
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) == n:
            return [self.tok.decode([i], clean_up_tokenization_spaces=False) for i in ids]
        return [text] + [""] * (n - 1)


def _seeds(g: P.Generation) -> list[int | None]:
    """Seeds for the n choices: the request's, then one more per choice (the engine's default seed
    would make n samples identical)."""
    if g.n == 1:
        return [g.seed]
    base = g.seed if g.seed is not None else random.getrandbits(62)
    return [(base + i) % 2**63 for i in range(g.n)]


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def create_app(engine: Engine) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await engine.triton.close()

    app = FastAPI(title="trtbuild OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    served = engine.served

    def error(e: P.APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(P.APIError)
    async def _api_error(request: Request, e: P.APIError):
        return error(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        msg = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return error(P.APIError(e.status_code, msg, code="not_found" if e.status_code == 404 else None))

    async def body_of(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise P.APIError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise P.APIError(400, "the request body must be a JSON object")
        return body

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "trtbuild",
                "max_model_len": served.limits.max_seq_len}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        P.check_model({"model": name}, served.name)
        return model_card()

    @app.get("/health")
    async def health():
        if await engine.triton.ready():
            return {"status": "ok"}
        raise P.APIError(503, "the Triton server is not ready", type="server_error", code="not_ready")

    @app.get("/metrics")
    async def metrics():
        if engine.metrics_url is None:
            raise P.APIError(404, "no Triton metrics URL is known to this frontend (give --metrics-url)")

        def fetch() -> str:
            with urllib.request.urlopen(f"http://{engine.metrics_url}/metrics", timeout=5) as r:
                return r.read().decode()
        try:
            return PlainTextResponse(await asyncio.to_thread(fetch), media_type="text/plain; version=0.0.4")
        except OSError as e:
            raise P.APIError(503, f"Triton's metrics at {engine.metrics_url} did not answer: {e}",
                             type="server_error") from None

    async def collect(request: Request, runs) -> list[Choice]:
        """Run the generations to their end; a client that leaves cancels them."""
        async def one(it):
            last = None
            async for _, last in it:
                pass
            return last
        tasks = [asyncio.ensure_future(one(it)) for it in runs]
        try:
            while not all(t.done() for t in tasks):
                await asyncio.wait(tasks, timeout=0.5, return_when=asyncio.ALL_COMPLETED)
                if not all(t.done() for t in tasks) and await request.is_disconnected():
                    raise asyncio.CancelledError
            return [t.result() for t in tasks]
        finally:
            for t in tasks:
                t.cancel()

    def stats(choices: list[Choice]) -> dict:
        return P.speculation_stats(sum(c.drafted for c in choices), sum(c.accepted for c in choices))

    def end_of_stream(head: dict, g: P.Generation, choice: Choice | None) -> list[bytes]:
        """A stream's last events: the usage chunk (when asked for) and [DONE]."""
        usage = [_sse({**head, "choices": [], "usage": P.usage(g.prompt_tokens, choice.tokens),
                       "trtbuild": stats([choice])})] if g.include_usage and choice is not None else []
        return [*usage, b"data: [DONE]\n\n"]

    def event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
        return StreamingResponse(_guarded(events), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await body_of(request)
        P.check_model(body, served.name)
        prompts = P.completion_prompts(body)
        gens = [P.parse_completion(body, p, engine.count(p), served.limits) for p in prompts]
        if gens[0].stream and len(gens) > 1:
            raise P.bad("prompt", "a list of prompts is not supported with 'stream': true")
        await engine.check_ready()
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": served.name}

        def logprobs(c: Choice, g: P.Generation):
            if not g.logprobs:
                return None
            offsets, at = [], len(g.prompt) if g.echo else 0
            for piece in c.pieces:
                offsets.append(at)
                at += len(piece)
            return {"tokens": c.pieces, "token_logprobs": c.log_probs, "top_logprobs": None, "text_offset": offsets}

        g = gens[0]
        if g.stream:
            async def events():
                choice = None
                if g.echo:
                    yield _sse({**head, "choices": [{"index": 0, "text": g.prompt, "logprobs": None,
                                                     "finish_reason": None}]})
                sent = 0
                async for delta, choice in engine.run(g, 0, g.seed):
                    lp = None
                    if g.logprobs:
                        lp = {"tokens": choice.pieces[sent:], "token_logprobs": choice.log_probs[sent:],
                              "top_logprobs": None, "text_offset": None}
                        sent = len(choice.log_probs)
                    yield _sse({**head, "choices": [{"index": 0, "text": delta, "logprobs": lp,
                                                     "finish_reason": choice.finish_reason}]})
                for e in end_of_stream(head, g, choice):
                    yield e
            return event_stream(events())
        runs = [engine.run(gi, i * gi.n + k, seed) for i, gi in enumerate(gens) for k, seed in enumerate(_seeds(gi))]
        choices = await collect(request, runs)
        return {**head, "choices": [
            {"index": c.index, "text": (gens[c.index // g.n].prompt if g.echo else "") + c.text,
             "logprobs": logprobs(c, gens[c.index // g.n]), "finish_reason": c.finish_reason} for c in choices],
            "usage": P.usage(sum(x.prompt_tokens for x in gens), sum(c.tokens for c in choices)),
            "trtbuild": stats(choices)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await body_of(request)
        P.check_model(body, served.name)
        prompt = engine.chat_prompt(P.chat_messages(body))
        g = P.parse_chat(body, prompt, engine.count(prompt), served.limits)
        await engine.check_ready()
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                "system_fingerprint": None}

        def logprobs(pieces: list[str], values: list[float]):
            return {"content": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8")), "top_logprobs": []}
                                for t, v in zip(pieces, values)], "refusal": None}

        if g.stream:
            async def events():
                yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}]})
                choice, sent = None, 0
                async for delta, choice in engine.run(g, 0, g.seed):
                    lp = logprobs(choice.pieces[sent:], choice.log_probs[sent:]) if g.logprobs else None
                    sent = len(choice.log_probs)
                    if delta or lp:
                        yield _sse({**head, "choices": [{"index": 0, "delta": {"content": delta}, "logprobs": lp,
                                                         "finish_reason": None}]})
                    if choice.finish_reason:
                        yield _sse({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                         "finish_reason": choice.finish_reason}]})
                for e in end_of_stream(head, g, choice):
                    yield e
            return event_stream(events())
        choices = await collect(request, [engine.run(g, k, seed) for k, seed in enumerate(_seeds(g))])
        return {**head, "object": "chat.completion", "choices": [
            {"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
             "logprobs": logprobs(c.pieces, c.log_probs) if g.logprobs else None,
             "finish_reason": c.finish_reason} for c in choices],
            "usage": P.usage(g.prompt_tokens, sum(c.tokens for c in choices)), "trtbuild": stats(choices)}

    return app


async def _guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A stream's events; an error after the response has begun is sent as an error event (the
    status line is gone by then), then [DONE]."""
    try:
        async for e in events:
            yield e
    except P.APIError as e:
        yield _sse(e.body())
        yield b"data: [DONE]\n\n"


class Frontend:
    """uvicorn serving `create_app(engine)` on host:port: `start()` in a thread of its own (next to
    tritonserver), or `run()` in this one. `option`: the CLI option that chose the port (named when
    it is busy)."""

    def __init__(self, engine: Engine, host: str, port: int, option: str = "--openai-port") -> None:
        import uvicorn

        from trtbuild.serve import port_free

        if not port_free(host, port):
            raise ConfigError(f"OpenAI port {port} on {host} is busy (choose another {option})")
        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(create_app(engine), host=host, port=port, log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.run, name="openai-frontend", daemon=True)

    def run(self) -> None:
        """Serve until SIGINT / SIGTERM (in the main thread) or `stop()`."""
        self.server.run()

    def start(self, timeout: float = 30.0) -> Frontend:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the OpenAI frontend did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Announced:
    """`trtbuild serve --openai-port`'s companion: the frontend for the repository being served,
    built (tokenizer loaded, port checked) before tritonserver starts and started once it is ready."""

    def __init__(self, repo: str, grpc_url: str, metrics_url: str | None, host: str, port: int,
                 name: str | None, echo) -> None:
        self.engine = Engine(Served.read(Path(repo), name), grpc_url, metrics_url)
        self.frontend = Frontend(self.engine, host, port)
        self.echo = echo

    def start(self) -> Announced:
        self.frontend.start()
        f = self.frontend
        self.echo(f"OpenAI API: http://{f.host}:{f.port}/v1  (model: {self.engine.served.name})")
        return self

    def alive(self) -> bool:
        return self.frontend.alive()

    def stop(self) -> None:
        self.frontend.stop()


def run_until_signal(repo: Path, grpc_url: str, metrics_url: str | None, host: str, port: int,
                     name: str | None, echo) -> None:
    """`trtbuild openai`: the frontend alone, in this thread, until SIGINT / SIGTERM."""
    engine = Engine(Served.read(Path(repo), name), grpc_url, metrics_url)
    frontend = Frontend(engine, host, port, option="--port")
    echo(f"OpenAI API: http://{host}:{port}/v1  (model: {engine.served.name}, Triton gRPC {grpc_url})")
    frontend.run()
