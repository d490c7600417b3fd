"""The Triton model repository: golden files for tensorrt-llm Medusa and lookahead engines, every
placeholder filled, every config.pbtxt parsed back as a ModelConfig, one streaming switch, the
same ensemble/pre/postprocessing for both backends; and the Python models' text handling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import engine_dir, make_hf_model
from trtbuild.triton_repo import MODELS, parse_config, write_repo
from trtbuild.triton_repo.python_models import (Detokenizer, FastDecoder, Holdback, Postprocessor, word_list,
                                                words_from_list)

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("repo")
    make_hf_model(d / "hf")
    g = torch.Generator().manual_seed(0)
    save_file({f"{h}.0.linear.{n}": torch.randn(*s, generator=g) for h in range(4)
               for n, s in (("weight", (64, 64)), ("bias", (64,)))}, str(d / "medusa_lm_head.safetensors"))
    return d / "hf"


def _engine(hf: Path, tmp: Path, backend: str, **kw) -> Path:
    return engine_dir(hf, tmp, backend, trtllm_version="1.2.0", **kw)


CASES = {"trtllm_medusa": {"medusa": "MEDUSA", "medusa_choices": "{0, 0, 1}, {1}, {0}"},
         "trtllm_lookahead": {"lookahead": "4,3,4"}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trtllm_repository_golden(hf, tmp_path, case):
    kw = dict(CASES[case])
    if "medusa" in kw:
        kw["medusa"] = str(hf.parent / "medusa_lm_head.safetensors")
    engine = _engine(hf, tmp_path, "tensorrt-llm", **kw)
    repo = write_repo(engine, tmp_path / "repo", engine_dir_in_repo="/engines/model")
    for name in MODELS:
        text = (repo / name / "config.pbtxt").read_text()
        assert "${" not in text
        cfg = parse_config(text)
        assert cfg.name == name and cfg.max_batch_size == 64
        golden = GOLDEN / case / f"{name}.pbtxt"
        if os.environ.get("UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{name}: differs from {golden}"
    llm = parse_config((repo / "tensorrt_llm" / "config.pbtxt").read_text())
    p = {k: v.string_value for k, v in llm.parameters.items()}
    assert llm.backend == "tensorrtllm" and llm.model_transaction_policy.decoupled
    assert p["gpt_model_type"] == "inflight_fused_batching" and p["exclude_input_in_output"] == "true"
    assert p["gpt_model_path"] == "/engines/model" and p["max_beam_width"] == "1"
    if case == "trtllm_medusa":
        assert p["decoding_mode"] == "medusa"
        assert p["medusa_choices"] == "{0}, {1}, {0, 0}, {0, 0, 1}"  # the missing prefix {0, 0} is listed
    else:
        from trtbuild.common.lookahead.spec import LookaheadSpec

        assert p["decoding_mode"] == "lookahead"
        w, n, g = (int(p[f"lookahead_{k}"]) for k in ("window_size", "ngram_size", "verification_set_size"))
        engine_cfg = json.loads((engine / "config.json").read_text())
        assert LookaheadSpec(w, n, g).max_draft_len == engine_cfg["build_config"]["max_draft_len"] == 15
    assert not (repo / "tensorrt_llm" / "1" / "model.py").exists()  # the C++ backend runs the engine
    for name in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        assert (repo / name / "1" / "model.py").is_file()
    assert (repo / "preprocessing" / "tokenizer" / "tokenizer_config.json").is_file() or \
        (repo / "preprocessing" / "tokenizer" / "generation_config.json").is_file()


def test_streaming_switch_and_backends_share_the_text_models(hf, tmp_path):
    trt = _engine(hf, tmp_path / "t", "tensorrt-llm", lookahead="4,3,4")
    torch_engine = _engine(hf, tmp_path / "c", "torch", lookahead="4,3,4")
    off = write_repo(trt, tmp_path / "off", streaming=False)
    for name in ("tensorrt_llm", "tensorrt_llm_bls"):
        assert not parse_config((off / name / "config.pbtxt").read_text()).model_transaction_policy.decoupled
    a, b = write_repo(trt, tmp_path / "a"), write_repo(torch_engine, tmp_path / "b")
    for name in ("ensemble", "preprocessing", "postprocessing"):
        assert (a / name / "config.pbtxt").read_text() == (b / name / "config.pbtxt").read_text()
    # the BLS differs in one parameter only: it picks lookahead sizes per request for the C++ backend
    # (tests/test_speculation_trtllm.py); the torch tensorrt_llm model governs itself
    bls_a, bls_b = (parse_config((r / "tensorrt_llm_bls" / "config.pbtxt").read_text()) for r in (a, b))
    assert bls_a.parameters["speculation_lookahead"].string_value == "4,3,4"
    assert bls_b.parameters["speculation_lookahead"].string_value == ""
    bls_a.parameters["speculation_lookahead"].string_value = ""
    assert bls_a == bls_b
    llm = parse_config((b / "tensorrt_llm" / "config.pbtxt").read_text())
    assert llm.backend == "python" and (b / "tensorrt_llm" / "1" / "model.py").is_file()
    engine_param = llm.parameters["gpt_model_path"].string_value
    assert (b / "tensorrt_llm" / engine_param).resolve() == torch_engine.resolve()
    pre = parse_config((b / "preprocessing" / "config.pbtxt").read_text()).parameters
    assert pre["max_input_len"].string_value == "200" and pre["max_seq_len"].string_value == "256"
    assert pre["end_ids"].string_value == "2"


# --- the Python models' text handling -------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(demo_hf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_hf))


@pytest.mark.slow
def test_word_lists_round_trip(tok):
    wl = word_list(["Hello world", "", "\n\n"], tok)
    assert wl.dtype.name == "int32" and wl.shape[0] == 2
    words = words_from_list(wl)
    assert [tok.decode(w) for w in words] == ["Hello world", "\n\n"]
    assert word_list([], tok).shape == (2, 0) and words_from_list(word_list([], tok)) == ()


@pytest.mark.slow
def test_streamed_text_never_splits_characters_or_drops_spaces(tok, demo_hf):
    text = " Héllo wörld — ünïcode 🙂 and 日本語 text, spaces  kept."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    post = Postprocessor(demo_hf)
    hold = Holdback(tok)
    chunks = [hold.push([t], final=(i == len(ids) - 1)) for i, t in enumerate(ids)]
    assert "".join(post(c) for c in chunks if c) == tok.decode(ids)
    assert all("\ufffd" not in post(c) for c in chunks if c)
    for decoder in (tok, FastDecoder(demo_hf)):  # the BLS's tokenizers-only decoder streams the same
        det = Detokenizer(decoder)
        deltas = [det.add([t]) for t in ids] + [det.add([], final=True)]
        assert "".join(deltas) == tok.decode(ids) and all("\ufffd" not in d for d in deltas)


@pytest.mark.slow
def test_fast_decoder_decodes_as_transformers(tok, demo_hf):
    import random

    fast, r = FastDecoder(demo_hf), random.Random(0)
    for _ in range(200):
        ids = [r.randrange(len(tok)) for _ in range(r.randrange(1, 30))] + [tok.eos_token_id]
        r.shuffle(ids)
        for skip in (True, False):
            assert fast.decode(ids, skip_special_tokens=skip) == tok.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


def test_cancellation_tag_rides_after_sequence_length():
    from trtbuild.triton_repo.python_models import TAG, read_tag, tag_tokens

    row = tag_tokens([5, 6, 7], 42)
    assert row == [5, 6, 7, TAG, 42] and row[:3] == [5, 6, 7]  # readers stop at sequence_length 3
    assert read_tag(row, 3) == 42 and read_tag([5, 6, 7], 3) is None and read_tag([5, 6, 7, 8, 9], 3) is None


def test_mpirun_command_for_a_tp2_engine(tmp_path):
    from trtbuild.serve import mpi_command

    cmd = mpi_command(tmp_path, 2, "0.0.0.0", 8000, 8001, 8002, server=Path("/opt/tritonserver/bin/tritonserver"))
    assert cmd[:2] == ["mpirun", "--allow-run-as-root"] and cmd.count(":") == 1
    first, second = " ".join(cmd).split(" : ")
    assert "shm-region-prefix-name=prefix0_" in first and "--http-port=8000" in first and "--load-model" not in first
    for endpoint in ("http", "grpc", "metrics"):  # rank 0's endpoints all bind to the host asked for
        assert f"--{endpoint}-address=0.0.0.0" in first
    assert "shm-region-prefix-name=prefix1_" in second and "--model-control-mode=explicit" in second
    assert "--load-model=tensorrt_llm" in second and "--http-port" not in second
