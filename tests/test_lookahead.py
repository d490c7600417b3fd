"""Lookahead decoding: the (W, N, G) spec, the n-gram pool, the step layout and mask (hand-written
cases), lossless greedy decoding against plain decoding, sampling, the CLI and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import make_hf_model
from trtbuild.cli import cli
from trtbuild.convert import convert
from trtbuild.common.errors import ConfigError
from trtbuild.common.lookahead.pool import NgramPool
from trtbuild.common.lookahead.spec import LookaheadSpec, parse_engine_lookahead, parse_lookahead
from trtbuild.runtime import Model, Request, SamplingParams, generate
from trtbuild.common.lookahead.layout import step_layout
from trtbuild.runtime import lookahead_generate
from trtbuild.runtime.decoding import draft_attention_mask, longest_chain

# --- spec ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("wng,want", [((7, 7, 7), 83), ((4, 3, 4), 15), ((4, 4, 4), 23), ((1, 1, 0), 0),
                                      ((2, 2, 1), 2), ((1, 2, 0), 0), ((5, 4, 0), 14)])
def test_max_draft_len_formula(wng, want):
    assert LookaheadSpec(*wng).max_draft_len == want


@pytest.mark.parametrize("text,msg", [
    ("0,3,4", "window size W must be >= 1, got 0"),
    ("4,0,4", "n-gram size N must be >= 1, got 0"),
    ("4,3,-1", "verification set size G must be >= 0, got -1"),
    ("2,1,0", "N = 1 is plain decoding and needs W = 1 and G = 0"),
    ("1,1,1", "N = 1 is plain decoding and needs W = 1 and G = 0"),
    ("4,3", "must be 'W,N,G'"),
    ("a,b,c", "must be 'W,N,G'"),
])
def test_illegal_specs_are_rejected(text, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_lookahead(text)


# the specs whose max_draft_len is 0: N = 1 (legal only as (1,1,0)) and N = 2 with W - 1 + G = 0
@pytest.mark.parametrize("wng", [(w, n, g) for w in range(1, 5) for n in range(1, 5) for g in range(0, 5)
                                 if not (n == 1 and (w, g) != (1, 0))])
def test_max_draft_len_is_zero_only_for_1_1_0_and_1_2_0(wng):
    assert (LookaheadSpec(*wng).max_draft_len == 0) == (wng in {(1, 1, 0), (1, 2, 0)})


@pytest.mark.parametrize("text,msg", [
    ("1,1,0", r"lookahead \(1,1,0\) gives max_draft_len 0 \(\(N-2\) \+ \(W-1\+G\)\(N-1\)\): nothing to speculate"),
    ("1,2,0", r"lookahead \(1,2,0\) gives max_draft_len 0"),
    # TensorRT-LLM's LLM API LookaheadDecodingConfig: W, N and G must be positive
    ("3,2,0", r"lookahead \(3,2,0\): an engine needs verification set size G >= 1"),
    ("5,4,0", r"lookahead \(5,4,0\): an engine needs verification set size G >= 1"),
    ("0,3,4", "window size W must be >= 1, got 0"),
    ("4,0,4", "n-gram size N must be >= 1, got 0"),
    ("2,1,0", "N = 1 is plain decoding and needs W = 1 and G = 0"),
])
def test_engine_specs_follow_the_llm_api(text, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_engine_lookahead(text)


@pytest.mark.parametrize("text", ["1,2,1", "2,2,1", "1,5,2", "4,3,4", "7,7,7", "1,3,1"])
def test_engine_specs_that_speculate_are_accepted(text):
    spec = parse_engine_lookahead(text)
    assert spec == parse_lookahead(text) and spec.max_draft_len >= 1


def test_requests_keep_the_executor_rules():
    """Per request, (1,1,0) (plain decoding) and G = 0 stay legal, as in the C++ executor's isLegal."""
    engine = parse_engine_lookahead("4,3,4")
    for w, n, g in ((1, 1, 0), (1, 2, 0), (2, 3, 0), (4, 3, 4)):
        engine.check_request(LookaheadSpec(w, n, g))
    with pytest.raises(ConfigError, match="gives max_draft_len 0"):
        LookaheadSpec(1, 1, 0).check_engine()


