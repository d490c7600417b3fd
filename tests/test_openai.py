"""The OpenAI-compatible frontend: its request checks and stop matching by hand (fast), then the real
`openai` client against the frontend in front of a real tritonserver serving SmolLM2 builds (slow):
greedy text equal to `trtbuild generate` (chat: with the chat template), usage equal to the
tokenizer's counts, stop sequences, OpenAI's error shape for every bad parameter, a client leaving
mid-stream, 16 concurrent streaming chats, and `trtbuild serve --openai-port` itself."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import scheduler_gauges
from trtbuild.cli import cli
from trtbuild.openai_api import protocol as P

LIMITS = P.Limits(max_input_len=256, max_seq_len=512)


# ---- protocol: pure ----------------------------------------------------------------------------

def test_stop_matcher_holds_back_what_could_become_a_stop():
    m = P.StopMatcher(("\n\n", "END"))
    assert m.add("Hello") == "Hello"
    assert m.add(" wor") == " wor"
    assert m.add("ld\n") == "ld"           # "\n" may begin "\n\n": held
    assert m.add("\nmore") == "" and m.stopped
    assert m.text == "Hello world" and m.add("ignored") == ""


def test_stop_matcher_across_chunks_and_final():
    m = P.StopMatcher(("END",))
    assert m.add("aE") == "a"
    assert m.add("N") == ""
    assert m.add("D tail") == "" and m.stopped and m.text == "a"
    m = P.StopMatcher(("xyz",))
    assert m.add("abx") == "ab" and m.add("y", final=True) == "xy" and not m.stopped
    m = P.StopMatcher(("abcab",))
    assert m.add("xabca") == "x"             # "abca" begins the stop: held whole
    assert m.add("bd") == "" and m.stopped and m.text == "x"
    m = P.StopMatcher(())
    assert m.add("abc") == "abc" and m.add("d", final=True) == "d"


def test_openai_command_refuses_what_is_not_a_repository(tmp_path):
    r = CliRunner().invoke(cli, ["openai", str(tmp_path)])
    assert r.exit_code == 1 and "is not a model repository written by trtbuild" in r.output


def test_ensemble_inputs_are_upstreams_names_and_dtypes():
    """Every tensor the frontend sends is an input of upstream's ensemble, with its datatype."""
    from trtbuild.openai_api.triton import ensemble_inputs
    from trtbuild.triton_repo.upstream import ENSEMBLE_INPUTS

    want = {t.name: t.data_type.removeprefix("TYPE_").replace("STRING", "BYTES") for t in ENSEMBLE_INPUTS}
    g = P.Generation("hi", 1, 8, temperature=0.5, top_p=0.9, stop=("a", "b"), presence_penalty=0.5,
                     frequency_penalty=0.5, min_tokens=2, logprobs=True)
    sent = {t.name(): t.datatype() for t in ensemble_inputs(g, seed=3, streaming=True)}
    assert set(sent) == {"text_input", "max_tokens", "stream", "return_perf_metrics", "return_num_output_tokens",
                         "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "min_tokens",
                         "stop_words", "return_log_probs"}
    assert all(want[name] == dtype for name, dtype in sent.items()), (sent, want)
    greedy = {t.name(): t.datatype() for t in ensemble_inputs(P.Generation("hi", 1, 8, temperature=0), None, False)}
    assert greedy["top_k"] == want["top_k"] and "temperature" not in greedy


def _completion(**kw):
    body = {"model": "m", "prompt": "hi", **kw}
    return P.parse_completion(body, "hi", 1, LIMITS)


def _chat(**kw):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}
    return P.parse_chat(body, "hi", 1, LIMITS)


def test_parse_defaults_and_values():
    g = _completion()
    assert (g.max_tokens, g.temperature, g.top_p, g.stop, g.n, g.stream) == (16, 1.0, 1.0, (), 1, False)
    assert _chat().max_tokens == 511  # chat: until the engine's limit
    g = _chat(max_completion_tokens=7, temperature=0, top_p=0.5, seed=3, stop="x", presence_penalty=1.5,
              stream=True, stream_options={"include_usage": True}, logprobs=True, top_logprobs=0,
              speculation="off", ignore_eos=True)
    assert (g.max_tokens, g.temperature, g.top_p, g.seed, g.stop, g.presence_penalty, g.include_usage,
            g.logprobs, g.speculation, g.min_tokens) == (7, 0.0, 0.5, 3, ("x",), 1.5, True, True, "off", 7)
    assert _completion(logprobs=0, echo=True).logprobs and _completion(echo=True).echo


