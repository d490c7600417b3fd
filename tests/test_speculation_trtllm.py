"""Load-aware speculation on the tensorrt-llm backend (issue 16): what TensorRT-LLM 1.2 allows is a
lookahead (w, n, g) per request, so the BLS picks each request's sizes from its requests in flight
(`python_models.LookaheadSteering`, `InFlight`) with parameters the repository writer fills from the
build (`triton_repo.bls_speculation`). The choice is a pure function, checked on hand-written cases;
the written parameters through `write_repo`, as the conformance tests write repositories; the BLS's
own code served by a real tritonserver on CPU, steering the torch tensorrt_llm model (which honours
per-request lookahead sizes as the C++ executor does; slow). Serving a real TensorRT-LLM engine needs
a GPU and the Triton TRT-LLM container: that test skips elsewhere, and never ran here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import engine_dir, make_hf_model
from trtbuild.common.fsutil import MARKER
from trtbuild.triton_repo import parse_config, write_repo
from trtbuild.triton_repo.python_models import (DEFAULT_MAX_IN_FLIGHT, NO_LOOKAHEAD, InFlight, LookaheadSteering,
                                                RequestError, own_lookahead)

ENGINE = (4, 3, 4)


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("spec") / "llama"
    make_hf_model(d)
    return d


def _bls_params(repo: Path) -> dict[str, str]:
    cfg = parse_config((repo / "tensorrt_llm_bls" / "config.pbtxt").read_text())
    return {k: v.string_value for k, v in cfg.parameters.items()}


def _repo(hf: Path, tmp: Path, backend: str = "tensorrt-llm", **kw) -> tuple[Path, Path]:
    engine = engine_dir(hf, tmp, backend, max_batch_size=8, **kw)
    return engine, write_repo(engine, tmp / "repo")


# --- the parameters the repository writer gives the BLS -------------------------------------------


def test_tensorrt_llm_lookahead_build_steers_lookahead_by_default(hf, tmp_path):
    _, repo = _repo(hf, tmp_path, lookahead="4,3,4")
    p = _bls_params(repo)
    assert p["speculation"] == "auto"  # the build's default
    assert p["speculation_lookahead"] == "4,3,4"  # the engine's (W, N, G), as tensorrt_llm's executor has it
    assert p["speculation_max_in_flight"] == str(DEFAULT_MAX_IN_FLIGHT) == "8"
    steer = LookaheadSteering.from_parameters(p)
    assert steer == LookaheadSteering(ENGINE, "auto", 8)
    # the executor's lookahead config the BLS's sizes are checked against is the same (W, N, G)
    llm = parse_config((repo / "tensorrt_llm" / "config.pbtxt").read_text())
    got = {k: v.string_value for k, v in llm.parameters.items()}
    assert (got["lookahead_window_size"], got["lookahead_ngram_size"], got["lookahead_verification_set_size"]) == \
        ("4", "3", "4")


@pytest.mark.parametrize("mode", ["always", "off"])
def test_the_builds_speculation_reaches_the_bls(hf, tmp_path, mode):
    _, repo = _repo(hf, tmp_path, lookahead="4,3,4", speculation=mode)
    steer = LookaheadSteering.from_parameters(_bls_params(repo))
    assert steer is not None and steer.mode == mode
    assert steer.choose(1) == (ENGINE if mode == "always" else NO_LOOKAHEAD)


@pytest.mark.parametrize("backend,kw", [("tensorrt-llm", {}), ("tensorrt-llm", {"medusa_choices": "{0}, {0, 0}"}),
                                        ("torch", {"lookahead": "4,3,4"})])
def test_other_builds_leave_the_bls_as_it_was(hf, tmp_path, backend, kw):
    """Plain and Medusa tensorrt-llm engines (nothing per request in TensorRT-LLM) and torch engines
    (their tensorrt_llm model governs itself): the BLS steers nothing."""
    if "medusa_choices" in kw:
        from safetensors.torch import save_file
        import torch

        g = torch.Generator().manual_seed(0)
        heads = tmp_path / "medusa_lm_head.safetensors"
        save_file({f"{h}.0.linear.{n}": torch.randn(*s, generator=g) for h in range(2)
                   for n, s in (("weight", (64, 64)), ("bias", (64,)))}, str(heads))
        kw = {**kw, "medusa": str(heads)}
    _, repo = _repo(hf, tmp_path, backend, **kw)
    p = _bls_params(repo)
    assert p["speculation_lookahead"] == "" and p["speculation"] == "auto"
    assert LookaheadSteering.from_parameters(p) is None


@pytest.mark.parametrize("manifest,want", [({}, "always"), ({"speculation": "off"}, "off")])
def test_an_engine_outside_a_build_uses_its_manifest(hf, tmp_path, manifest, want):
    """No spec.yaml (`trtbuild repo` on an engine directory): the engine's trtbuild.json says the mode;
    an engine from before the setting existed keeps what it did then (always)."""
    engine = engine_dir(hf, tmp_path, max_batch_size=8, lookahead="4,3,4")
    (tmp_path / "spec.yaml").unlink()
    m = json.loads((engine / MARKER).read_text())
    m.pop("speculation")  # as an engine built before the setting existed
    (engine / MARKER).write_text(json.dumps({**m, **manifest}))
    p = _bls_params(write_repo(engine, tmp_path / "repo"))
    assert p["speculation"] == want and p["speculation_lookahead"] == "4,3,4"


# --- the choice, by hand ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode,in_flight,own,override,want", [
    ("auto", 1, None, None, ENGINE),
    ("auto", 4, None, None, ENGINE),  # at the threshold: still the engine's
    ("auto", 5, None, None, NO_LOOKAHEAD),  # above it: plain decoding
    ("auto", 50, None, "always", ENGINE),  # the request's override wins over the load
    ("auto", 1, None, "off", NO_LOOKAHEAD),
    ("off", 1, None, None, NO_LOOKAHEAD),
    ("off", 1, None, "auto", ENGINE),  # auto at low load, even on an `off` build
    ("off", 9, None, "auto", NO_LOOKAHEAD),
    ("always", 50, None, None, ENGINE),
    ("always", 1, None, "off", NO_LOOKAHEAD),
    ("auto", 50, (2, 2, 1), None, (2, 2, 1)),  # the request's own sizes are kept, whatever the load
    ("off", 1, (4, 3, 4), "off", (4, 3, 4)),  # and whatever it asks by "speculation"
    ("auto", 1, (1, 1, 0), None, (1, 1, 0)),
])
def test_choose(mode, in_flight, own, override, want):
    assert LookaheadSteering(ENGINE, mode, max_in_flight=4).choose(in_flight, own, override) == want


def test_choose_refuses_what_the_executor_would_fail():
    s = LookaheadSteering(ENGINE, "auto")
    with pytest.raises(RequestError, match=r"request lookahead \(5, 3, 4\) exceeds the engine's"):
        s.choose(1, (5, 3, 4))
    with pytest.raises(RequestError, match=r"exceeds the engine's \(W, N, G\) \(4, 3, 4\)"):
        s.choose(1, (4, 3, 5))
    with pytest.raises(RequestError, match="speculation must be one of auto, always, off, got 'fast'"):
        s.choose(1, None, "fast")
    assert s.choose(DEFAULT_MAX_IN_FLIGHT) == ENGINE and s.choose(DEFAULT_MAX_IN_FLIGHT + 1) == NO_LOOKAHEAD


def test_steering_settings_are_checked():
    with pytest.raises(ValueError, match="speculation must be one of"):
        LookaheadSteering(ENGINE, "sometimes")
    with pytest.raises(RequestError, match="N = 1 is plain decoding"):
        LookaheadSteering((2, 1, 0), "auto")
    assert LookaheadSteering.from_parameters({"speculation_lookahead": ""}) is None
    assert LookaheadSteering.from_parameters({"speculation_lookahead": "7,7,7", "speculation": "off",
                                              "speculation_max_in_flight": "2"}) == \
        LookaheadSteering((7, 7, 7), "off", 2)


@pytest.mark.parametrize("params,want", [
    ({}, None),
    ({"speculation": "off"}, None),
    ({"lookahead_window_size": 2, "lookahead_ngram_size": 2, "lookahead_verification_set_size": 1}, (2, 2, 1)),
    ({"lookahead_window_size": "1", "lookahead_ngram_size": "1", "lookahead_verification_set_size": "0"},
     (1, 1, 0)),
])
def test_own_lookahead(params, want):
    assert own_lookahead(params) == want


@pytest.mark.parametrize("params,match", [
    ({"lookahead_window_size": 2}, "give all three or none"),
    ({"lookahead_window_size": "a", "lookahead_ngram_size": 2, "lookahead_verification_set_size": 1},
     "must be integers"),
    ({"lookahead_window_size": 2, "lookahead_ngram_size": 1, "lookahead_verification_set_size": 1},
     r"N = 1 is plain decoding and needs W = 1 and G = 0"),  # LookaheadDecodingConfig::isLegal
    ({"lookahead_window_size": 0, "lookahead_ngram_size": 2, "lookahead_verification_set_size": 1}, "W must be >= 1"),
    ({"lookahead_window_size": True, "lookahead_ngram_size": 2, "lookahead_verification_set_size": 1},
     "must be integers"),
])
def test_own_lookahead_refused(params, match):
    with pytest.raises(RequestError, match=match):
        own_lookahead(params)


# --- requests in flight across the BLS instances ----------------------------------------------------


def test_in_flight_counts_requests_across_instances(tmp_path):
    a, b = InFlight(tmp_path / "f"), InFlight(tmp_path / "f")  # two instances sharing the directory
    assert a.count() == 0
    ta = a.enter()
    tb1, tb2 = b.enter(), b.enter()
    assert a.count() == b.count() == 3
    InFlight.leave(tb1)
    assert a.count() == 2
    InFlight.leave(ta)
    InFlight.leave(tb2)
    assert b.count() == 0


def test_in_flight_forgets_a_dead_instance(tmp_path):
    d = tmp_path / "f"
    # a real process that entered a request and died without leaving
    subprocess.run([sys.executable, "-c", "import sys; from trtbuild.triton_repo.python_models import InFlight; "
                    "InFlight(sys.argv[1]).enter()", str(d)], check=True)
    assert len(list(d.iterdir())) == 1
    live = InFlight(d)
    live.enter()
    assert live.count() == 1 and len(list(d.iterdir())) == 1  # the dead one's file is gone


def test_the_bls_imports_no_torch(tmp_path):
    """The BLS runs in the tensorrt-llm container's Python stub: no torch-only runtime code (torch
    made unimportable; Triton's own module is the one thing given, as the stub gives it)."""
    stub = tmp_path / "triton_python_backend_utils.py"
    stub.write_text("TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1\n")
    bls = Path(__file__).resolve().parents[1] / "trtbuild" / "triton_repo" / "models" / "tensorrt_llm_bls.py"
    code = ("import sys, importlib.util; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1]); "
            "s = importlib.util.spec_from_file_location('bls', sys.argv[2]); m = importlib.util.module_from_spec(s); "
            "s.loader.exec_module(m); print(sorted(k for k in sys.modules if k.startswith('trtbuild.runtime')))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(bls)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# --- the BLS's steering through a real tritonserver, on CPU -------------------------------------------


@pytest.mark.slow
def test_the_bls_sends_its_lookahead_choice_to_tensorrt_llm(demo_hf, tmp_path):
    """The BLS's own code, served: a torch lookahead build (`--speculation always`, so its tensorrt_llm
    model drafts all a request's lookahead sizes allow, and honours per-request sizes as the C++
    executor does) with the BLS set to steer as it is for a tensorrt-llm engine, build mode off. The
    BLS's (1, 1, 0) reaches the model (no draft token verified), its override `always` the engine's
    (4, 3, 4) (draft tokens verified), greedy text the same; a request's own sizes beyond the
    engine's are refused by the BLS."""
    import shutil

    from click.testing import CliRunner

    from trtbuild.cli import cli
    from trtbuild.serve import TritonServer, free_port
    from trtbuild.serve.client import ServerError

    make_hf_model(tmp_path / "hf", vocab_size=49152, pad_token_id=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_hf / f, tmp_path / "hf" / f)
    r = CliRunner().invoke(cli, ["build", str(tmp_path / "hf"), "-o", str(tmp_path / "b"), "--lookahead", "4,3,4",
                                 "--speculation", "always", "--max-batch-size", "2", "--max-seq-len", "256",
                                 "--no-verify"])
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "b" / "triton_repo" / "tensorrt_llm_bls" / "config.pbtxt"
    text = cfg.read_text()
    for key, old, new in (("speculation_lookahead", "", "4,3,4"), ("speculation", "always", "off")):
        before = f'key: "{key}"\n  value: {{ string_value: "{old}" }}'
        assert before in text, key
        text = text.replace(before, f'key: "{key}"\n  value: {{ string_value: "{new}" }}')
    cfg.write_text(text)
    host = "127.0.0.1"
    with TritonServer(tmp_path / "b" / "triton_repo", host, free_port(host), free_port(host), free_port(host),
                      log_file=tmp_path / "triton.log") as s:
        def run(parameters: dict | None = None) -> tuple[str, int]:
            return _bls_text_and_drafts(s.grpc_url, parameters)

        plain, drafted_plain = run()
        spec, drafted_spec = run({"speculation": "always"})
        assert drafted_plain == 0 and drafted_spec > 0
        assert spec == plain
        with pytest.raises(ServerError, match=r"request lookahead \(5, 3, 4\) exceeds the engine's"):
            run({"lookahead_window_size": 5, "lookahead_ngram_size": 3, "lookahead_verification_set_size": 4})


def _bls_text_and_drafts(url: str, parameters: dict | None) -> tuple[str, int]:
    """One streamed greedy BLS request: (its text, the draft tokens it verified)."""
    from trtbuild.serve.client import stream_grpc

    out = list(stream_grpc(url, "The capital of France is", 24, model="tensorrt_llm_bls", parameters=parameters))
    return "".join(o["text_output"] for o in out), int(out[-1]["total_draft_tokens"])


# --- through a real tritonserver (GPU, TensorRT-LLM, the Triton TRT-LLM container) ---------------------


@pytest.mark.gpu
@pytest.mark.trtllm
def test_bls_lookahead_sizes_through_the_cpp_backend(demo_hf, tmp_path):
    """Unexecuted here (no GPU, no TensorRT-LLM, no TRT-LLM container): a tensorrt-llm lookahead
    engine served by the C++ backend; one BLS request (in flight: 1 <= 8) gets the engine's sizes and
    verifies draft tokens, `speculation: off` gets (1, 1, 0) and verifies none, greedy text the same."""
    import shutil

    from click.testing import CliRunner

    from trtbuild.cli import cli
    from trtbuild.serve import TRTLLM_SERVER, TritonServer, free_port

    if not TRTLLM_SERVER.is_file():
        pytest.skip("needs the Triton TRT-LLM container's tritonserver")
    make_hf_model(tmp_path / "hf", vocab_size=49152, pad_token_id=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_hf / f, tmp_path / "hf" / f)
    r = CliRunner().invoke(cli, ["build", str(tmp_path / "hf"), "-o", str(tmp_path / "b"), "--backend",
                                 "tensorrt-llm", "--gpu", "h100-80gb", "--lookahead", "4,3,4", "--max-seq-len", "256",
                                 "--no-verify"])
    assert r.exit_code == 0, r.output
    host = "127.0.0.1"
    with TritonServer(tmp_path / "b" / "triton_repo", host, free_port(host), free_port(host), free_port(host),
                      log_file=tmp_path / "triton.log") as s:
        def run(parameters: dict | None = None) -> tuple[str, int]:
            return _bls_text_and_drafts(s.grpc_url, parameters)

        spec, drafted_spec = run()
        plain, drafted_plain = run({"speculation": "off"})
        assert drafted_spec > 0 and drafted_plain == 0
        assert spec == plain