def test_spec_round_trip_and_request_limits():
    s = parse_lookahead(" 4, 3 ,4 ")
    assert s == LookaheadSpec(4, 3, 4) and LookaheadSpec.from_dict(s.to_dict()) == s
    assert s.to_dict() == {"max_window_size": 4, "max_ngram_size": 3, "max_verification_set_size": 4}
    s.check_request(LookaheadSpec(2, 3, 0))
    s.check_request(LookaheadSpec(1, 1, 0))
    with pytest.raises(ConfigError, match=r"request lookahead \(4,4,4\) exceeds the engine's \(4,3,4\)"):
        s.check_request(LookaheadSpec(4, 4, 4))
    with pytest.raises(ConfigError, match="exactly max_window_size"):
        LookaheadSpec.from_dict({"max_window_size": 4})
    with pytest.raises(ConfigError, match="must be integers"):
        LookaheadSpec(4, 3.0, 4)  # type: ignore[arg-type]


# --- pool ----------------------------------------------------------------------------------------


def test_pool_lru_eviction_by_hand():
    p = NgramPool(ngram_size=3, capacity=2)
    p.add(5, (1, 2))
    p.add(5, (3, 4))
    assert p.candidates(5, 2) == [(3, 4), (1, 2)]  # newest first
    p.add(5, (1, 2))  # re-inserting refreshes it
    assert p.candidates(5, 2) == [(1, 2), (3, 4)]
    p.add(5, (7, 8))  # full: the oldest, (3, 4), goes
    assert p.candidates(5, 9) == [(7, 8), (1, 2)]
    assert p.candidates(5, 1) == [(7, 8)] and p.candidates(6, 2) == [] and len(p) == 2
    with pytest.raises(ValueError, match="continuation must have 2 tokens"):
        p.add(5, (1,))


def test_pool_seeded_from_a_sequence_by_hand():
    p = NgramPool(ngram_size=3, capacity=4)
    p.add_sequence([1, 2, 3, 1, 2, 4])
    assert {k: p.candidates(k, 9) for k in p.keys()} == {1: [(2, 4), (2, 3)], 2: [(3, 1)], 3: [(1, 2)]}
    p.add_sequence([1, 2, 3, 1, 2, 4, 9], start=4)  # only n-grams starting at index >= 4: 2 -> (4, 9)
    assert p.candidates(2, 9) == [(4, 9), (3, 1)] and len(p) == 5
    empty = NgramPool(ngram_size=2, capacity=0)
    empty.add_sequence([1, 2, 1, 2])
    assert len(empty) == 0


# --- layout, mask, walk ------------------------------------------------------------------------


def test_step_layout_by_hand():
    # W=3, two levels, one candidate of 2 tokens:
    # 0 root(d0) | level 0: 1 (col 1, d1), 2 (col 2, d2) | level 1: 3 (col 0, d1), 4 (col 1, d2), 5 (col 2, d3)
    # | candidate: 6 (d1), 7 (d2)
    lay = step_layout(3, 2, 1, 2)
    assert lay.depths == (0, 1, 2, 1, 2, 3, 1, 2)
    assert lay.window == ((0, 1, 2), (3, 4, 5))
    assert lay.visible == ((0,), (0, 1), (0, 1, 2), (0, 3), (0, 1, 4), (0, 1, 2, 5), (0, 6), (0, 6, 7))
    assert lay.chains == ((3,), (6, 7))
    m = lay.mask
    assert m.shape == (8, 8) and m.sum().item() == sum(len(v) for v in lay.visible)
    assert m[5].nonzero().flatten().tolist() == [0, 1, 2, 5]
    # every node sees as many step tokens as its depth + 1: positions are consistent
    assert all(len(v) == d + 1 for v, d in zip(lay.visible, lay.depths))