@pytest.mark.parametrize("kw, param, text", [
    ({"temperature": 2.5}, "temperature", "between 0 and 2"),
    ({"temperature": "hot"}, "temperature", "must be a number"),
    ({"top_p": 1.5}, "top_p", "between 0 and 1"),
    ({"top_p": 0}, "top_p", "must be above 0"),
    ({"max_tokens": 0}, "max_tokens", "at least 1"),
    ({"max_tokens": 1.5}, "max_tokens", "must be an integer"),
    ({"max_tokens": 600}, "max_tokens", "at most 511 new tokens"),
    ({"n": 0}, "n", "between 1 and 16"),
    ({"n": 2, "stream": True}, "n", "not supported with 'stream'"),
    ({"seed": -1}, "seed", "between 0 and"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"stop": [1]}, "stop", "a string or a list of strings"),
    ({"stop": [""]}, "stop", "must not be empty"),
    ({"presence_penalty": 3}, "presence_penalty", "between -2 and 2"),
    ({"frequency_penalty": -2.5}, "frequency_penalty", "between -2 and 2"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed with 'stream'"),
    ({"stream": "yes"}, "stream", "true or false"),
    ({"logprobs": 2}, "logprobs", "chosen token only"),
    ({"best_of": 3}, "best_of", "not supported"),
    ({"min_tokens": 20, "max_tokens": 10}, "min_tokens", "above max_tokens"),
    ({"speculation": "sometimes"}, "speculation", "one of auto, always, off"),
])
def test_completion_bad_parameters(kw, param, text):
    with pytest.raises(P.APIError, match=text) as e:
        _completion(**kw)
    assert e.value.status == 400 and e.value.param == param
    assert e.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("kw, param", [
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
    ({"top_logprobs": 2, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 0}, "top_logprobs"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_chat_bad_parameters(kw, param):
    with pytest.raises(P.APIError) as e:
        _chat(**kw)
    assert e.value.status == 400 and e.value.param == param


def test_prompt_limits_model_and_messages():
    with pytest.raises(P.APIError, match="257 tokens; this engine takes at most 256 input tokens") as e:
        P.parse_completion({"model": "m"}, "x", 257, LIMITS)
    assert e.value.code == "context_length_exceeded" and e.value.status == 400
    with pytest.raises(P.APIError, match="the prompt is empty"):
        P.parse_completion({"model": "m"}, "", 0, LIMITS)
    with pytest.raises(P.APIError) as e:
        P.check_model({"model": "other"}, "m")
    assert e.value.status == 404 and e.value.code == "model_not_found"
    with pytest.raises(P.APIError, match="'model' is required"):
        P.check_model({}, "m")
    assert P.completion_prompts({"prompt": ["a", "b"]}) == ["a", "b"]
    with pytest.raises(P.APIError, match="token-id prompts"):
        P.completion_prompts({"prompt": [1, 2, 3]})
    with pytest.raises(P.APIError, match="'prompt' is required"):
        P.completion_prompts({"prompt": None})
    msgs = P.chat_messages({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                           {"type": "text", "text": "b"}]},
                                         {"role": "assistant", "content": None}]})
    assert msgs == [{"role": "system", "content": "ab"}, {"role": "assistant", "content": ""}]
    for bad in ([], [{"role": "king", "content": "x"}], [{"role": "user", "content": 3}],
                [{"role": "user", "content": [{"type": "image_url"}]}]):
        with pytest.raises(P.APIError):
            P.chat_messages({"messages": bad})


# ---- through a real tritonserver -------------------------------------------------------------

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
CHAT = "What is the capital of France?"


