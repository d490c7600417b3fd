"""`bench`'s speculation columns (issue 16): the scheduler counters read from a real HTTP metrics
endpoint (http.server serving Prometheus text) before and after each load point, their absence
("-", never a failure), the in-process scheduler's Stats, the comparison's new columns and the
sweep's crossover against the plain build; a tiny torch-backend build for the in-process run and,
in the slow test, a real tritonserver."""

from __future__ import annotations

import csv
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import word_level_model
from trtbuild.bench import bench
from trtbuild.bench.compare import compare, crossover
from trtbuild.bench.load import Prompt
from trtbuild.bench.speculation import COUNTERS, metrics_counters, parse_metrics, speculation_fields
from trtbuild.cli import cli

# what Triton's metrics page looks like around the trtbuild gauges (a core metric, another model's series)
PAGE = """# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{{model="ensemble",version="1"}} 7
# HELP trtbuild_scheduler_steps scheduler steps
# TYPE trtbuild_scheduler_steps gauge
{gauges}
trtbuild_scheduler_steps{{model="other"}} 99999
"""


class Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


class Metrics:
    """A real HTTP server on a free local port serving `page()` at /metrics (404 elsewhere)."""

    def __init__(self, page):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                body = outer.page().encode() if self.path == "/metrics" else b"not found"
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.page = page
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class Server:
    """Scheduler totals that requests move; rendered as the torch model's gauges."""

    def __init__(self, fields=COUNTERS):
        self.fields = fields
        self.totals = dict.fromkeys(COUNTERS, 0.0)
        self.lock = threading.Lock()
        self.sent = 0

    def page(self) -> str:
        with self.lock:
            gauges = "\n".join(f'trtbuild_scheduler_{k}{{model="tensorrt_llm"}} {v!r}'
                               for k, v in self.totals.items() if k in self.fields)
        return PAGE.format(gauges=gauges)

    def send(self, p, rec):
        """A request of 4 steps: the first 4 requests draft 6 tokens (3 accepted, 3.6 expected) on 4 of
        their 8 row-steps; later ones draft 2 (both accepted, 1 expected) on 1 of 8."""
        with self.lock:
            first = self.sent < 4
            self.sent += 1
            for k, v in zip(COUNTERS, (4, 6, 3, 3.6, 8, 4) if first else (4, 2, 2, 1.0, 8, 1)):
                self.totals[k] += v
        for w in range(3):
            time.sleep(0.005)
            rec.responses.append(time.monotonic())
            rec.text += f"w{w} "


def test_parse_metrics_takes_the_trtbuild_gauges_of_the_model():
    text = PAGE.format(gauges='trtbuild_scheduler_steps{model="tensorrt_llm"} 12\n'
                              'trtbuild_scheduler_expected{model="tensorrt_llm",note="a \\"}\\" b"} 2.5e1\n'
                              'trtbuild_scheduler_drafted 3 1700000000000\n'  # no labels, with a timestamp
                              'trtbuild_scheduler_accepted{model="tensorrt_llm"} not-a-number')
    assert parse_metrics(text) == {"steps": 12.0, "expected": 25.0, "drafted": 3.0}
    assert parse_metrics("") == {} and parse_metrics("# only comments\n\n") == {}


