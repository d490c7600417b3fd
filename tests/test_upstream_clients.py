"""Upstream's interface against a real tritonserver serving a SmolLM2 torch engine: the request
tensorrtllm_backend's own end-to-end client sends (every input, with its default values), upstream's
documented curl bodies, return_perf_metrics, seeds, each honoured input as computed by hand, each
refused input refused while the server stays ready, and a config without gpt_model_type refused
with the C++ backend's message.

The client's request is written here from `inflight_batcher_llm/client/end_to_end_grpc_client.py`
@c2e65b8 (prepare_inputs l.64-201 with the argparse defaults l.466-660: temperature 1.0,
beam_width 1, exclude_input_in_output False always sent, streaming off unless -S; the stream API
is used either way, l.308-318; streamed text is appended, l.348-356)."""

from __future__ import annotations

import json
import queue
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from trtbuild.cli import cli
from trtbuild.common.errors import ConfigError
from trtbuild.serve import TritonServer, free_port

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def build(demo_hf, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("upstream") / "plain"
    r = CliRunner().invoke(cli, [str(demo_hf), "-o", str(d), "--max-seq-len", "512", "--max-input-len", "256",
                                 "--max-batch-size", "4", "--no-verify"])
    assert r.exit_code == 0, r.output
    return d


@pytest.fixture(scope="module")
def server(build, tmp_path_factory):
    host = "127.0.0.1"
    log = tmp_path_factory.mktemp("log") / "triton.log"
    with TritonServer(build / "triton_repo", host, free_port(host), free_port(host), free_port(host),
                      log_file=log) as s:
        yield s


def _generate(build: Path, prompt: str, n: int, *extra: str) -> dict:
    r = CliRunner().invoke(cli, ["generate", str(build / "engine"), "--prompt", prompt, "--max-tokens", str(n),
                                 "--json", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _tensor(grpcclient, name, arr):
    from tritonclient.utils import np_to_triton_dtype

    t = grpcclient.InferInput(name, arr.shape, np_to_triton_dtype(arr.dtype))
    t.set_data_from_numpy(arr)
    return t


def e2e_client(url: str, model: str, prompt: str, output_len: int, streaming: bool, extra: dict | None = None,
               outputs: tuple[str, ...] = ("text_output",)) -> tuple[str, list]:
    """end_to_end_grpc_client.py's request and text handling, defaults unchanged."""
    import tritonclient.grpc as grpcclient

    inputs = {"text_input": np.array([[prompt]]).astype(object),
              "max_tokens": np.ones_like([[prompt]]).astype(np.int32) * output_len,
              "stream": np.array([[streaming]], dtype=bool),
              "beam_width": np.array([[1]], dtype=np.int32),
              "temperature": np.array([[1.0]], dtype=np.float32),
              "exclude_input_in_output": np.array([[False]], dtype=bool), **(extra or {})}
    done: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url=url)
    client.start_stream(callback=lambda result, error: done.put(error or result))
    client.async_stream_infer(model, [_tensor(grpcclient, k, v) for k, v in inputs.items()],
                              outputs=[grpcclient.InferRequestedOutput(o) for o in outputs], request_id="")
    client.stop_stream()  # waits for the server to close the stream
    text, results = "", []
    while not done.empty():
        r = done.get()
        results.append(r)
        if isinstance(r, Exception):
            continue
        piece = r.as_numpy("text_output")[0].decode("utf-8")
        text = text + piece if streaming else piece
    return text, results


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
@pytest.mark.parametrize("streaming", [False, True])
def test_upstream_client_defaults_give_generates_text(build, server, model, streaming):
    want = _generate(build, PROMPT, 24)["text"]
    text, results = e2e_client(server.grpc_url, model, PROMPT, 24, streaming)
    assert not [r for r in results if isinstance(r, Exception)], results
    # exclude_input_in_output False (the client always sends it): a non-streamed answer starts with
    # the prompt, a streamed one never carries it (model_instance_state.cc@c2e65b8:1059-1090)
    assert text == (want if streaming else PROMPT + want)
    if streaming:
        assert len(results) > 1


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def test_documented_curl_requests(build, server):
    # README.md@c2e65b8:270,276 and docs/llama.md@c2e65b8:101 (via the repository's default
    # exclude_input_in_output true: the completion only)
    q = "What is machine learning?"
    want = _generate(build, q, 20)["text"]
    base = {"text_input": q, "max_tokens": 20, "bad_words": "", "stop_words": ""}
    for model in ("ensemble", "tensorrt_llm_bls"):
        out = _post(f"http://{server.host}:{server.http_port}/v2/models/{model}/generate", base)
        assert out["model_name"] == model and out["text_output"] == want
    with_ids = _post(f"http://{server.host}:{server.http_port}/v2/models/ensemble/generate",
                     base | {"pad_id": 2, "end_id": 2})
    assert with_ids["text_output"] == _generate(build, q, 20, "--end-id", "2")["text"]


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_perf_metrics_are_all_there_and_ordered(server, model):
    from trtbuild.triton_repo.upstream import PERF_METRICS

    _, results = e2e_client(server.grpc_url, model, PROMPT, 8, True,
                            {"return_perf_metrics": np.array([[True]], dtype=bool)},
                            outputs=("text_output", *PERF_METRICS))
    last = results[-1]
    assert not isinstance(last, Exception), last
    v = {k: last.as_numpy(k).reshape(-1)[0].item() for k in PERF_METRICS}
    assert 0 < v["arrival_time_ns"] <= v["first_scheduled_time_ns"] <= v["first_token_time_ns"] \
        <= v["last_token_time_ns"]
    assert v["kv_cache_alloc_new_blocks"] == v["kv_cache_alloc_total_blocks"] >= 1 and v["kv_cache_reused_blocks"] == 0
    assert v["total_draft_tokens"] == v["total_accepted_draft_tokens"] == 0 and v["acceptance_rate"] == 0.0


def test_bad_words_and_embedding_bias_words_through_the_ensemble(build, server):
    """Upstream's string forms: bad_words and embedding_bias_words/weights go through preprocessing."""
    want = _generate(build, PROMPT, 12)["text"]
    word = want[: len(want) - len(want.lstrip())] + want.split()[0]  # the first word, with its space
    no_first, _ = e2e_client(server.grpc_url, "ensemble", PROMPT, 12, False,
                             {"bad_words": np.array([[word]], dtype=object)})
    assert no_first.startswith(PROMPT) and not no_first[len(PROMPT):].startswith(word)
    assert " Paris" in want  # the greedy answer, so the bias below has something to remove
    biased, _ = e2e_client(server.grpc_url, "ensemble", PROMPT, 12, False,
                           {"embedding_bias_words": np.array([[" Paris"]], dtype=object),
                            "embedding_bias_weights": np.array([[-100.0]], dtype=np.float32)})
    assert biased.startswith(PROMPT) and " Paris" not in biased[len(PROMPT):]


def test_seed_reproduces_sampled_text(server):
    def sampled(seed: int) -> str:
        extra = {"top_k": np.array([[50]], dtype=np.int32), "seed": np.array([[seed]], dtype=np.uint64)}
        return e2e_client(server.grpc_url, "ensemble", PROMPT, 24, False, extra)[0]

    a, b, c = sampled(7), sampled(7), sampled(8)
    assert a == b and a != c


# --- honoured inputs, by hand: the tensorrt_llm model directly, token ids in and out -------------


@pytest.fixture(scope="module")
def reference(build):
    from trtbuild.runtime import Model

    return Model.load(build / "engine")


def _llm(url: str, ids: list[int], n: int, **extra) -> dict:
    import tritonclient.grpc as grpcclient

    inputs = {"input_ids": np.array([ids], dtype=np.int32), "input_lengths": np.array([[len(ids)]], dtype=np.int32),
              "request_output_len": np.array([[n]], dtype=np.int32)}
    for k, v in extra.items():
        if isinstance(v, np.ndarray):
            inputs[k] = v
            continue
        dtype = {bool: bool, int: np.int32, float: np.float32}[type(v)] if k != "seed" else np.uint64
        inputs[k] = np.array([[v]], dtype=dtype)
    client = grpcclient.InferenceServerClient(url=url)
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put(error or result))
    client.async_stream_infer("tensorrt_llm", [_tensor(grpcclient, k, v) for k, v in inputs.items()])
    client.stop_stream()
    r = got.get()
    if isinstance(r, Exception):
        raise r
    n_out = int(r.as_numpy("sequence_length").reshape(-1)[0])
    out = {"ids": r.as_numpy("output_ids").reshape(-1)[:n_out].tolist()}
    for k in ("cum_log_probs", "output_log_probs", "num_input_tokens", "num_output_tokens"):
        if r.as_numpy(k) is not None:
            out[k] = r.as_numpy(k).reshape(-1).tolist()
    return out


def _logits(model, seq: list[int]) -> torch.Tensor:
    from trtbuild.runtime.generate import hidden_states

    return model.logits(hidden_states(model, seq)[-1][None])[0].float()  # [V]


def _by_hand(model, prompt: list[int], n: int, rule) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        out.append(int(rule(_logits(model, prompt + out), prompt, out).argmax()))
    return out


def test_honoured_inputs_change_the_output_as_computed_by_hand(build, server, reference):
    from trtbuild.runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(build / "engine")
    prompt = tok("one two one two one two one", add_special_tokens=True)["input_ids"]
    url = server.grpc_url
    plain = _llm(url, prompt, 6)["ids"]
    assert plain == _by_hand(reference, prompt, 6, lambda x, p, o: x)

    def rep(x, p, o, k=1.8):
        seen = torch.tensor(sorted(set(p + o)))
        v = x[seen]
        x = x.clone()
        x[seen] = torch.where(v > 0, v / k, v * k)
        return x

    def counts(p, o):
        c = torch.zeros(reference.cfg.dims.vocab_size)
        for t in p + o:  # prompt and output tokens count (TensorRT-LLM penaltyKernels.cu, runtime/sampling.py)
            c[t] += 1
        return c

    cases = {"repetition_penalty": (1.8, rep),
             "presence_penalty": (5.0, lambda x, p, o: x - 5.0 * (counts(p, o) > 0)),
             "frequency_penalty": (3.0, lambda x, p, o: x - 3.0 * counts(p, o))}
    for name, (value, rule) in cases.items():
        got = _llm(url, prompt, 6, **{name: value})["ids"]
        assert got == _by_hand(reference, prompt, 6, rule), name
        assert got != plain, f"{name} {value} changed nothing on this prompt"

    # min_tokens: with the greedy first token as the end id, plain stops at once; min_tokens 4 forbids
    # the end id for the first 4 tokens
    end = plain[0]
    assert _llm(url, prompt, 6, end_id=end)["ids"] == []
    forced = _llm(url, prompt, 6, end_id=end, min_tokens=4)["ids"]
    ban = lambda x, p, o: x.index_fill(0, torch.tensor([end]), float("-inf")) if len(o) < 4 else x  # noqa: E731
    want = _by_hand(reference, prompt, 6, ban)
    assert forced == (want[:want.index(end, 4)] if end in want[4:] else want) and len(forced) >= 4

    # bad words (TensorRT-LLM's word-list form [1, 2, L]): the greedy first token banned outright,
    # and (plain[2] after plain[1]) banned where it would follow
    words = np.array([[[plain[0], plain[1], plain[2]], [1, 3, -1]]], dtype=np.int32)
    got = _llm(url, prompt, 6, bad_words_list=words)["ids"]

    def banned(x, p, o):
        x = x.clone()
        x[plain[0]] = float("-inf")
        if (p + o)[-1] == plain[1]:
            x[plain[2]] = float("-inf")
        return x

    assert got == _by_hand(reference, prompt, 6, banned) and plain[0] not in got
    # embedding bias [1, V]: added to the logits
    bias = np.zeros((1, reference.cfg.dims.vocab_size), dtype=np.float32)
    bias[0, plain[0]], bias[0, plain[1]] = -4.0, 2.5
    got = _llm(url, prompt, 6, embedding_bias=bias)["ids"]
    assert got == _by_hand(reference, prompt, 6, lambda x, p, o: x + torch.from_numpy(bias[0])) and got != plain

    # exclude_input_in_output false: the prompt first
    assert _llm(url, prompt, 6, exclude_input_in_output=False)["ids"] == prompt + plain

    # the 1.x token counts: the prompt's length and the generated tokens (the prompt not counted)
    counts_out = _llm(url, prompt, 6, exclude_input_in_output=False, return_num_input_tokens=True,
                      return_num_output_tokens=True)
    assert counts_out["num_input_tokens"] == [len(prompt)] and counts_out["num_output_tokens"] == [6]

    # log probs of a sampled request (top_p 1: over the whole vocabulary): log_softmax of the
    # logits at each chosen token, and their sum
    lp = _llm(url, prompt, 6, return_log_probs=True, runtime_top_p=1.0, seed=3)
    seq, want_lp = list(prompt), []
    for t in lp["ids"]:
        want_lp.append(float(torch.log_softmax(_logits(reference, seq), -1)[t]))
        seq.append(t)
    assert lp["output_log_probs"] == pytest.approx(want_lp, abs=1e-4)
    assert lp["cum_log_probs"][0] == pytest.approx(sum(want_lp), abs=1e-3)


REFUSED = {"beam_width": (np.array([[2]], dtype=np.int32), "beam_width 2"),
           "num_return_sequences": (np.array([[2]], dtype=np.int32), "num_return_sequences 2"),
           "lora_task_id": (np.array([[1]], dtype=np.uint64), "LoRA"),
           "guided_decoding_guide_type": (np.array([["json"]], dtype=object), "guided decoding"),
           "return_context_logits": (np.array([[True]], dtype=bool), "gather_context_logits"),
           "prompt_embedding_table": (np.zeros((1, 1, 576), dtype=np.float16), "prompt tables")}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_inputs_get_their_error_and_the_server_stays_ready(server, name):
    arr, words = REFUSED[name]
    text, results = e2e_client(server.grpc_url, "ensemble", PROMPT, 4, False, {name: arr})
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors and words in str(errors[0]), results
    with urllib.request.urlopen(f"http://{server.host}:{server.http_port}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    text, results = e2e_client(server.grpc_url, "ensemble", PROMPT, 4, False)
    assert text.startswith(PROMPT)


def test_torch_model_refuses_a_config_without_gpt_model_type(build, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(build / "triton_repo", repo)
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    text = cfg.read_text()
    start = text.index('parameters: {\n  key: "gpt_model_type"')
    cfg.write_text(text[:start] + text[text.index("}\n}\n", start) + 4:])
    assert "gpt_model_type" not in cfg.read_text()
    for other in ("ensemble", "preprocessing", "postprocessing", "tensorrt_llm_bls"):
        shutil.rmtree(repo / other)
    # engine path: relative to tensorrt_llm/, so point it at the build's engine again
    cfg.write_text(cfg.read_text().replace('string_value: "../../engine"', f'string_value: "{build / "engine"}"'))
    host = "127.0.0.1"
    log = tmp_path / "triton.log"
    # the server runs with --exit-on-error=false: it never becomes ready, the model's load fails
    with pytest.raises(ConfigError, match="not ready"):
        with TritonServer(repo, host, free_port(host), free_port(host), free_port(host), log_file=log, timeout=45):
            pass
    assert "Cannot find parameter with name: gpt_model_type" in log.read_text()


def test_ask_stats_reads_the_perf_metrics(build, server):
    r = CliRunner().invoke(cli, ["ask", server.grpc_url, PROMPT, "--max-tokens", "8", "--stats"])
    assert r.exit_code == 0, r.output
    text, sep, tail = r.output.partition("\nkv_cache_alloc_new_blocks: ")
    assert sep and text == _generate(build, PROMPT, 8)["text"]
    got = dict(line.split(": ", 1) for line in ("kv_cache_alloc_new_blocks: " + tail).splitlines())
    assert set(got) == {"kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
                        "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
                        "acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens"}
    assert got["arrival_time_ns"] == "+0.0 ms" and got["acceptance_rate"] == "0.000"
