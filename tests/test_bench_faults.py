"""`trtbuild bench` under faults: no server, refused requests, error-rate limits, bad datasets,
tokenizers and --concurrency values, an engine that cannot load. A tiny torch-backend build with a
real (word-level) tokenizer, loaded in-process; no tritonserver."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import word_level_model
from trtbuild.cli import cli

MAX_INPUT_LEN = 32


def _words(n: int) -> str:
    return " ".join(f"w{i % 97}" for i in range(n))


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """A tiny Llama with a 101-word tokenizer, built for the torch backend (max_input_len 32)."""
    d = tmp_path_factory.mktemp("bench-faults")
    word_level_model(d / "hf")
    r = CliRunner().invoke(cli, ["build", str(d / "hf"), "-o", str(d / "out"), "--backend", "torch", "--gpu", "cpu",
                                 "--max-input-len", str(MAX_INPUT_LEN), "--max-seq-len", "64",
                                 "--max-batch-size", "4", "--no-verify"])
    assert r.exit_code == 0, r.output
    return d / "out"


def _error_lines(output: str) -> list[str]:
    return [x for x in output.splitlines() if x.startswith("Error:")]


def test_bench_to_a_closed_port_fails_naming_the_url(build):
    """Issue 14 item 4: no server -> non-zero exit with the reason, not exit 0."""
    from trtbuild.serve import free_port

    url = f"127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    for protocol in ("grpc", "http"):
        r = CliRunner().invoke(cli, ["bench", "--url", url, "--protocol", protocol, "--tokenizer",
                                     str(build / "engine"), "--isl", "8", "--osl", "2", "--num-requests", "2"])
        assert r.exit_code == 1, r.output
        assert _error_lines(r.output) == [f"Error: cannot connect to {url}: Connection refused"], r.output


def test_requests_to_a_closed_port_record_the_connection_error():
    """Issue 14 item 4: the per-request reason is the refused connection, not gRPC's stream state."""
    from trtbuild.bench.load import Prompt, run_load, sender
    from trtbuild.serve import free_port

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    url = f"127.0.0.1:{free_port()}"
    for protocol in ("grpc", "http"):
        recs = run_load(sender(url, "ensemble", protocol), [Prompt("a b", 2, 3)] * 3, Tok(), concurrency=1)
        assert [r.error for r in recs] == [f"cannot connect to {url}: Connection refused"] * 3, protocol