def test_bench_reports_the_server_counters_of_each_load_point(tmp_path):
    server = Server()
    notes = []
    with Metrics(server.page) as m:
        prompts = [Prompt("a b", 2, 3)] * 4
        out = tmp_path / "run"
        lines = []
        report = bench(server.send, prompts, Tok(), [{"concurrency": 1}, {"concurrency": 2}], out_dir=out,
                       echo=lines.append, counters=metrics_counters(m.url, notes.append, settle=0))
    assert notes == []
    first, second = report["results"]
    # 4 requests per point: Δsteps 16; point 1 Δdrafted 24, Δaccepted 12, Δexpected 14.4, Δrow_steps 32 (16
    # speculating); point 2 the later requests only (a difference, not the running totals)
    assert first["draft_tokens_per_step"] == pytest.approx(24 / 16)
    assert first["draft_acceptance_rate"] == pytest.approx(12 / 24)
    assert first["estimated_acceptance_rate"] == pytest.approx(14.4 / 24)
    assert first["speculating_row_share"] == pytest.approx(16 / 32)
    assert second["draft_tokens_per_step"] == pytest.approx(8 / 16)
    assert second["draft_acceptance_rate"] == pytest.approx(1.0)
    assert second["estimated_acceptance_rate"] == pytest.approx(4 / 8)
    assert second["speculating_row_share"] == pytest.approx(4 / 32)
    assert second["scheduler_delta"] == {"steps": 16, "drafted": 8, "accepted": 8, "expected": pytest.approx(4),
                                         "row_steps": 32, "speculating_row_steps": 4}

    saved = json.loads((out / "results.json").read_text())["results"]
    assert saved[1]["draft_acceptance_rate"] == pytest.approx(1.0)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["load"] for r in rows] == ["concurrency 1", "concurrency 2"]
    assert float(rows[0]["draft_tokens_per_step"]) == pytest.approx(1.5)
    assert float(rows[1]["speculating_row_share"]) == pytest.approx(0.125)
    assert rows[0]["request_latency_ms_p99"]  # the existing columns are kept
    head, _, row1, row2 = lines[0].splitlines()
    assert head.endswith("accept draft/step acc rate acc est spec rows")
    assert row1.split()[-4:] == ["1.50", "0.50", "0.60", "50%"]
    assert row2.split()[-4:] == ["0.50", "1.00", "0.50", "12%"]

    # bench compare: the new columns next to the old ones, the values without ratios
    other = tmp_path / "other"
    bench(Server().send, prompts, Tok(), [{"concurrency": 1}], out_dir=other, echo=lambda s: None)
    text = compare([out, other])
    assert "draft/step" in text and "spec rows" in text and "out tok/s" in text
    ours = next(x for x in text.splitlines() if x.strip().startswith(str(out)[-28:].strip()))
    assert ours.split()[-4:] == ["1.50", "0.50", "0.60", "50%"]
    theirs = [x for x in text.splitlines() if str(other)[-20:] in x][0]
    assert theirs.split()[-4:] == ["-", "-", "-", "-"]  # no counter source: "-"


@pytest.mark.parametrize("fields, note", [
    ((), "has no trtbuild_scheduler_* gauges"),
    (("steps",), "lacks trtbuild_scheduler_drafted, "),  # the exporter from before issue 16
])
def test_missing_gauges_are_dashes_not_failures(tmp_path, fields, note):
    server = Server(fields)
    notes, lines = [], []
    with Metrics(server.page) as m:
        report = bench(server.send, [Prompt("a", 1, 3)] * 4, Tok(), [{"concurrency": 1}, {"concurrency": 2}],
                       echo=lines.append, counters=metrics_counters(m.url, notes.append, settle=0))
    assert len(notes) == 1 and note in notes[0] and notes[0].endswith("the speculation columns are -")
    for r in report["results"]:
        assert r["errors"] == 0
        assert [r[f] for f in ("draft_tokens_per_step", "draft_acceptance_rate", "estimated_acceptance_rate",
                               "speculating_row_share")] == [None] * 4
        assert r["scheduler_delta"] == ({"steps": 16} if fields else None)
    assert all(x.split()[-4:] == ["-"] * 4 for x in lines[0].splitlines()[2:])


def test_an_unreachable_metrics_endpoint_is_a_note(tmp_path):
    from trtbuild.serve import free_port

    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    notes = []
    report = bench(Server().send, [Prompt("a", 1, 3)] * 2, Tok(), [{"concurrency": 1}], echo=lambda s: None,
                   counters=metrics_counters(url, notes.append, settle=0))
    assert notes == [f"cannot read the metrics at http://{url}/metrics (Connection refused): "
                     "the speculation columns are -"]
    assert report["results"][0]["draft_tokens_per_step"] is None and report["results"][0]["errors"] == 0
    # a page that is not there (404) is a note too
    with Metrics(lambda: "") as m:
        notes.clear()
        bench(Server().send, [Prompt("a", 1, 3)], Tok(), [{"concurrency": 1}], echo=lambda s: None,
              counters=metrics_counters(f"http://{m.url}/nope", notes.append, settle=0))
    assert len(notes) == 1 and "Not Found" in notes[0]