def _generate(build: Path, prompt: str, n: int, chat: bool = False) -> dict:
    r = CliRunner().invoke(cli, ["generate", str(build / "engine"), "--prompt", prompt, "--max-tokens", str(n),
                                 "--json", *(["--chat"] if chat else [])])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


class Stack:
    """tritonserver + the frontend in this process, for one build."""

    def __init__(self, build: Path, tmp: Path) -> None:
        from trtbuild.openai_api.app import Engine, Frontend, Served
        from trtbuild.serve import TritonServer, free_port

        host = "127.0.0.1"
        self.server = TritonServer(build / "triton_repo", host, free_port(host), free_port(host), free_port(host),
                                   log_file=tmp / "triton.log")
        served = Served.read(build)
        self.name = served.name
        self.engine = Engine(served, self.server.grpc_url, f"{host}:{self.server.metrics_port}")
        self.frontend = Frontend(self.engine, host, free_port(host))
        self.url = f"http://{host}:{self.frontend.port}"

    def __enter__(self) -> Stack:
        self.server.start()
        try:
            self.frontend.start()
        except BaseException:
            self.server.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.frontend.stop()
        self.server.stop()

    def client(self):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=300)

    def raw(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict | str]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text


def _scheduler(stack: Stack) -> dict[str, float]:
    with urllib.request.urlopen(f"{stack.url}/metrics", timeout=10) as r:  # the frontend's passthrough
        text = r.read().decode()
    return scheduler_gauges(text)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "medusa", "lookahead"])
def test_openai_client_text_equals_generate(serve_builds, tmp_path, kind):
    from trtbuild.runtime.text import encode_prompts
    from trtbuild.runtime.tokenizer import load_tokenizer

    build = serve_builds[kind]
    tok = load_tokenizer(build / "engine")
    want = {p: _generate(build, p, 24) for p in PROMPTS}
    chat_want = _generate(build, CHAT, 24, chat=True)
    chat_ids = encode_prompts(tok, [CHAT], chat=True)[0]  # what generate --chat sends
    with Stack(build, tmp_path) as s:
        c = s.client()
        assert [m.id for m in c.models.list().data] == [s.name]
        for p in PROMPTS:
            r = c.completions.create(model=s.name, prompt=p, max_tokens=24, temperature=0)
            assert r.choices[0].text == want[p]["text"]
            assert r.choices[0].finish_reason == ("length" if want[p]["finish_reason"] == "length" else "stop")
            assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(tok(p)["input_ids"]),
                                                                         len(want[p]["output_ids"]))
            chunks = [ch.choices[0].text for ch in c.completions.create(model=s.name, prompt=p, max_tokens=24,
                                                                        temperature=0, stream=True)]
            assert len(chunks) > 1 and "".join(chunks) == want[p]["text"]
        r = c.chat.completions.create(model=s.name, messages=[{"role": "user", "content": CHAT}], max_tokens=24,
                                      temperature=0)
        assert r.choices[0].message.content == chat_want["text"] and r.choices[0].message.role == "assistant"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(chat_ids), len(chat_want["output_ids"]))
        stream = c.chat.completions.create(model=s.name, messages=[{"role": "user", "content": CHAT}], max_tokens=24,
                                           temperature=0, stream=True, stream_options={"include_usage": True})
        events = list(stream)
        assert events[0].choices[0].delta.role == "assistant"
        assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == chat_want["text"]
        assert [e.choices[0].finish_reason for e in events if e.choices and e.choices[0].finish_reason] == \
            [r.choices[0].finish_reason]
        assert events[-1].choices == [] and events[-1].usage.completion_tokens == len(chat_want["output_ids"])
        if kind != "plain":  # the extension field: this request's own draft tokens
            r = c.completions.create(model=s.name, prompt=PROMPTS[1], max_tokens=24, temperature=0,
                                     extra_body={"speculation": "always"})
            assert r.model_extra["trtbuild"]["draft_tokens"] > 0
            assert r.choices[0].text == want[PROMPTS[1]]["text"]


