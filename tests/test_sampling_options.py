"""Per-request options of TensorRT-LLM's executor: repetition / presence / frequency penalties,
min_tokens, log probs (cumulative and per token), normalize_log_probs, and the scheduler's JobInfo
(perf timestamps, KV cache blocks). Every expected value is computed here by hand from the logits
of a plain full forward pass over prompt + output, independently of the decoding code."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import speculative_checkpoints
from trtbuild.common.errors import GenerationError
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.runtime import Model, Request, SamplingParams, generate
from trtbuild.runtime.generate import hidden_states
from trtbuild.runtime import lookahead_generate
from trtbuild.runtime import medusa_generate
from trtbuild.runtime.scheduler import Scheduler

PROMPTS = [(5, 6, 7, 8, 5, 6, 7, 8, 5, 6), (3, 9, 27, 81), tuple(range(10, 30)), (11, 12, 13, 11, 12)]
CHOICES = "{0}, {1}, {0, 0}, {0, 1}, {0, 0, 0}"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return speculative_checkpoints(tmp_path_factory.mktemp("opts"))


@pytest.fixture(scope="module")
def model(ckpts) -> Model:
    return Model.load(ckpts["plain"])


def next_logits(model: Model, prompt, out) -> list[torch.Tensor]:
    """Logits [V] (float64) for output position k = 0..len(out), from one causal pass over prompt + out."""
    seq = list(prompt) + list(out)
    with torch.inference_mode():
        logits = model.logits(hidden_states(model, seq)).double()
    return [logits[len(prompt) - 1 + k] for k in range(len(out) + 1)]


def penalised(x: torch.Tensor, context, rep=1.0, pres=0.0, freq=0.0, temperature=1.0) -> torch.Tensor:
    """The penalty rule by hand, token by token: temperature first, then repetition, presence,
    frequency over the counts of prompt + output so far."""
    x = x.clone() / temperature
    for tok, n in Counter(context).items():
        if rep != 1.0:
            x[tok] = x[tok] * rep if x[tok] < 0 else x[tok] / rep
        x[tok] -= pres
        x[tok] -= freq * n
    return x


def is_argmax(x: torch.Tensor, tok: int) -> bool:
    return bool(x[tok] >= x.max() - 1e-4)  # float32 decoding vs float64 here: no near-tie may flip


PENALTIES = [dict(repetition_penalty=1.8), dict(repetition_penalty=0.6), dict(presence_penalty=2.0),
             dict(frequency_penalty=1.0), dict(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.4)]


@pytest.mark.parametrize("pen", PENALTIES)
def test_greedy_with_penalties_is_the_argmax_of_the_penalised_logits(model, pen):
    for prompt in PROMPTS[:2]:
        plain = generate(model, [Request(prompt, 24)])[0].output_ids
        got = generate(model, [Request(prompt, 24, SamplingParams(**pen))])[0]
        assert got.output_ids != plain and len(got.output_ids) == 24  # the penalty changed the output
        rules = dict(rep=pen.get("repetition_penalty", 1.0), pres=pen.get("presence_penalty", 0.0),
                     freq=pen.get("frequency_penalty", 0.0))
        for k, x in enumerate(next_logits(model, prompt, got.output_ids)[:-1]):
            assert is_argmax(penalised(x, prompt + got.output_ids[:k], **rules), got.output_ids[k]), k


def test_penalties_apply_after_the_temperature(model):
    """top_k 1 (greedy) at temperature 0.25: presence is subtracted from logits / 0.25, which differs
    from (logits - presence) / 0.25 and from temperature 0."""
    prompt = PROMPTS[0]
    p = SamplingParams(temperature=0.25, top_k=1, presence_penalty=3.0)
    got = generate(model, [Request(prompt, 24, p)])[0].output_ids
    cold = generate(model, [Request(prompt, 24, SamplingParams(presence_penalty=3.0))])[0].output_ids
    assert got != cold
    for k, x in enumerate(next_logits(model, prompt, got)[:-1]):
        assert is_argmax(penalised(x, prompt + got[:k], pres=3.0, temperature=0.25), got[k]), k


def test_the_prompt_counts_for_every_penalty(model):
    """The first token: only the prompt has been seen, and each penalty acts on its tokens."""
    prompt, x = next((p, x) for p in (PROMPTS[1] + (t,) for t in range(101))
                     for x in next_logits(model, p, ()) if int(x.argmax()) in p)  # its greedy token is in it
    top = int(x.argmax())
    for pen, rules in ((dict(presence_penalty=3.0), dict(pres=3.0)), (dict(frequency_penalty=3.0), dict(freq=3.0)),
                       (dict(repetition_penalty=3.0), dict(rep=3.0))):
        first = generate(model, [Request(prompt, 1, SamplingParams(**pen))])[0].output_ids[0]
        assert is_argmax(penalised(x, prompt, **rules), first) and first != top, pen


def test_min_tokens_masks_the_end_ids_until_reached(model):
    prompt = PROMPTS[1]
    free = generate(model, [Request(prompt, 30)])[0].output_ids
    end = free[0]  # the greedy first token: an immediate end without min_tokens
    assert generate(model, [Request(prompt, 30, end_ids=(end,))])[0].output_ids == ()
    for n in (1, 5, 12):
        r = generate(model, [Request(prompt, 30, end_ids=(end, free[1]), min_tokens=n)])[0]
        out = r.output_ids
        assert len(out) >= n and not set(out[:n]) & {end, free[1]}
        for k, x in enumerate(next_logits(model, prompt, out)):
            if k < n:
                x = x.clone()
                x[[end, free[1]]] = -math.inf
            if k < len(out):
                assert is_argmax(x, out[k]), k
            elif r.finish_reason == "end_id":  # the end id it stopped at is the model's own choice
                assert max(x[end], x[free[1]]) >= x.max() - 1e-4
    r = generate(model, [Request(prompt, 3, end_ids=(end,), min_tokens=10)])[0]  # min_tokens > max_new_tokens
    assert len(r.output_ids) == 3 and r.finish_reason == "length"


def test_greedy_log_probs_are_the_log_softmax_at_the_chosen_tokens(model):
    prompt = PROMPTS[2]
    free = generate(model, [Request(prompt, 12)])[0].output_ids
    r = generate(model, [Request(prompt, 12, return_log_probs=True)])[0]
    assert r.output_ids == free and len(r.output_log_probs) == 12
    lsm = [x.log_softmax(-1) for x in next_logits(model, prompt, free)]
    want = [float(lsm[k][t]) for k, t in enumerate(free)]
    assert r.output_log_probs == pytest.approx(want, abs=1e-4)
    assert r.cum_log_prob == pytest.approx(sum(want), abs=1e-4)
    # stopped at an end id: output_log_probs follow output_ids; the cumulative one has the end id's too
    j = next(k for k in range(1, 12) if free[k] not in free[:k])
    e = generate(model, [Request(prompt, 12, end_ids=(free[j],), return_log_probs=True)])[0]
    assert e.output_ids == free[:j] and e.finish_reason == "end_id"
    assert e.output_log_probs == pytest.approx(want[:j], abs=1e-4)
    assert e.cum_log_prob == pytest.approx(sum(want[:j + 1]), abs=1e-4)
    plain = generate(model, [Request(prompt, 12)])[0]
    assert plain.cum_log_prob is None and plain.output_log_probs is None


def test_sampled_log_probs_use_the_tempered_penalised_logits_before_top_k(model):
    prompt = PROMPTS[0]
    p = SamplingParams(temperature=0.7, top_k=8, top_p=0.9, seed=11, repetition_penalty=1.5, frequency_penalty=0.3)
    r = generate(model, [Request(prompt, 16, p, return_log_probs=True)])[0]
    assert r.output_ids == generate(model, [Request(prompt, 16, p)])[0].output_ids  # log probs change no draw
    xs = next_logits(model, prompt, r.output_ids)
    want = [float(penalised(xs[k], prompt + r.output_ids[:k], rep=1.5, freq=0.3, temperature=0.7)
                  .log_softmax(-1)[t]) for k, t in enumerate(r.output_ids)]
    assert r.output_log_probs == pytest.approx(want, abs=1e-4)
    assert r.cum_log_prob == pytest.approx(sum(want), abs=1e-4)
    # each drawn token is in its step's top-k of the penalised logits
    for k, t in enumerate(r.output_ids):
        x = penalised(xs[k], prompt + r.output_ids[:k], rep=1.5, freq=0.3, temperature=0.7)
        assert x[t] >= torch.topk(x, 8).values[-1] - 1e-4


def test_normalize_log_probs(model):
    """Upstream's normalize_log_probs: a top-k request's per-token log prob over its top-k set (greedy:
    0.0), the cumulative one unnormalised; top-p only requests are never normalised."""
    prompt = PROMPTS[1]
    g = generate(model, [Request(prompt, 8, return_log_probs=True)], normalize_log_probs=True)[0]
    raw = generate(model, [Request(prompt, 8, return_log_probs=True)])[0]
    assert g.output_log_probs == (0.0,) * 8 and g.cum_log_prob == pytest.approx(raw.cum_log_prob, abs=1e-6)
    p = SamplingParams(temperature=1.0, top_k=5, seed=2)
    k = generate(model, [Request(prompt, 8, p, return_log_probs=True)], normalize_log_probs=True)[0]
    xs = next_logits(model, prompt, k.output_ids)
    for i, t in enumerate(k.output_ids):
        lsm = xs[i].log_softmax(-1)
        assert k.output_log_probs[i] == pytest.approx(float(lsm[t] - torch.logsumexp(torch.topk(lsm, 5).values, -1)),
                                                      abs=1e-4)
    tp = SamplingParams(temperature=1.0, top_p=0.8, seed=2)
    a = generate(model, [Request(prompt, 8, tp, return_log_probs=True)], normalize_log_probs=True)[0]
    b = generate(model, [Request(prompt, 8, tp, return_log_probs=True)])[0]
    assert a.output_log_probs == b.output_log_probs


def test_options_are_per_request_in_a_batch(model):
    reqs = [Request(PROMPTS[0], 10, SamplingParams(repetition_penalty=2.0), return_log_probs=True),
            Request(PROMPTS[1], 14), Request(PROMPTS[2], 6, min_tokens=3, end_ids=(7,)),
            Request(PROMPTS[3], 9, SamplingParams(temperature=0.8, seed=5, presence_penalty=1.0))]
    together = generate(model, reqs)
    alone = [generate(model, [r])[0] for r in reqs]
    assert [r.output_ids for r in together] == [r.output_ids for r in alone]
    assert together[0].output_log_probs == pytest.approx(alone[0].output_log_probs, abs=1e-5)
    assert together[1].output_log_probs is None


# --- the scheduler: every mode applies the same rule ----------------------------------------------


def _mixed_requests(end: int) -> list[tuple[Request, str | None]]:
    return [(Request(PROMPTS[0], 20, SamplingParams(repetition_penalty=1.8), return_log_probs=True), None),
            (Request(PROMPTS[1], 18), "plain"),
            (Request(PROMPTS[2], 16, SamplingParams(presence_penalty=1.5, frequency_penalty=0.5)), None),
            (Request(PROMPTS[1], 12, end_ids=(end,), min_tokens=6, return_log_probs=True), None),
            (Request(PROMPTS[3], 15, SamplingParams(frequency_penalty=0.8), return_log_probs=True), "plain"),
            (Request(PROMPTS[0], 14), None),
            (Request(PROMPTS[3], 12, SamplingParams(temperature=0.9, top_k=20, seed=7, repetition_penalty=1.4),
                     return_log_probs=True), None)]


@pytest.mark.parametrize("kind", ["plain", "lookahead", "medusa"])
def test_scheduler_mixed_batch_equals_plain_decoding(ckpts, kind):
    model = Model.load(ckpts[kind])
    end = generate(model, [Request(PROMPTS[1], 4)])[0].output_ids[0]
    jobs = _mixed_requests(end)
    want = [generate(model, [r])[0] for r, _ in jobs]
    assert want[3].output_ids[:1] != (end,) and len(want[3].output_ids) >= 6
    sched = Scheduler(model, max_batch_size=4, max_seq_len=128)
    streams: dict[int, list[int]] = {}
    seen_lps: dict[int, list[float]] = {}
    ends: dict[int, object] = {}
    ids = []
    for i, (r, mode) in enumerate(jobs):
        def cb(tokens, result, i=i):
            info = sched.job_info(ids[i])
            streams.setdefault(i, []).extend(tokens)
            if jobs[i][0].return_log_probs:  # the log probs of every token delivered so far
                assert len(info.log_probs) == len(streams[i])
                seen_lps.setdefault(i, []).extend(info.log_probs[len(info.log_probs) - len(tokens):])
            else:
                assert info.log_probs == () and info.cum_log_prob is None
            if result is not None:
                ends[i] = (result, info)
        ids.append(sched.reserve_id())
        sched.submit(r, cb, "engine" if mode is None else None, job_id=ids[i])
    sched.run_until_idle()
    for i, (r, mode) in enumerate(jobs):
        got, info = ends[i]
        assert got.output_ids == want[i].output_ids == tuple(streams[i]), (kind, i)
        assert got.finish_reason == want[i].finish_reason
        if r.return_log_probs:
            assert got.output_log_probs == pytest.approx(want[i].output_log_probs, abs=1e-4)
            assert tuple(seen_lps[i]) == got.output_log_probs
            assert got.cum_log_prob == pytest.approx(want[i].cum_log_prob, abs=1e-4) == info.cum_log_prob
        else:
            assert got.output_log_probs is None and got.cum_log_prob is None
        if kind != "plain" and mode is None:
            assert info.drafted > 0  # the request with options ran as a speculative row
    if kind != "plain":
        assert sum(ends[i][1].accepted for i in (0, 2, 3)) > 0  # and drafts were accepted under the rules


def test_job_info_perf_metrics_and_kv_blocks(ckpts):
    model = Model.load(ckpts["lookahead"])
    sched = Scheduler(model, max_batch_size=1, max_seq_len=128)
    infos: dict[int, list] = {0: [], 1: []}
    ids = [sched.reserve_id(), sched.reserve_id()]
    for k, (r, mode) in enumerate([(Request(PROMPTS[2], 40), None), (Request(PROMPTS[1], 5), "plain")]):
        sched.submit(r, lambda t, res, k=k: infos[k].append((sched.job_info(ids[k]), res)),
                     "engine" if mode is None else None, job_id=ids[k])
    waiting = sched.job_info(ids[1])
    assert waiting.arrival_time_ns > 0 and waiting.first_scheduled_time_ns == waiting.first_token_time_ns == 0
    assert waiting.kv_cache_alloc_new_blocks == 0 and sched.progress(ids[1]) == (0, 0, 0)
    sched.run_until_idle()
    assert sched.job_info(ids[0]) is None  # known until its final callback has returned
    a, b = infos[0][-1][0], infos[1][-1][0]
    for info in (a, b):
        assert 0 < info.arrival_time_ns <= info.first_scheduled_time_ns <= info.first_token_time_ns
        assert info.first_token_time_ns <= info.last_token_time_ns
        assert info.kv_cache_reused_blocks == 0 and info.kv_cache_alloc_total_blocks == info.kv_cache_alloc_new_blocks
    assert b.first_scheduled_time_ns >= a.last_token_time_ns  # one row: the second waited for the first
    draft = LookaheadSpec(4, 3, 4).decoding_tokens - 1
    assert a.kv_cache_alloc_new_blocks == math.ceil((len(PROMPTS[2]) + 40 + draft) / 32)
    assert b.kv_cache_alloc_new_blocks == math.ceil((len(PROMPTS[1]) + 5) / 32)
    res = infos[0][-1][1]
    assert (a.steps, a.accepted) == (res.num_steps, res.accepted_draft_tokens) and a.drafted > 0
    assert sched.progress(ids[0]) == (0, 0, 0)  # gone once finished, as before
    firsts = [i.first_token_time_ns for i, _ in infos[0]]
    assert len(set(firsts)) == 1 and [i.last_token_time_ns for i, _ in infos[0]] == sorted(
        i.last_token_time_ns for i, _ in infos[0])
    small = Scheduler(model, max_batch_size=1, max_seq_len=128, tokens_per_block=8)
    blocks = []
    jid = small.reserve_id()
    small.submit(Request(PROMPTS[1], 5), lambda t, r: blocks.append(small.job_info(jid).kv_cache_alloc_new_blocks),
                 job_id=jid)
    small.run_until_idle()
    assert set(blocks) == {math.ceil((len(PROMPTS[1]) + 5 + draft) / 8)}
    with pytest.raises(GenerationError, match="tokens_per_block"):
        Scheduler(model, tokens_per_block=0)


# --- bad values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,msg", [
    (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0"),
    (dict(repetition_penalty=-1.0), "repetition_penalty must be a finite number > 0"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(presence_penalty=float("nan")), "presence_penalty must be a finite number"),
    (dict(frequency_penalty=float("-inf")), "frequency_penalty must be a finite number"),
])
def test_invalid_penalties(kw, msg):
    with pytest.raises(GenerationError, match=msg):
        SamplingParams(**kw)
    SamplingParams(presence_penalty=-2.0, frequency_penalty=-1.0, repetition_penalty=0.5)  # any finite value


def test_invalid_request_options_and_rules_in_every_decoder(ckpts, model):
    for bad in (-1, 1.5, True):
        with pytest.raises(GenerationError, match="min_tokens must be an integer >= 0"):
            generate(model, [Request(PROMPTS[0], 4, min_tokens=bad)])
    with pytest.raises(GenerationError, match="return_log_probs must be true or false"):
        generate(model, [Request(PROMPTS[0], 4, return_log_probs=1)])
    with pytest.raises(GenerationError, match="min_tokens must be an integer"):
        Scheduler(model, max_batch_size=1, max_seq_len=64).submit(Request(PROMPTS[0], 4, min_tokens=-3),
                                                                   lambda t, r: None)
    la, md = Model.load(ckpts["lookahead"]), Model.load(ckpts["medusa"])
    from trtbuild.common.medusa.choices import parse_choices
    # offline Medusa / lookahead decode through the scheduler's core, so they apply the same rules as plain
    for req in (Request(PROMPTS[0], 6, SamplingParams(presence_penalty=1.0)), Request(PROMPTS[0], 6, min_tokens=2),
                Request(PROMPTS[0], 6, return_log_probs=True)):
        want = generate(la, [req])[0]
        got = lookahead_generate(la, [req], LookaheadSpec(4, 3, 4))[0]
        assert got.output_ids == want.output_ids and got.cum_log_prob == pytest.approx(want.cum_log_prob, abs=1e-4) \
            if want.cum_log_prob is not None else got.output_ids == want.output_ids
        assert medusa_generate(md, [req], parse_choices(CHOICES).choices)[0].output_ids == \
            generate(md, [req])[0].output_ids


# --- bad words and embedding bias ---------------------------------------------------------------------


def test_banned_tokens_by_hand():
    from trtbuild.runtime.sampling import banned_tokens

    assert banned_tokens([(7,)], []) == (7,)  # one token: always
    assert banned_tokens([(3, 4, 9)], [1, 3, 4]) == (9,) and banned_tokens([(3, 4, 9)], [3, 4, 1]) == ()
    assert banned_tokens([(3, 4, 9), (4, 8), (5,)], [2, 3, 4]) == (9, 8, 5)
    assert banned_tokens([(3, 4, 9)], [4]) == ()  # too short to match


def test_bad_words_and_embedding_bias_greedy_by_hand(model, ckpts):
    prompt, n = PROMPTS[0], 6
    plain = generate(model, [Request(prompt, n)])[0].output_ids
    # ban the plain greedy second token after the first: the second token changes, by hand
    bad = ((plain[0], plain[1]), (plain[3],))
    got = generate(model, [Request(prompt, n, bad_words=bad)])[0].output_ids
    seq, want = list(prompt), []
    for k in range(n):
        x = next_logits(model, prompt, want)[k].clone()
        x[plain[3]] = float("-inf")
        if seq[-1] == plain[0]:
            x[plain[1]] = float("-inf")
        want.append(int(x.argmax()))
        seq.append(want[-1])
    assert list(got) == want and got != plain and plain[3] not in got
    # a bias that makes token 42 win everywhere, and one that only nudges
    vocab = model.cfg.dims.vocab_size
    bias = [0.0] * vocab
    bias[42] = 1e4
    assert generate(model, [Request(prompt, 3, embedding_bias=tuple(bias))])[0].output_ids == (42, 42, 42)
    nudge = [0.0] * vocab
    nudge[plain[0]] = -3.0
    got = generate(model, [Request(prompt, n, embedding_bias=tuple(nudge))])[0].output_ids
    want = []
    for k in range(n):
        x = next_logits(model, prompt, want)[k] + torch.tensor(nudge, dtype=torch.float64)
        want.append(int(x.argmax()))
    assert list(got) == want
    # the scheduler, on a speculative engine, gives the same (verification under the request's rule)
    for kind in ("lookahead", "medusa"):
        from trtbuild.runtime.scheduler import schedule_all

        spec_model = Model.load(ckpts[kind])
        res = schedule_all(Scheduler(spec_model, 4, 128), [Request(prompt, n, bad_words=bad),
                                                           Request(prompt, n, embedding_bias=tuple(nudge))])
        assert list(res[0].output_ids) == list(generate(model, [Request(prompt, n, bad_words=bad)])[0].output_ids)
        assert list(res[1].output_ids) == want
    with pytest.raises(GenerationError, match="embedding_bias has 3 entries"):
        generate(model, [Request(prompt, 2, embedding_bias=(0.0, 1.0, 2.0))])
    with pytest.raises(GenerationError, match="empty bad word"):
        generate(model, [Request(prompt, 2, bad_words=((),))])