def test_every_request_refused_fails_after_writing_results_without_plot_warnings(build, tmp_path):
    """Issue 14 item 4: --isl beyond max_input_len refuses every request (as the server's
    preprocessing does): exit 1 with the first refusal; the records are still written; no plots,
    and no matplotlib warning."""
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        r = CliRunner().invoke(cli, ["bench", "--in-process", str(build / "engine"), "--isl", "40", "--osl", "4",
                                     "--num-requests", "3", "--warmup", "0", "--concurrency", "1,2", "-o", str(out)])
    assert r.exit_code == 1, r.output
    assert _error_lines(r.output) == ["Error: all 3 requests at concurrency 1 failed (later load points not run); "
                                      f"first error: prompt has 40 tokens, more than max_input_len {MAX_INPUT_LEN}"]
    report = json.loads((out / "results.json").read_text())
    assert [(x["requests"], x["errors"]) for x in report["results"]] == [(3, 3)]
    assert report["results"][0]["first_error"].startswith("prompt has 40 tokens")
    lines = (out / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all("max_input_len" in json.loads(x)["error"] for x in lines)
    assert not list(out.glob("*.png")) and "no plots" in r.output


def test_plots_of_an_all_failed_run_are_skipped_without_warnings(tmp_path):
    """Issue 14 item 4: matplotlib warned ("No artists with labels") on the empty TTFT/ITL plots."""
    from trtbuild.bench.metrics import RequestRecord, summarize
    from trtbuild.bench.plots import write_plots

    load = {"concurrency": 1}
    recs = [RequestRecord(i, 0.0, 3, error="boom") for i in range(2)]
    report = {"results": [{"load": load, **summarize(recs)}]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert write_plots(report, [{"load": load, **r.to_dict()} for r in recs], tmp_path) == []
    assert not list(tmp_path.iterdir())


def test_max_error_rate(build, tmp_path):
    """Issue 14 item 4: half the requests refused fails by default (--max-error-rate 0), after
    writing the results; passes at 0.5; fails at 0.4."""
    data = tmp_path / "mixed.jsonl"
    rows = [_words(3), _words(MAX_INPUT_LEN + 8), _words(5), _words(MAX_INPUT_LEN + 8)]
    data.write_text("".join(json.dumps({"text_input": t, "max_tokens": 3}) + "\n" for t in rows))
    base = ["bench", "--in-process", str(build / "engine"), "--dataset", str(data), "--warmup", "0"]
    for extra, code in (([], 1), (["--max-error-rate", "0.5"], 0), (["--max-error-rate", "0.4"], 1)):
        out = tmp_path / f"run{len(extra)}{code}"
        r = CliRunner().invoke(cli, [*base, *extra, "-o", str(out)])
        assert r.exit_code == code, (extra, r.output)
        res = json.loads((out / "results.json").read_text())["results"]
        assert [(x["requests"], x["errors"]) for x in res] == [(4, 2)]
        assert (out / "ttft.png").is_file()  # the successful half is plotted
        if code:
            limit = extra[1] if extra else "0"
            assert _error_lines(r.output) == [
                f"Error: error rate above --max-error-rate {limit} at concurrency 1 (2 of 4 requests failed, 0.50); "
                f"first error: prompt has {MAX_INPUT_LEN + 8} tokens, more than max_input_len {MAX_INPUT_LEN}"]
    r = CliRunner().invoke(cli, [*base, "--max-error-rate", "1.5"])
    assert r.exit_code == 2 and "--max-error-rate" in r.output


def test_bad_datasets_are_one_line(build, tmp_path):
    """Issue 14 item 7: a missing dataset was a traceback; malformed lines name their line."""
    base = ["bench", "--in-process", str(build / "engine"), "--dataset"]
    missing = tmp_path / "nonexistent.jsonl"
    r = CliRunner().invoke(cli, [*base, str(missing)])
    assert r.exit_code == 1 and r.output.strip() == f"Error: cannot read dataset {missing}: No such file or directory"
    r = CliRunner().invoke(cli, [*base, str(tmp_path)])
    assert r.exit_code == 1 and r.output.strip() == f"Error: cannot read dataset {tmp_path}: Is a directory"
    cases = ((['{"text_input": "w1"}', '{"text_input": "w2"'], "line 2: not valid JSON (Expecting ',' delimiter "
                                                              "at column 20)"),
             (['{"prompt": "w1"}', '["w1"]'], "line 2: not a JSON object"),
             (['{"max_tokens": 3}'], 'line 1: needs a non-empty string "text_input"'),
             (['{"text_input": "w1", "max_tokens": "many"}'], "line 1: \"max_tokens\" must be an integer >= 1, "
                                                              "got 'many'"),
             (['{"text_input": "w1", "max_tokens": 0}'], "line 1: \"max_tokens\" must be an integer >= 1, got 0"))
    for lines, msg in cases:
        f = tmp_path / "bad.jsonl"
        f.write_text("\n".join(lines) + "\n")
        r = CliRunner().invoke(cli, [*base, str(f)])
        assert r.exit_code == 1 and r.output.strip() == f"Error: dataset {f} {msg}", r.output


def test_bad_tokenizer_dirs_name_the_option(tmp_path):
    """Issue 14 item 10: --tokenizer /nonexistent talked about --input-ids/--prompt."""
    r = CliRunner().invoke(cli, ["bench", "--url", "127.0.0.1:1", "--tokenizer", "/nonexistent"])
    assert r.exit_code == 1 and r.output.strip() == "Error: --tokenizer /nonexistent: no such directory"
    r = CliRunner().invoke(cli, ["bench", "--url", "127.0.0.1:1", "--tokenizer", str(tmp_path)])
    assert r.exit_code == 1 and r.output.startswith(f"Error: --tokenizer {tmp_path} has no tokenizer files")
    assert "--input-ids" not in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["bench", "--in-process", str(tmp_path / "nope")])
    assert r.exit_code == 1 and r.output.strip() == f"Error: --in-process {tmp_path / 'nope'}: no such directory"


@pytest.mark.parametrize("value", ["1,,2", "0", "-1", "a", "", "1,"])
@pytest.mark.parametrize("command", [["bench", "--in-process", "ENGINE"], ["bench", "sweep", "BUILD", "-o", "OUT"]])
def test_bad_concurrency_is_a_usage_error(command, value, tmp_path):
    """Issue 14 item 9: "1,,2" was taken as "1,2"; 0 and -1 reached the sweep."""
    args = [str(tmp_path) if a in ("ENGINE", "BUILD", "OUT") else a for a in command]
    r = CliRunner().invoke(cli, [*args, "--concurrency", value])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for --concurrency: expected comma-separated integers >= 1, got {value!r}" in r.output



def test_in_process_with_a_broken_engine_fails_instead_of_hanging(build, tmp_path):
    """Issue 15: a model that failed to load in the scheduler's thread left bench waiting forever."""
    broken = {}
    for name in ("corrupt", "config"):
        shutil.copytree(build, tmp_path / name)
        broken[name] = tmp_path / name / "engine"
    (tmp_path / "corrupt" / "checkpoint" / "rank0.safetensors").write_bytes(b"not safetensors")
    cfg = json.loads((broken["config"] / "config.json").read_text())
    del cfg["build_config"]["max_num_tokens"]
    (broken["config"] / "config.json").write_text(json.dumps(cfg))
    exe = Path(sys.executable).parent / "trtbuild"
    for name, msg in (("corrupt", "Error: corrupted safetensors file rank0.safetensors: "),
                      ("config", f"Error: {broken['config'] / 'config.json'}: build_config.max_num_tokens is "
                                 "missing")):
        r = subprocess.run([str(exe), "bench", "--in-process", str(broken[name]), "--isl", "8", "--osl", "2",
                            "--num-requests", "2"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith(msg), r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_sweep_whose_requests_are_all_refused_fails_after_the_comparison(build, tmp_path):
    """Issue 14 item 4 for `bench sweep` (a real tritonserver): --isl beyond max_input_len -> every
    request refused by the server's preprocessing; its message is shown, the results and the
    comparison are still written, the exit is non-zero."""
    out = tmp_path / "sweep"
    r = CliRunner().invoke(cli, ["bench", "sweep", str(build), "--concurrency", "1,2", "--num-requests", "2",
                                 "--isl", "40", "--osl", "4", "--warmup", "0", "-o", str(out)])
    assert r.exit_code == 1, r.output
    assert _error_lines(r.output) == [
        f"Error: 1 of 1 builds failed: {build.name}: all 2 requests at concurrency 1 failed (later load points not "
        f"run); first error: in ensemble 'ensemble', prompt has 40 tokens, more than max_input_len {MAX_INPUT_LEN}"]
    res = json.loads((out / build.name / "results.json").read_text())["results"]
    assert [(x["requests"], x["errors"]) for x in res] == [(2, 2)]
    assert (out / "comparison.txt").is_file()