@pytest.mark.slow
def test_openai_errors_stops_disconnect_and_concurrency(serve_builds, tmp_path):
    import openai

    build = serve_builds["lookahead"]
    full = _generate(build, PROMPTS[0], 24)["text"]
    with Stack(build, tmp_path) as s:
        c = s.client()
        # stop sequences: the text ends before the first one, and the request ends there
        stop = full.strip().split()[2]
        r = c.completions.create(model=s.name, prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop, "zzz"])
        assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens < 24
        streamed = "".join(ch.choices[0].text for ch in c.completions.create(
            model=s.name, prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=stop, stream=True))
        assert streamed == full[:full.index(stop)]
        r = c.completions.create(model=s.name, prompt=PROMPTS[0], max_tokens=8, temperature=0, echo=True)
        assert r.choices[0].text == PROMPTS[0] + _generate(build, PROMPTS[0], 8)["text"]
        # log probs of the chosen tokens, one per generated token (lookahead: several per response)
        r = c.completions.create(model=s.name, prompt=PROMPTS[0], max_tokens=24, temperature=0, logprobs=0)
        lp = r.choices[0].logprobs
        assert len(lp.token_logprobs) == len(lp.tokens) == r.usage.completion_tokens
        assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
        chunks = list(c.completions.create(model=s.name, prompt=PROMPTS[0], max_tokens=24, temperature=0, logprobs=0,
                                           stream=True))
        assert sum(len(ch.choices[0].logprobs.token_logprobs) for ch in chunks) == r.usage.completion_tokens
        r = c.chat.completions.create(model=s.name, messages=[{"role": "user", "content": CHAT}], max_tokens=12,
                                      temperature=0.7, seed=1, logprobs=True)
        assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
        assert all(t.logprob <= 0 for t in r.choices[0].logprobs.content)
        r = c.completions.create(model=s.name, prompt=PROMPTS, max_tokens=8, temperature=0.8, n=2, seed=5)
        assert sorted(ch.index for ch in r.choices) == [0, 1, 2, 3] and r.usage.completion_tokens <= 32

        # every bad parameter: OpenAI's shape and status, and the server stays ready
        cases = [(dict(model="nope", prompt="x"), openai.NotFoundError, "model"),
                 (dict(model=s.name, prompt="x", temperature=5), openai.BadRequestError, "temperature"),
                 (dict(model=s.name, prompt="x", top_p=2), openai.BadRequestError, "top_p"),
                 (dict(model=s.name, prompt="x", max_tokens=0), openai.BadRequestError, "max_tokens"),
                 (dict(model=s.name, prompt="word " * 300), openai.BadRequestError, "prompt"),
                 (dict(model=s.name, prompt="x", max_tokens=600), openai.BadRequestError, "max_tokens"),
                 (dict(model=s.name, prompt="x", stop=list("abcde")), openai.BadRequestError, "stop"),
                 (dict(model=s.name, prompt="x", logprobs=3), openai.BadRequestError, "logprobs"),
                 (dict(model=s.name, prompt="x", n=2, stream=True), openai.BadRequestError, "n"),
                 (dict(model=s.name, prompt="x", presence_penalty=9), openai.BadRequestError, "presence_penalty"),
                 (dict(model=s.name, prompt="x", frequency_penalty=-9), openai.BadRequestError, "frequency_penalty"),
                 (dict(model=s.name, prompt="x", seed=-3), openai.BadRequestError, "seed")]
        for kw, err, param in cases:
            with pytest.raises(err) as e:
                c.completions.create(**kw)
            body = e.value.body
            assert set(body) == {"message", "type", "param", "code"} and body["param"] == param, body
        for kw, param in [(dict(messages=[]), "messages"), (dict(max_completion_tokens=-1), "max_completion_tokens"),
                          (dict(top_logprobs=3, logprobs=True), "top_logprobs")]:
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(**{"model": s.name, "messages": [{"role": "user", "content": "hi"}], **kw})
            assert e.value.body["param"] == param
        assert s.raw("GET", "/nothing")[0] == 404 and s.raw("GET", "/nothing")[1]["error"]["code"] == "not_found"
        status, body = s.raw("POST", "/v1/completions", b"{not json")
        assert status == 400 and "not valid JSON" in body["error"]["message"]
        assert s.raw("GET", "/health") == (200, {"status": "ok"}) and s.server.ready()

        # a client that leaves mid-stream frees its row
        before = _scheduler(s)
        stream = c.chat.completions.create(model=s.name, messages=[{"role": "user", "content": "Tell me a story."}],
                                           max_tokens=400, temperature=0, stream=True, extra_body={"min_tokens": 400})
        it = iter(stream)
        next(it), next(it), next(it)
        stream.close()
        deadline = time.monotonic() + 30
        while (m := _scheduler(s))["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
            time.sleep(0.2)
        while m["active"] and time.monotonic() < deadline:
            time.sleep(0.2)
            m = _scheduler(s)
        assert m["cancelled"] == before["cancelled"] + 1 and m["active"] == 0
        assert m["tokens_generated"] - before["tokens_generated"] < 300

        # 16 concurrent streaming chats, each equal to generate --chat
        questions = [f"What is {a} plus {b}?" for a, b in zip(range(2, 18), range(5, 21))]
        want = {q: _generate(build, q, 12, chat=True)["text"] for q in questions}
        got, errors = {}, []

        def one(q: str) -> None:
            try:
                got[q] = "".join(e.choices[0].delta.content or "" for e in c.chat.completions.create(
                    model=s.name, messages=[{"role": "user", "content": q}], max_tokens=12, temperature=0,
                    stream=True) if e.choices)
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)

        threads = [threading.Thread(target=one, args=(q,)) for q in questions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not errors and got == want
        assert _scheduler(s)["max_active"] >= 2

        # Triton gone: 503 in OpenAI's shape
        s.server.stop()
        status, body = s.raw("GET", "/health")
        assert status == 503 and body["error"]["code"] == "not_ready"
        time.sleep(1.1)  # past the cached readiness
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model=s.name, prompt="x", max_tokens=4)
        assert e.value.status_code == 503