def test_speculation_fields_edge_cases():
    before = {"steps": 10, "drafted": 5, "accepted": 2, "expected": 2.0, "row_steps": 20, "speculating_row_steps": 5}
    same = speculation_fields(before, before)  # nothing ran: no step, no ratio
    assert same["draft_tokens_per_step"] is None and same["scheduler_delta"]["steps"] == 0
    plain = speculation_fields(before, {**before, "steps": 14, "row_steps": 30})
    assert plain["draft_tokens_per_step"] == 0.0 and plain["draft_acceptance_rate"] is None
    assert plain["speculating_row_share"] == 0.0
    restarted = speculation_fields(before, {k: 0 for k in before})  # totals went back: not a difference
    assert restarted["draft_tokens_per_step"] is None and restarted["scheduler_delta"] is None
    assert speculation_fields(None, before)["scheduler_delta"] is None


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """A tiny plain torch-backend build with a word-level tokenizer, and the same with lookahead."""
    d = tmp_path_factory.mktemp("bench-spec")
    word_level_model(d / "hf")
    out = {}
    # explicit modes: plain decoding, and lookahead drafting every step (not the governor's choice)
    for name, extra in (("plain", ["--speculation", "off"]),
                        ("la", ["--lookahead", "2,2,2", "--speculation", "always"])):
        r = CliRunner().invoke(cli, ["build", str(d / "hf"), "-o", str(d / name), "--backend", "torch", "--gpu", "cpu",
                                     "--max-input-len", "32", "--max-seq-len", "64", "--max-batch-size", "4",
                                     "--no-verify", *extra])
        assert r.exit_code == 0, r.output
        out[name] = d / name
    return out


