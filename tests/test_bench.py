"""`trtbuild bench`: metrics by hand, and a real tritonserver under load, cross-checked by a
separate minimal client; in-process mode; compare."""

from __future__ import annotations

import json
import queue
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from trtbuild.bench.metrics import RequestRecord, parse_slo, percentile, summarize
from trtbuild.cli import cli
from trtbuild.common.errors import ConfigError


def test_metrics_by_hand():
    a = RequestRecord(0, sent=10.0, input_tokens=5, responses=[10.1, 10.2, 10.4], output_tokens=5)
    b = RequestRecord(1, sent=10.5, input_tokens=7, responses=[10.9, 11.5], output_tokens=3,
                      accepted_draft_tokens=1, draft_tokens=4)
    c = RequestRecord(2, sent=10.6, input_tokens=3, error="boom")
    assert a.ttft == pytest.approx(0.1) and a.latency == pytest.approx(0.4) and a.itl == pytest.approx(0.075)
    s = summarize([a, b, c], slo={"ttft": 200})
    assert s["requests"] == 3 and s["errors"] == 1 and s["duration_s"] == pytest.approx(1.5)
    assert s["time_to_first_token_ms"]["max"] == pytest.approx(400) and s["time_to_first_token_ms"]["p50"] == pytest.approx(250)
    assert s["output_token_throughput_per_s"] == pytest.approx(8 / 1.5)
    assert s["request_throughput_per_s"] == pytest.approx(2 / 1.5) and s["goodput_per_s"] == pytest.approx(1 / 1.5)
    assert s["acceptance_rate"] == pytest.approx(0.25) and s["acceptance_length"] == pytest.approx(8 / (5 + 2))
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([7], 99) == 7
    assert parse_slo("ttft:500, itl:50") == {"ttft": 500.0, "itl": 50.0}
    for bad, msg in (("foo:1", "unknown metric 'foo'"), ("ttft:x", "needs a number"), ("itl:0", "must be > 0")):
        with pytest.raises(ConfigError, match=msg):
            parse_slo(bad)


