"""`bench --protocol openai`: the SSE parser, and the OpenAI sender against a scripted stdlib HTTP
server standing in for the frontend (the client in isolation: the real frontend is exercised end to
end with the serve tests) — chunks, usage, draft counters, error events and bodies, kept-alive
connections, unreachable and non-OpenAI servers; the CLI's option checks and one run through it."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from trtbuild.bench.load import OpenAISender, Prompt, check_server, openai_models, run_load, sender, sse_events
from trtbuild.cli import cli
from trtbuild.common.errors import ConfigError, TrtbuildError
from trtbuild.serve import free_port

PIECES = ["Hello", " wor", "ld"]
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


class Tok:
    """Whitespace tokens: "Hello world" is 2, so the usage chunk's 5 tells the two counts apart."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers as the frontend does, scripted by the prompt's first word: ok, nousage, errorevent,
    http400, http500, close (answers, then closes the connection without saying so)."""

    protocol_version = "HTTP/1.1"  # keep-alive, chunked streams
    timeout = 10

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, obj, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models" and self.server.models is not None:
            return self._json(200, {"object": "list", "data": [{"id": m, "object": "model"}
                                                               for m in self.server.models]})
        self._json(404, {"error": "Not Found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path == "/v1/chat/completions"
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        sent: list[float] = []
        self.server.log.append({"path": self.path, "body": body, "port": self.client_address[1], "sent": sent})
        script = prompt.split()[0]
        if script == "http400":
            return self._json(400, {"error": {"message": "'max_tokens' must be at least 1", "type":
                                              "invalid_request_error", "param": "max_tokens", "code": None}})
        if script == "http500":
            return self._json(500, None, raw=b"Internal Server Error")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(obj, raw: bytes | None = None) -> None:
            data = raw if raw is not None else b"data: " + json.dumps(obj).encode() + b"\n\n"
            sent.append(time.monotonic())
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def choice(text, finish=None):
            return {"index": 0, "delta": {"content": text} if text is not None else {}, "finish_reason": finish} \
                if chat else {"index": 0, "text": text or "", "finish_reason": finish}

        if chat:
            event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        else:
            event({"choices": [choice("")]})  # an empty text: not the first token
        time.sleep(0.02)  # the first text comes strictly later than the empty chunk
        event(None, raw=b": a comment line\n\n")
        for i, piece in enumerate(PIECES):
            event({"choices": [choice(piece)]})
            if script == "errorevent":
                event({"error": {"message": "the engine  failed", "type": "server_error"}})
                break
        else:
            event({"choices": [choice(None, "length")]})
            if script != "nousage":
                event({"choices": [], "usage": USAGE, "trtbuild": {"draft_tokens": 4, "accepted_draft_tokens": 3,
                                                                   "acceptance_rate": 0.75}})
        event(None, raw=b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        if script == "close":
            self.close_connection = True  # no "Connection: close": the client finds out when it reuses it


@pytest.fixture
def server():
    s = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    s.daemon_threads = True
    s.log, s.models = [], ["demo", "other"]
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s
    s.shutdown()
    s.server_close()


def _url(s) -> str:
    return f"127.0.0.1:{s.server_address[1]}"


def test_sse_events_parse_data_lines_up_to_done():
    lines = [b": keep-alive\n", b"\n", b"event: message\n", b'data: {"a": 1}\r\n', b"\r\n",
             b'data: {"b":\n', b"data: 2}\n", b"\n", b"id: 7\n", b"data:[DONE]\n", b"\n", b'data: {"after": 0}\n\n']
    assert list(sse_events(lines)) == [{"a": 1}, {"b": 2}]  # multi-line data joined; nothing after [DONE]
    assert list(sse_events([b'data: {"last": true}\n', b"\n", b"data: [DONE]"])) == [{"last": True}]  # no blank line
    with pytest.raises(TrtbuildError, match=r"ended without data: \[DONE\]"):
        list(sse_events([b'data: {"a": 1}\n', b"\n"]))
    with pytest.raises(TrtbuildError, match="not JSON: 'oops'"):
        list(sse_events([b"data: oops\n", b"\n"]))
    with pytest.raises(TrtbuildError, match="not a JSON object"):
        list(sse_events([b"data: [1, 2]\n", b"\n"]))


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_a_stream_is_recorded_from_its_chunks_and_usage(server, api):
    send = sender(_url(server), "demo", "openai", api)
    try:
        recs = run_load(send, [Prompt("ok go", 2, 9), Prompt("ok again", 2, 9)], Tok(), concurrency=1)
    finally:
        send.close()
    assert [r.error for r in recs] == [None, None]
    for rec, log in zip(recs, server.log):
        assert rec.text == "Hello world" and len(rec.responses) == 3  # the chunks with text, nothing else
        assert rec.output_tokens == 5 and rec.input_tokens == 7  # the usage chunk's counts
        assert (rec.draft_tokens, rec.accepted_draft_tokens) == (4, 3)  # the trtbuild extension
        # TTFT at the first chunk with text: not before the server wrote it (the empty chunk came earlier)
        assert rec.responses[0] >= log["sent"][2] > log["sent"][0] and rec.responses[-1] >= log["sent"][4]
    first, second = server.log
    assert first["path"] == ("/v1/chat/completions" if api == "chat" else "/v1/completions")
    want = {"model": "demo", "max_tokens": 9, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    want.update({"messages": [{"role": "user", "content": "ok go"}]} if api == "chat" else {"prompt": "ok go"})
    assert first["body"] == want  # no min_tokens / ignore_eos: the output ends where the ensemble's would
    assert first["port"] == second["port"]  # one kept-alive connection for the worker's requests


def test_without_usage_the_tokenizer_counts_the_text(server):
    send = sender(_url(server), "demo", "openai", "completions")
    rec = run_load(send, [Prompt("nousage", 1, 4)], Tok(), concurrency=1)[0]
    send.close()
    assert rec.error is None and rec.text == "Hello world" and rec.output_tokens == 2 and rec.input_tokens == 1


def test_error_events_and_bodies_become_the_records_errors(server):
    send = OpenAISender(_url(server), "demo", "chat")
    prompts = [Prompt(t, 1, 4) for t in ("errorevent", "http400", "http500", "ok")]
    recs = run_load(send, prompts, Tok(), concurrency=1)
    send.close()
    assert [r.error for r in recs] == ["the engine failed", "HTTP 400: 'max_tokens' must be at least 1",
                                       "HTTP 500: Internal Server Error", None]
    assert recs[0].text == "Hello" and recs[3].text == "Hello world"
    assert len({x["port"] for x in server.log}) == 1  # error answers leave the connection usable


def test_a_connection_the_server_closed_is_replaced(server):
    send = OpenAISender(_url(server), "demo", "completions")
    recs = run_load(send, [Prompt("close", 1, 4), Prompt("ok", 1, 4), Prompt("ok", 1, 4)], Tok(), concurrency=1)
    send.close()
    assert [r.error for r in recs] == [None, None, None]
    ports = [x["port"] for x in server.log]
    assert len(ports) == 3 and ports[0] != ports[1] == ports[2]


def test_concurrent_workers_hold_one_connection_each_at_most(server):
    send = OpenAISender(_url(server), "demo", "chat")
    recs = run_load(send, [Prompt("ok", 1, 4)] * 8, Tok(), concurrency=2)
    send.close()
    assert [r.error for r in recs] == [None] * 8 and len(server.log) == 8
    assert len({x["port"] for x in server.log}) <= 2


def test_unreachable_and_non_openai_servers_fail_in_one_line(server):
    url = f"127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    recs = run_load(sender(url, "demo", "openai"), [Prompt("ok", 1, 4)] * 2, Tok(), concurrency=1)
    assert [r.error for r in recs] == [f"cannot connect to {url}: Connection refused"] * 2
    with pytest.raises(ConfigError, match=f"^cannot connect to {url}: Connection refused$"):
        check_server(url, None, "openai")

    assert check_server(_url(server), None, "openai") == "demo"  # the first model listed
    assert check_server(_url(server), "other", "openai") == "other"
    with pytest.raises(TrtbuildError, match=r"has no model 'ensemble' \(GET /v1/models lists: demo, other\)"):
        check_server(_url(server), "ensemble", "openai")
    server.models = []
    with pytest.raises(TrtbuildError, match="lists no models"):
        openai_models(_url(server))
    server.models = None  # e.g. Triton's own HTTP port
    with pytest.raises(TrtbuildError, match="is not an OpenAI-compatible server: GET /v1/models answered HTTP 404 "
                                            r"\(Not Found\)"):
        check_server(_url(server), None, "openai")

    with socket.socket() as raw:  # answers, but not HTTP (as a gRPC port would not)
        raw.bind(("127.0.0.1", 0))
        raw.listen()

        def garbage():
            c, _ = raw.accept()
            c.recv(1024)
            c.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00")
            c.close()

        threading.Thread(target=garbage, daemon=True).start()
        with pytest.raises(TrtbuildError, match=r"does not answer HTTP \(BadStatusLine\)"):
            openai_models(f"127.0.0.1:{raw.getsockname()[1]}")


def test_cli_option_checks():
    r = CliRunner().invoke(cli, ["bench", "--url", "127.0.0.1:1", "--tokenizer", ".", "--openai-api", "completions"])
    assert r.exit_code == 2 and "--openai-api goes with --protocol openai" in r.output
    r = CliRunner().invoke(cli, ["bench", "--url", "127.0.0.1:1", "--protocol", "grpc", "--openai-api", "chat"])
    assert r.exit_code == 2 and "--openai-api goes with --protocol openai" in r.output
    r = CliRunner().invoke(cli, ["bench", "--in-process", ".", "--protocol", "openai"])
    assert r.exit_code == 2 and "--protocol openai goes with --url" in r.output
    r = CliRunner().invoke(cli, ["bench", "--url", "127.0.0.1:1", "--protocol", "openai", "--openai-api", "embed"])
    assert r.exit_code == 2 and "'embed' is not one of 'chat', 'completions'" in r.output


def _word_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: 4 + i for i, w in enumerate(
        ("ok", "go", "Hello", "world", "wor", "ld"))}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(path)
    return path


def test_bench_through_the_cli_names_the_servers_model(server, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text_input": "ok go", "max_tokens": 6}) + "\n" for _ in range(3)))
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["bench", "--url", _url(server), "--protocol", "openai", "--openai-api",
                                 "completions", "--tokenizer", str(_word_tokenizer(tmp_path / "tok")), "--dataset",
                                 str(data), "--concurrency", "1,2", "--warmup", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "results.json").read_text())
    assert report["target"] == {"url": _url(server), "protocol": "openai", "model": "demo", "metrics_url": None,
                                "openai_api": "completions"}
    assert [(x["requests"], x["errors"]) for x in report["results"]] == [(3, 0), (3, 0)]
    assert report["results"][0]["output_sequence_length"]["avg"] == 5  # the server's usage count
    assert all(x["body"]["model"] == "demo" and x["body"]["max_tokens"] == 6 for x in server.log)
    assert len(server.log) == 7  # the warm-up request and two load points of three