def test_in_process_reads_the_schedulers_stats(builds, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["bench", "--in-process", str(builds["plain"] / "engine"), "--isl", "8", "--osl", "4",
                                 "--num-requests", "2", "--warmup", "0", "--concurrency", "1,2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())["results"]
    for x in res:
        assert x["scheduler_delta"]["steps"] >= 2  # 2 requests (the random model may end one at once on </s>)
        assert x["draft_tokens_per_step"] == 0.0 and x["draft_acceptance_rate"] is None  # plain: no drafts
    assert "draft/step" in r.output and "no metrics endpoint" not in r.output
    out = tmp_path / "la"  # lookahead drafting every step: the scheduler's own totals
    r = CliRunner().invoke(cli, ["bench", "--in-process", str(builds["la"] / "engine"), "--isl", "8", "--osl", "12",
                                 "--num-requests", "2", "--warmup", "0", "--concurrency", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    (x,) = json.loads((out / "results.json").read_text())["results"]
    d = x["scheduler_delta"]
    assert d["drafted"] > 0 and x["draft_tokens_per_step"] == pytest.approx(d["drafted"] / d["steps"])
    assert x["draft_acceptance_rate"] == pytest.approx(d["accepted"] / d["drafted"]) and d["accepted"] <= d["drafted"]
    assert x["speculating_row_share"] == pytest.approx(d["speculating_row_steps"] / d["row_steps"])
    assert 0 < d["speculating_row_steps"] <= d["row_steps"]
    r = CliRunner().invoke(cli, ["bench", "--in-process", str(builds["plain"] / "engine"), "--metrics-url", "x:1"])
    assert r.exit_code == 2 and "--metrics-url goes with --url" in r.output


def test_a_url_off_tritons_default_ports_says_how_to_get_the_counters():
    from trtbuild.bench.run import Target

    assert Target(url="10.0.0.1:8001").metrics() == "10.0.0.1:8002"
    assert Target(url="[::1]:8000").metrics() == "[::1]:8002"
    assert Target(url="h:9001").metrics() is None and Target(url="h:9001", metrics_url="h:9").metrics() == "h:9"
    assert Target(engine_dir=Path("e")).metrics() is None


def _results(d: Path, tps: list[float | None], points=(1, 4, 16)) -> Path:
    d.mkdir(parents=True)
    rows = [{"load": {"concurrency": c}, "requests": 1, "errors": 0 if t else 1,
             **({"output_token_throughput_per_s": t} if t else {})} for c, t in zip(points, tps)]
    (d / "results.json").write_text(json.dumps({"results": rows}))
    return d


def test_crossover_names_the_concurrencies_where_speculation_loses(builds, tmp_path):
    from trtbuild.bench.sweep import is_plain

    assert is_plain(builds["plain"] / "engine") is True and is_plain(builds["la"] / "engine") is False
    assert is_plain(tmp_path) is None  # no config.json: unknown, not a crash
    dirs = [_results(tmp_path / "medusa", [110.0, 90.0, 63.0]),
            _results(tmp_path / "plain", [100.0, 100.0, 100.0]),
            _results(tmp_path / "la", [165.0, 100.0, 120.0]), _results(tmp_path / "half", [None, 50.0, 200.0]),
            _results(tmp_path / "odd", [1.0, 1.0, 1.0])]
    names = ["medusa", "plain", "la", "half", "odd"]
    lines = crossover(names, dirs, [False, True, False, False, None])
    assert lines == ["crossover (output tok/s against the plain build plain):",
                     "medusa: slower than plain at concurrency 4 (0.90x), 16 (0.63x)",
                     "la: never slower than plain over concurrency 1, 4, 16",  # 1.00x is not slower
                     "half: slower than plain at concurrency 4 (0.50x)"]
    assert crossover(names[:1], dirs[:1], [False]) == ["medusa: no plain build among the runs to compare with"]
    assert crossover(names[1:2], dirs[1:2], [True]) == []


@pytest.mark.slow
def test_sweep_scrapes_each_servers_metrics_and_states_the_crossover(builds, tmp_path):
    """A real tritonserver per build: the gauges on its metrics port give each point's scheduler steps;
    comparison.txt and stdout carry the crossover line of the lookahead build."""
    out = tmp_path / "sweep"
    r = CliRunner().invoke(cli, ["bench", "sweep", str(builds["plain"]), str(builds["la"]), "--concurrency", "1,2",
                                 "--num-requests", "2", "--isl", "8", "--osl", "6", "--warmup", "0", "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = (out / "comparison.txt").read_text()
    line = next(x for x in text.splitlines() if x.startswith("la: "))
    assert line.startswith(("la: slower than plain at concurrency ",
                            "la: never slower than plain over concurrency 1, 2"))
    assert line in r.output and "crossover (output tok/s against the plain build plain):" in text
    for name in ("plain", "la"):
        for x in json.loads((out / name / "results.json").read_text())["results"]:
            assert x["scheduler_delta"]["steps"] >= 2, (name, x)  # read from the server's metrics port
    plain = json.loads((out / "plain" / "results.json").read_text())["results"]
    assert all(x["draft_tokens_per_step"] in (None, 0.0) for x in plain)  # None: a server without the new gauges


@pytest.mark.slow
def test_bench_url_reads_the_given_metrics_port(builds, tmp_path):
    """`bench --url` against a real tritonserver: with --metrics-url the scheduler's steps come from
    its metrics port; on a port off Triton's defaults and without it, one note and "-" columns."""
    from trtbuild.serve import TritonServer, free_port

    engine = builds["la"] / "engine"
    with TritonServer(builds["la"] / "triton_repo", http_port=free_port(), grpc_port=free_port(),
                      metrics_port=free_port()) as s:
        base = ["bench", "--url", s.grpc_url, "--tokenizer", str(engine), "--isl", "8", "--osl", "6",
                "--num-requests", "2", "--warmup", "0"]
        r = CliRunner().invoke(cli, [*base, "--metrics-url", f"127.0.0.1:{s.metrics_port}", "-o", str(tmp_path / "a")])
        assert r.exit_code == 0, r.output
        report = json.loads((tmp_path / "a" / "results.json").read_text())
        assert report["target"]["metrics_url"] == f"127.0.0.1:{s.metrics_port}"
        (x,) = report["results"]
        assert x["scheduler_delta"]["steps"] >= 2
        if "drafted" in x["scheduler_delta"]:  # a server exporting the issue-16 gauges
            d = x["scheduler_delta"]
            assert x["draft_tokens_per_step"] == pytest.approx(d["drafted"] / d["steps"])
        r = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "b")])
        assert r.exit_code == 0, r.output
        assert "no metrics endpoint for" in r.output and "give --metrics-url HOST:PORT" in r.output
        (x,) = json.loads((tmp_path / "b" / "results.json").read_text())["results"]
        assert x["scheduler_delta"] is None and x["draft_tokens_per_step"] is None