@pytest.mark.slow
def test_bench_against_a_real_server(demo_hf, tmp_path):
    from trtbuild.runtime.tokenizer import load_tokenizer
    from trtbuild.serve import TritonServer, free_port

    r = CliRunner().invoke(cli, [str(demo_hf), "-o", str(tmp_path / "b"), "--max-seq-len", "512",
                                 "--max-batch-size", "8"])
    assert r.exit_code == 0, r.output
    engine = tmp_path / "b" / "engine"
    tok = load_tokenizer(engine)
    with TritonServer(tmp_path / "b" / "triton_repo", http_port=free_port(), grpc_port=free_port(),
                      metrics_port=free_port()) as s:
        out = tmp_path / "run"
        r = CliRunner().invoke(cli, ["bench", "--url", s.grpc_url, "--concurrency", "1,3", "--num-requests", "6",
                                     "--isl", "48:8", "--osl", "24", "--tokenizer", str(engine),
                                     "--slo", "ttft:5000", "-o", str(out)])
        assert r.exit_code == 0, r.output
        report = json.loads((out / "results.json").read_text())
        assert [x["load"] for x in report["results"]] == [{"concurrency": 1}, {"concurrency": 3}]
        lines = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
        assert len(lines) == 12 and all(x["error"] is None for x in lines)
        for x in lines:
            assert x["output_tokens"] == len(tok(x["text"], add_special_tokens=False)["input_ids"]) > 1
            assert x["ttft"] <= x["latency"]
            assert x["ttft"] + x["itl"] * (x["output_tokens"] - 1) == pytest.approx(x["latency"], rel=0.05)
        for res in report["results"]:
            assert res["requests"] == 6 and res["errors"] == 0 and res["goodput_per_s"] > 0
        assert (out / "results.csv").read_text().count("\n") == 3
        for png in ("ttft.png", "itl.png", "throughput_vs_concurrency.png", "latency_vs_throughput.png"):
            assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "concurrency 3" in r.output and "TTFT p50" in r.output
        assert report["spec"]["max_seq_len"] == 512  # the build's spec.yaml, found next to --tokenizer

        # an independent minimal client (raw tritonclient stream, its own clock) against bench's own
        # measuring code, alternating request by request on the same prompts so machine drift cancels
        import tritonclient.grpc as grpcclient

        from trtbuild.bench.load import run_load, sender, synthetic_prompts

        def minimal(p) -> tuple[float, float]:
            t0 = time.monotonic()  # from before the connection, as bench's record starts
            q: queue.Queue = queue.Queue()
            c = grpcclient.InferenceServerClient(s.grpc_url)
            c.start_stream(callback=lambda result, error: q.put((time.monotonic(), result, error)))
            ins = []
            for name, arr, dt in (("text_input", np.array([[p.text.encode()]], dtype=object), "BYTES"),
                                  ("max_tokens", np.array([[p.max_tokens]], np.int32), "INT32"),
                                  ("stream", np.array([[True]]), "BOOL"),
                                  # the same request as bench's (it asks for the perf metrics it reads)
                                  ("return_perf_metrics", np.array([[True]]), "BOOL")):
                t = grpcclient.InferInput(name, list(arr.shape), dt)
                t.set_data_from_numpy(arr)
                ins.append(t)
            c.async_stream_infer("ensemble", ins, enable_empty_final_response=True)
            times = []
            while True:
                at, result, error = q.get(timeout=120)
                assert error is None
                text = result.as_numpy("text_output")
                if text is not None and text.reshape(-1)[0]:
                    times.append(at)
                final = result.get_response().parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    break
            c.stop_stream()
            c.close()
            return times[0] - t0, times[-1] - t0

        send = sender(s.grpc_url, "ensemble")
        ours, theirs = [], []
        for i, p in enumerate(synthetic_prompts(tok, 12, (48, 8), (24, 0), 0)):
            if i % 2:  # who goes first alternates too: a request right after another is not the same
                theirs.append(minimal(p))
            rec = run_load(send, [p], tok, concurrency=1)[0]
            ours.append((rec.ttft, rec.latency))
            if not i % 2:
                theirs.append(minimal(p))
        # latencies (~0.6-0.7 s here since issue 20's kernel) swung request by request by up to 0.18 s
        # either way, and one CI run's medians came out 11 % apart (0.670 vs 0.604 s) with no bias
        # in either direction over reruns: 10 % + 50 ms; a record ending at the wrong event is off by
        # far more (the first response comes at ~0.1 s)
        assert statistics.median(x[1] for x in ours) == pytest.approx(statistics.median(x[1] for x in theirs),
                                                                      rel=0.10, abs=0.05)
        # TTFT (~0.25 s here) swung by 10-17 % between the two clients in either direction from run to
        # run on this 2-core machine (CI runs of this change): 15 % + 20 ms still catches a record that
        # starts or stops at the wrong event (TTFT taken at the last response would be ~4x); the
        # latencies are held to 10 % above
        assert statistics.median(x[0] for x in ours) == pytest.approx(statistics.median(x[0] for x in theirs),
                                                                      rel=0.15, abs=0.02)

    # sweep: each build served in turn on the same load, one comparison
    r = CliRunner().invoke(cli, [str(demo_hf), "-o", str(tmp_path / "la"), "--max-seq-len", "512",
                                 "--max-batch-size", "8", "--lookahead", "1,5,2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["bench", "sweep", str(tmp_path / "b"), str(tmp_path / "la"), "--concurrency", "1",
                                 "--num-requests", "2", "--isl", "32", "--osl", "12", "--warmup", "0",
                                 "-o", str(tmp_path / "sweep")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "sweep" / "comparison.txt").read_text()
    assert "sweep/b " in text and "sweep/la " in text and "(1.00x)" in text
    for name in ("b", "la"):
        res = json.loads((tmp_path / "sweep" / name / "results.json").read_text())
        assert res["results"][0]["requests"] == 2 and res["results"][0]["errors"] == 0
        assert res["spec"]["lookahead"] == ("1,5,2" if name == "la" else None)

    inproc = tmp_path / "inproc"
    r = CliRunner().invoke(cli, ["bench", "--in-process", str(engine), "--concurrency", "1", "--num-requests", "3",
                                 "--isl", "48", "--osl", "16", "-o", str(inproc)])
    assert r.exit_code == 0, r.output
    cmp = CliRunner().invoke(cli, ["bench", "compare", str(out), str(inproc)])
    assert cmp.exit_code == 0 and "(1.00x)" in cmp.output and str(inproc)[-20:] in cmp.output


def test_bench_bad_arguments(tmp_path):
    r = CliRunner().invoke(cli, ["bench"])
    assert r.exit_code == 2 and "give either --url HOST:PORT or --in-process ENGINE_DIR" in r.output
    r = CliRunner().invoke(cli, ["bench", "--url", "127.0.0.1:1"])
    assert r.exit_code == 2 and "--url needs --tokenizer DIR" in r.output
    r = CliRunner().invoke(cli, ["bench", "compare", str(tmp_path)])
    assert r.exit_code == 1 and "no readable results.json" in r.output


def test_run_load_modes_with_a_stand_in_sender():
    """The load shapes themselves (the real server is exercised above): counts, duration, rate."""
    from trtbuild.bench.load import Prompt, run_load

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    in_flight, peak = [0], [0]

    def send(p, rec):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        for w in range(3):
            time.sleep(0.01)
            rec.responses.append(time.monotonic())
            rec.text += f"w{w} "
        in_flight[0] -= 1

    prompts = [Prompt("a b", 2, 3), Prompt("c", 1, 3)]
    recs = run_load(send, prompts * 3, Tok(), concurrency=2)
    assert len(recs) == 6 and all(r.output_tokens == 3 and r.error is None for r in recs) and peak[0] == 2
    t0 = time.monotonic()
    recs = run_load(send, prompts, Tok(), concurrency=2, duration=0.3)
    assert time.monotonic() - t0 < 1.0 and len(recs) >= 6 and [r.input_tokens for r in recs[:3]] == [2, 1, 2]
    t0 = time.monotonic()
    recs = run_load(send, prompts * 4, Tok(), concurrency=None, rate=20.0, seed=1)  # ~8 / 20 s of arrivals
    assert len(recs) == 8 and all(r.output_tokens == 3 for r in recs) and time.monotonic() - t0 > 0.1