@pytest.mark.parametrize("wng", [(7, 7, 7), (4, 3, 4), (4, 4, 4), (1, 2, 0), (2, 2, 1), (3, 5, 2)])
def test_full_step_is_max_draft_len_plus_one(wng):
    w, n, g = wng
    assert step_layout(w, n - 1, g, n - 1).num_nodes == LookaheadSpec(w, n, g).decoding_tokens


def test_draft_attention_mask_by_hand():
    lay = step_layout(2, 1, 1, 1)  # 0 root, 1 level-0 col 1, 2 candidate
    local = lay.mask[None]
    m = draft_attention_mask(local, torch.tensor([lay.depths]), torch.tensor([2]), span=5)[0, 0].int().tolist()
    assert m == [[1, 1, 1, 0, 0],
                 [1, 1, 1, 1, 0],
                 [1, 1, 1, 0, 1]]
    # a sliding window of 2: the depth-1 nodes (positions 3) no longer see slot 0 (position 0)
    m = draft_attention_mask(local, torch.tensor([lay.depths]), torch.tensor([2]), span=5, window=2)[0, 0]
    assert m.int().tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 0, 1]]


def test_longest_chain_by_hand():
    tokens = [10, 11, 12, 11, 13]  # node 0 root; chains (1, 2) and (3, 4) share the first token 11
    pred = {0: 11, 1: 12, 2: 40, 3: 13, 4: 50}
    assert longest_chain([(1, 2), (3, 4)], tokens, pred.__getitem__) == ([0, 1, 2], 40)
    pred = {0: 11, 1: 12, 3: 14}  # node 1 and 3 are the same prefix; the first matching chain leads
    assert longest_chain([(3, 4), (1, 2)], tokens, pred.__getitem__) == ([0, 3], 14)
    assert longest_chain([(1, 2)], tokens, {0: 99}.__getitem__) == ([0], 99)
    assert longest_chain([], tokens, {0: 7}.__getitem__) == ([0], 7)


# --- decoding on a tiny model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("la")
    make_hf_model(d / "hf")
    return convert(d / "hf", d / "ckpt", dtype="float32")


REPEATING = (5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6)


@pytest.mark.parametrize("wng", [(4, 3, 4), (2, 2, 1), (3, 4, 2), (1, 3, 0), (5, 5, 5)])
def test_greedy_lookahead_equals_plain_greedy(tiny_ckpt, wng):
    model = Model.load(tiny_ckpt)
    prompts = [REPEATING, (3, 9, 27, 81), tuple(range(10, 40)), (7,)]
    reqs = [Request(p, 40) for p in prompts]
    plain = [generate(model, [r])[0] for r in reqs]
    batch = lookahead_generate(model, reqs, LookaheadSpec(*wng))
    singles = [lookahead_generate(model, [r], LookaheadSpec(*wng))[0] for r in reqs]
    for p, b, s in zip(plain, batch, singles):
        assert b.output_ids == s.output_ids == p.output_ids
        assert b.finish_reason == p.finish_reason == "length"
        assert b.num_steps <= 39 and b.num_steps + b.accepted_draft_tokens == 39
    # the random model's greedy text is repetitive: drafts are really accepted
    assert sum(r.accepted_draft_tokens for r in batch) > 0


def test_plain_spec_and_per_request_specs(tiny_ckpt):
    model = Model.load(tiny_ckpt)
    reqs = [Request(REPEATING, 24), Request((3, 9, 27), 24)]
    plain = [r.output_ids for r in generate(model, reqs)]
    same = lookahead_generate(model, reqs, LookaheadSpec(1, 1, 0))
    assert [r.output_ids for r in same] == plain and all(r.num_steps == 23 for r in same)
    mixed = lookahead_generate(model, reqs, [LookaheadSpec(4, 3, 4), LookaheadSpec(2, 2, 0)],
                               limit=LookaheadSpec(4, 3, 4))
    assert [r.output_ids for r in mixed] == plain
    with pytest.raises(ConfigError, match="exceeds the engine's"):
        lookahead_generate(model, reqs, LookaheadSpec(4, 4, 4), limit=LookaheadSpec(4, 3, 4))