@pytest.mark.slow
def test_serve_with_openai_port(serve_builds, tmp_path):
    from trtbuild.serve import free_port

    ports = [free_port() for _ in range(4)]
    cmd = [str(Path(sys.executable).parent / "trtbuild"), "serve", str(serve_builds["plain"]), "--http-port",
           str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--openai-port", str(ports[3])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("OpenAI API:"):
                break
        assert lines[-1].startswith(f"OpenAI API: http://127.0.0.1:{ports[3]}/v1  (model: plain)"), lines
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[3]}/v1/models", timeout=10) as r:
            assert json.loads(r.read())["data"][0]["id"] == "plain"
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[3]}/health", timeout=10) as r:
            assert r.status == 200
        for api in ("chat", "completions"):  # bench's OpenAI sender against the real frontend
            out = tmp_path / f"bench-{api}"
            r = CliRunner().invoke(cli, ["bench", "--url", f"127.0.0.1:{ports[3]}", "--protocol", "openai",
                                         "--openai-api", api, "--tokenizer", str(serve_builds["plain"] / "engine"),
                                         "--concurrency", "2", "--num-requests", "4", "--isl", "16", "--osl", "8",
                                         "-o", str(out)])
            assert r.exit_code == 0, r.output
            res = json.loads((out / "results.json").read_text())
            assert res["target"]["model"] == "plain"
            (point,) = res["results"]
            assert point["errors"] == 0 and point["output_token_throughput_per_s"] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0 and proc.stdout.read().strip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
    r = CliRunner().invoke(cli, ["serve", str(serve_builds["plain"]), "--openai-port", "8001"])
    assert r.exit_code == 2 and "also a Triton port" in r.output
    with socket.socket() as busy:  # a busy port is refused before anything starts
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        r = CliRunner().invoke(cli, ["serve", str(serve_builds["plain"]), "--http-port", str(ports[0]),
                                     "--openai-port", port])
        assert r.exit_code == 1 and f"OpenAI port {port} on 127.0.0.1 is busy" in r.output
        r = CliRunner().invoke(cli, ["openai", str(serve_builds["plain"]), "--port", port])
        assert r.exit_code == 1 and f"port {port} on 127.0.0.1 is busy" in r.output
    assert not any(p.name.startswith(f"trtbuild-{proc.pid}-") for p in Path("/dev/shm").iterdir())