def test_end_ids_stop_words_and_lengths(tiny_ckpt):
    model = Model.load(tiny_ckpt)
    free = generate(model, [Request(REPEATING, 30)])[0].output_ids
    end, stop = free[7], free[3:5]
    reqs = [Request(REPEATING, 30, end_ids=(end,)), Request(REPEATING, 30, stop_words=(stop,)),
            Request(REPEATING, 3)]
    want = generate(model, reqs)
    got = lookahead_generate(model, reqs, LookaheadSpec(4, 4, 4))
    assert [(r.output_ids, r.finish_reason) for r in got] == [(r.output_ids, r.finish_reason) for r in want]
    assert [r.finish_reason for r in got] == ["end_id", "stop_word", "length"]


def test_sliding_window_model_is_lossless(tmp_path):
    make_hf_model(tmp_path / "hf", "MistralForCausalLM", sliding_window=6)
    model = Model.load(convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32"))
    reqs = [Request(REPEATING, 30), Request(tuple(range(20, 31)), 30)]
    assert ([r.output_ids for r in lookahead_generate(model, reqs, LookaheadSpec(3, 3, 3))]
            == [r.output_ids for r in generate(model, reqs)])


def test_sampling_is_seeded_and_stays_in_vocabulary(tiny_ckpt):
    model = Model.load(tiny_ckpt)
    params = SamplingParams(temperature=0.8, top_k=20, seed=11)
    reqs = [Request(REPEATING, 32, params), Request((4, 4, 4), 32, params)]
    a = lookahead_generate(model, reqs, LookaheadSpec(4, 3, 4))
    b = lookahead_generate(model, reqs, LookaheadSpec(4, 3, 4))
    assert [r.output_ids for r in a] == [r.output_ids for r in b]
    assert all(len(r.output_ids) == 32 and all(0 <= t < 101 for t in r.output_ids) for r in a)
    greedy = lookahead_generate(model, [Request(REPEATING, 32)], LookaheadSpec(4, 3, 4))[0].output_ids
    assert a[0].output_ids != greedy


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_convert_stores_spec_and_generate_uses_it(tmp_path):
    make_hf_model(tmp_path / "hf")
    run = CliRunner().invoke
    r = run(cli, ["convert", str(tmp_path / "hf"), "-o", str(tmp_path / "ck"), "--dtype", "float32",
                  "--lookahead", "4,3,4"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["lookahead_config"] == {"max_window_size": 4, "max_ngram_size": 3, "max_verification_set_size": 4}
    assert cfg["max_draft_len"] == 15 and cfg["architecture"] == "LlamaForCausalLM"
    ids = ",".join(map(str, REPEATING))
    r = run(cli, ["generate", str(tmp_path / "ck"), "--input-ids", ids, "--max-tokens", "20", "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert obj["lookahead"] == "4,3,4" and obj["num_steps"] + obj["accepted_draft_tokens"] == 19
    assert obj["acceptance_length"] == pytest.approx(19 / obj["num_steps"])
    assert obj["compression_ratio"] == pytest.approx(20 / (obj["num_steps"] + 1))
    plain = run(cli, ["generate", str(tmp_path / "ck"), "--input-ids", ids, "--max-tokens", "20", "--json",
                      "--no-lookahead"])
    assert json.loads(plain.output)["output_ids"] == obj["output_ids"] and "lookahead" not in plain.output
    smaller = run(cli, ["generate", str(tmp_path / "ck"), "--input-ids", ids, "--max-tokens", "20", "--json",
                        "--lookahead", "2,2,1"])
    assert json.loads(smaller.output)["output_ids"] == obj["output_ids"]
    too_big = run(cli, ["generate", str(tmp_path / "ck"), "--input-ids", ids, "--lookahead", "4,4,4"])
    assert too_big.exit_code == 1
    assert too_big.output.strip() == ("Error: request lookahead (4,4,4) exceeds the engine's (4,3,4) "
                                      "(each of w, n, g must be <= W, N, G)")


@pytest.mark.parametrize("args,msg", [
    (["--lookahead", "2,1,3"], "Error: lookahead (2,1,3): N = 1 is plain decoding and needs W = 1 and G = 0"),
    (["--lookahead", "4;3;4"], "Error: lookahead spec must be 'W,N,G' (three integers, e.g. 4,3,4), got '4;3;4'"),
    (["--lookahead", "4,3,4", "--medusa", "heads.pt"], "Error: --medusa and --lookahead are exclusive: an engine "
                                                          "has one speculative decoding mode"),
])
def test_cli_convert_bad_lookahead(tmp_path, args, msg):
    make_hf_model(tmp_path / "hf")
    r = CliRunner().invoke(cli, ["convert", str(tmp_path / "hf"), "-o", str(tmp_path / "ck"), *args])
    assert r.exit_code == 1 and r.output.strip() == msg
    assert not (tmp_path / "ck").exists()


def test_cli_tune_lookahead_on_tiny_model_and_bad_input(tmp_path, tiny_ckpt):
    run = CliRunner().invoke
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"input_ids": list(REPEATING)}) + "\n" + json.dumps({"input_ids": [3, 9, 27]}) + "\n")
    r = run(cli, ["tune-lookahead", str(tiny_ckpt), "--prompts", str(f), "--try", "4,3,4", "--max-tokens", "16"])
    assert r.exit_code == 0, r.output
    assert " 4  3  4     15" in r.output and "plain greedy:" in r.output
    r = run(cli, ["tune-lookahead", str(tiny_ckpt), "--prompts", str(f), "--try", "4,1,4"])
    assert r.exit_code == 1 and r.output.strip() == ("Error: lookahead (4,1,4): N = 1 is plain decoding and "
                                                     "needs W = 1 and G = 0")
    r = run(cli, ["tune-lookahead", str(tiny_ckpt), "--prompts", str(tmp_path / "nope.txt")])
    assert r.exit_code == 2 and "nope.txt not found" in r.output


def test_code_prompts_end_at_the_start_of_a_function(tmp_path):
    from trtbuild.common.corpus import code_prompts

    class Chars:  # a character-level stand-in tokenizer: ids are code points
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    src = tmp_path / "m.py"
    src.write_text("x = 1\n" * 100 + "def area(w, h):\n    return w * h\n\n\nasync def main():\n    pass\n")
    got = ["".join(map(chr, p)) for p in code_prompts([src], Chars(), 5, 40, seed=0)]
    assert sorted(got) == sorted([("x = 1\n" * 100 + "def area(w, h):\n    return w * h\n")[-40:],
                                  ("    return w * h\n\n\nasync def main():\n    pass\n")[-40:]])


def test_rows_finishing_early_stay_in_bounds(tiny_ckpt):
    """A finished row keeps riding along in the batch: its dummy steps must not run past the cache
    (regression: max_new_tokens 5 next to 40 with long accepted n-grams overflowed it)."""
    model = Model.load(tiny_ckpt)
    reqs = [Request(REPEATING, 5), Request(REPEATING * 2, 3), Request((3, 9, 27, 81), 40)]
    want = [generate(model, [r])[0].output_ids for r in reqs]
    for spec in (LookaheadSpec(5, 5, 5), LookaheadSpec(2, 4, 8)):
        assert [r.output_ids for r in lookahead_generate(model, reqs, spec)] == want
