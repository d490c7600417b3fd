"""Issue 16's foundations: the measured cost model (and its cache) and the governor's allocation,
checked by hand and against brute force."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from conftest import speculative_checkpoints
from trtbuild.common.errors import ConfigError
from trtbuild.runtime.cost import CACHE, CostModel, calibrate, knots, linears_id, load, machine_id, save
from trtbuild.runtime.governor import allocate


def test_allocation_by_hand():
    a = [(0, 0.0), (1, 0.8), (2, 1.2)]
    b = [(0, 0.0), (1, 0.3)]
    # two rows padded to width w cost t(2 w), t(T) = 1 + 0.5 T: w = 1: 2 / 2 = 1.0; w = 2: a (1, .8) and b
    # (1, .3) ride together, 3.1 / 3 = 1.033; w = 3: 3.5 / 4 = 0.875 -> both draft one token (a packed
    # runtime would have left b out: its token would cost, here the padding is paid anyway)
    choice, rate = allocate([a, b], lambda T: 1 + 0.5 * T)
    assert choice == [1, 1] and rate == pytest.approx(3.1 / 3)
    # a CPU-like cost, every token paid in full: no draft pays
    assert allocate([a, b], lambda T: 0.01 * T)[0] == [0, 0]
    # a GPU-like cost, nearly flat: every draft pays (w = 3: 3.5 / 1.006 > w = 2: 3.1 / 1.004)
    assert allocate([a, b], lambda T: 1 + 0.001 * T)[0] == [2, 1]
    # a row that drafts all it has (3 tokens wide, emitting 1 + 1.0) sets the width: a rides free
    choice, rate = allocate([a], lambda T: 1 + 0.5 * T, fixed_rows=1, fixed_width=3, fixed_emitted=1.0)
    assert choice == [2] and rate == pytest.approx((2 + 1.0 + 1.2) / 4)
    with pytest.raises(ValueError, match="starts at"):
        allocate([[(1, 0.5)]], lambda T: T)


def test_allocation_pays_the_heads_pass_once():
    """A Medusa row (its drafts need the heads pass) beside a lookahead-like row; t(T) = 1 + 0.1 T.
    heads 0.5 s: w = 1: 2 / 1.2 = 1.667; w = 2: heads, a 1 node: 2.8 / 1.9 = 1.474 (no heads: 2 / 1.4);
    w = 3: no heads, c alone: 2.9 / 1.6 = 1.8125; heads, both: 4.1 / 2.1 = 1.952 -> both draft.
    heads 1.0 s: both: 4.1 / 2.6 = 1.577 < c alone 1.8125 -> the Medusa row waits."""
    a = [(0, 0.0), (1, 0.8), (2, 1.2)]
    c = [(0, 0.0), (2, 0.9)]
    t = lambda T: 1 + 0.1 * T  # noqa: E731
    choice, rate = allocate([a, c], t, heads=[True, False], heads_seconds=0.5)
    assert choice == [2, 1] and rate == pytest.approx(4.1 / 2.1)
    choice, rate = allocate([a, c], t, heads=[True, False], heads_seconds=1.0)
    assert choice == [0, 1] and rate == pytest.approx(2.9 / 1.6)


def _brute(curves, t, heads, heads_seconds):
    def rate(ch):
        width = 1 + max(c[i][0] for c, i in zip(curves, ch))
        paid = any(h and c[i][0] for c, h, i in zip(curves, heads, ch))
        return (len(curves) + sum(c[i][1] for c, i in zip(curves, ch))) / (
            t(len(curves) * width) + (heads_seconds if paid else 0.0))
    return max(rate(ch) for ch in itertools.product(*[range(len(c)) for c in curves]))


def test_allocation_is_exact_against_brute_force():
    """Random curves (Medusa-like unit steps and lookahead-like jumps, not necessarily concave), random
    heads flags, fixed-plus-linear and convex step costs: the governor's rate is the best there is."""
    rng = random.Random(0)
    for case in range(300):
        curves, heads = [], []
        for _ in range(rng.randint(1, 4)):
            curve, x, e = [(0, 0.0)], 0, 0.0
            for _ in range(rng.randint(0, 4)):
                x += rng.choice([1, 1, 2, 4])
                e += rng.random()
                curve.append((x, e))
            curves.append(curve)
            heads.append(rng.random() < 0.5)
        fixed, slope, bend = rng.uniform(0.1, 2), rng.uniform(0.01, 1), rng.choice([0.0, 0.02])
        t = lambda T, f=fixed, s=slope, q=bend: f + s * T + q * T * T  # noqa: E731
        hs = rng.choice([0.0, 0.3])
        _, rate = allocate(curves, t, heads=heads, heads_seconds=hs)
        assert rate == pytest.approx(_brute(curves, t, heads, hs)), case


def test_cost_model_interpolates_and_follows_live_steps():
    cost = CostModel((1, 4, 16), (0.010, 0.013, 0.040), "m", "e")
    assert cost.step_time(1) == pytest.approx(0.010)
    assert cost.step_time(2) == pytest.approx(0.011)  # a third of the way from 1 to 4
    assert cost.step_time(10) == pytest.approx(0.0265)
    assert cost.step_time(32) == pytest.approx(0.076)  # the last segment extrapolates
    assert cost.step_time(0) == pytest.approx(0.010)  # never below the first knot
    moved = cost.observe(4, 0.023, weight=0.5, overall=0.0)
    assert moved.seconds == pytest.approx((0.010, 0.018, 0.040))
    # twice as slow as predicted at 4 tokens, overall 0.5: every knot x 1.5 (0.015, 0.0195, 0.060), then
    # the nearest moves half way to 0.026 (seen at 4 tokens, on the scaled curve): 0.02275
    moved = cost.observe(4, 0.026, weight=0.5, overall=0.5)
    assert moved.seconds == pytest.approx((0.015, 0.02275, 0.060))
    for bad in (((1,), (0.1,)), ((4, 1), (0.1, 0.2)), ((1, 2), (0.1, 0.0))):
        with pytest.raises(ConfigError):
            CostModel(*bad, "m", "e")
    assert knots(20) == (1, 2, 4, 8, 16, 20) and knots(1) == (1, 2)


def test_calibration_is_measured_cached_and_refused_elsewhere(tmp_path):
    from trtbuild.runtime import Model

    model = Model.load(speculative_checkpoints(tmp_path)["plain"])
    cost = calibrate(model, 24, engine="tiny", repeats=2)
    assert cost.tokens == (1, 2, 4, 8, 16, 24) and all(s > 0 for s in cost.seconds)
    assert list(cost.seconds) == sorted(cost.seconds)  # a step never gets cheaper with more tokens
    here = machine_id("cpu", linears_id(model))
    assert cost.machine == here and f"linears {model.backend}" in here
    save(cost, tmp_path)
    assert load(tmp_path, here, "tiny") == cost
    with pytest.raises(ConfigError, match="measured on another machine"):  # same box, other linears
        load(tmp_path, machine_id("cpu", "plain" if model.backend != "plain" else "onednn"), "tiny")
    with pytest.raises(ConfigError, match="measured on another machine"):
        load(tmp_path, "another box", "tiny")
    with pytest.raises(ConfigError, match="measured for another engine"):
        load(tmp_path, here, "other")
    (tmp_path / CACHE).write_text(json.dumps({"tokens": [1]}))
    with pytest.raises(ConfigError, match="not a cost calibration"):
        load(tmp_path, here, "tiny")
    with pytest.raises(ConfigError, match="no cost calibration"):
        load(tmp_path / "none", here, "tiny")


PROMPTS = [(5, 9, 17, 5, 9, 17, 5, 9), (3, 1, 4, 1, 5, 9, 2, 6), (2, 7, 1, 8, 2, 8), (1, 1, 2, 3, 5, 8, 13)]


def _run(model, speculation, cost=None, n=(24, 12, 30, 18)):
    from trtbuild.runtime import Request, Scheduler

    sched = Scheduler(model, max_batch_size=4, max_seq_len=64, speculation=speculation, cost=cost)
    got, jobs = {}, {}
    for i, (p, k) in enumerate(zip(PROMPTS, n)):
        jobs[i] = sched.submit(Request(p, k), lambda t, r, i=i: got.__setitem__(i, r) if r is not None else None)
        if i == 1:  # the last two join a running batch
            for _ in range(3):
                sched.step()
    sched.run_until_idle()
    return [got[i] for i in range(len(PROMPTS))], sched


def test_governed_medusa_rows_switch_drafts_mid_request_and_stay_lossless(tmp_path):
    from trtbuild.runtime import Model, Request, generate

    model = Model.load(speculative_checkpoints(tmp_path)["medusa"])  # random heads: drafts rarely accepted
    want = [generate(model, [Request(p, k)])[0].output_ids for p, k in zip(PROMPTS, (24, 12, 30, 18))]
    always, _ = _run(model, "always")
    off, _ = _run(model, "off")
    # drafts pay while the prior (each node 1/2 given its parent) holds, and stop paying as the rows learn
    # that these heads miss: rows switch from drafting to not, per row, mid-request
    cost = CostModel((1, 64), (1.0, 1.0 + 0.3 * 63), "m", "e")
    auto, sched = _run(model, "auto", cost)
    full = 5  # the tree's draft nodes
    for res in (always, off, auto):
        assert [r.output_ids for r in res] == want  # greedy: token for token, whatever was drafted
    assert all(r.accepted_draft_tokens == 0 for r in off)
    steps = [r.num_steps for r in auto]
    history = list(sched.stats.history)  # (time, rows, tokens verified)
    assert any(v > rows for _, rows, v in history) and any(v == rows for _, rows, v in history), history
    assert sum(s * full for s in steps) > sum(v - rows for _, rows, v in history) > 0  # partial trees
    with pytest.raises(Exception, match="needs a cost model"):
        _run(model, "auto")
    with pytest.raises(Exception, match="must be always, off or auto"):
        _run(model, "sometimes")


def test_governed_lookahead_rows_switch_and_stay_lossless(tmp_path):
    from trtbuild.runtime import Model, Request, generate

    model = Model.load(speculative_checkpoints(tmp_path)["lookahead"])  # (4, 3, 4)
    want = [generate(model, [Request(p, k)])[0].output_ids for p, k in zip(PROMPTS, (24, 12, 30, 18))]
    # a step costs 0.02 s per token beyond the first: the prior (half a token per candidate set) pays at
    # first; the rows learn from what they verify that this random model rarely takes a draft
    cost = CostModel((1, 64), (1.0, 1.0 + 0.02 * 63), "m", "e")
    auto, sched = _run(model, "auto", cost)
    off, _ = _run(model, "off", cost)
    always, _ = _run(model, "always")
    for res in (always, off, auto):
        assert [r.output_ids for r in res] == want
    assert all(r.accepted_draft_tokens == 0 for r in off)
    history = list(sched.stats.history)  # (time, rows, tokens verified)
    assert any(v > rows for _, rows, v in history) and any(v == rows for _, rows, v in history), history
    st = sched.stats
    assert st.row_steps == sum(r.num_steps for r in auto) and 0 < st.speculating_row_steps < st.row_steps
    assert st.drafted == sum(v - rows for _, rows, v in st.history)
    assert st.accepted == sum(r.accepted_draft_tokens for r in auto) and st.expected > 0


def test_lookahead_options_by_hand(tmp_path):
    """(W, N, G) = (2, 3, 2) with a prompt whose root 5 has two continuations in the pool: no draft;
    one candidate (2 tokens); two (4); the whole step (the window, 2 x 1 - 1 = 1 token, + 4). Prior
    (no engine evidence yet): half a token for each candidate set plus the bonus 0.5 sqrt(0.5 / 2) =
    0.25, and as much again for the window on top."""
    from trtbuild.common.lookahead.spec import LookaheadSpec
    from trtbuild.runtime.decoding import LookaheadDecoder

    dec = LookaheadDecoder(LookaheadSpec(2, 3, 2), (5, 1, 2, 5, 3, 4), 5)
    assert dec.options() == [(0, 0.0), (2, 0.75), (4, 0.75), (5, 1.5)]
    d = dec.propose(5, None, 2)  # one candidate, no window: the newest continuation of 5
    assert d.tokens == (5, 3, 4) and d.depths == (0, 1, 2) and not dec.windowed
    # the model's argmax after 5 is 3, after 3 is 9: the candidate matches one token
    dec.advance(d, [0, 1], [3, 9, 7], [3, 9])
    assert dec.pool_gain == [[1.0, 1.0], [0.0, 0.0]]  # g' = 2 was not verified
    ev = dec.evidence  # the engine's, prior 1/2 at weight 2: (1 + 1) / 3; a row blends it at weight 4
    assert ev.sum[0] / ev.weight[0] == pytest.approx(2 / 3)
    m = (1 + 4 * 2 / 3) / 5
    assert ev.estimate(0, *dec.pool_gain[0]) == pytest.approx(m + 0.5 * (m / 3) ** 0.5)
    assert dec.levels == [[5, dec.levels[0][1]]]  # the window waited
    assert dec.propose(9, None, 0).tokens == (9,)
    full = dec.propose(9, None, None)
    assert dec.windowed and full.size == 2  # root 9 has no candidates: the window's level 0 alone


def test_budgets_by_hand(tmp_path):
    """One Medusa row beside a plain row, both auto; t(T) = 1 + 0.05 T, no heads cost. The engine has
    seen each node accepted half the time over 50 tries: a row's estimate is 0.5 plus the confidence
    bonus 0.5 sqrt(0.5 / 50) = 0.05, so path probabilities are 0.55 at depth 1, 0.3025 at 2, 0.166375
    at 3. k nodes -> E: 0, .55, 1.1, 1.4025, 1.705, 1.871375; two rows of width k + 1:
    (2 + E) / (1 + 0.1 (k + 1)) = 1.818, 2.125, 2.385, 2.430, 2.470, 2.420 -> 4 nodes."""
    from trtbuild.runtime import Model
    from trtbuild.runtime.decoding import Evidence, PlainDecoder, Row, budgets, make_decoder, resolve_decoding
    from trtbuild.runtime.generate import Request

    model = Model.load(speculative_checkpoints(tmp_path)["medusa"])  # {0}, {1}, {0, 0}, {0, 1}, {0, 0, 0}
    spec = resolve_decoding(model)
    req = Request((1, 2, 3), 4)
    pick = req.picker(model.cfg.dims.vocab_size, "cpu")
    cost = CostModel((1, 64), (1.05, 1.0 + 0.05 * 64), "m", "e")
    seen = Evidence(6)
    seen.sum, seen.weight = [25.0] * 6, [50.0] * 6

    def rows(a, b):
        return [Row(request=req, decoding=spec, picker=pick, decoder=make_decoder(spec, req.prompt, 1, {spec: seen}),
                    speculation=a),
                Row(request=req, decoding=None, picker=pick, decoder=PlainDecoder(), speculation=b)]

    r = rows("auto", "auto")
    curve = r[0].decoder.options()
    assert [k for k, _ in curve] == list(range(6))
    assert [e for _, e in curve] == pytest.approx([0.0, 0.55, 1.1, 1.4025, 1.705, 1.871375])
    assert budgets(r, cost) == ([4, 0], pytest.approx(1.705))
    # a fresh engine: no evidence, prior 1/2 at weight 2 and a bonus of 1/4: 0.75 a node, path
    # probabilities .75, .5625, .421875
    fresh = make_decoder(spec, req.prompt, 1).options()
    assert [e for _, e in fresh] == pytest.approx([0.0, 0.75, 1.5, 2.0625, 2.625, 3.046875])
    assert budgets(rows("off", "always"), None) == ([0, None], 0.0)  # no auto row: no cost model needed
    assert budgets(rows("always", "off"), None)[0] == [None, 0]
    with pytest.raises(Exception, match="needs a cost model"):
        budgets(rows("auto", "off"), None)
    # heads cost 1 s: the draft no longer pays for itself (3.705 / 2.5 = 1.482 < 1.818)
    from dataclasses import replace
    assert budgets(rows("auto", "auto"), replace(cost, heads=1.0))[0] == [0, 0]


def test_requests_choose_their_own_speculation(tmp_path):
    """An always-scheduler takes off and always requests side by side (and auto ones once it has a cost
    model); a bad mode is refused at submit."""
    from trtbuild.runtime import Model, Request, Scheduler, generate

    model = Model.load(speculative_checkpoints(tmp_path)["medusa"])
    want = [generate(model, [Request(p, 16)])[0].output_ids for p in PROMPTS[:3]]
    sched = Scheduler(model, max_batch_size=4, max_seq_len=64)
    got = {}
    with pytest.raises(Exception, match="needs a step cost model"):
        sched.submit(Request(PROMPTS[0], 4), lambda t, r: None, speculation="auto")
    with pytest.raises(Exception, match="must be auto, always or off"):
        sched.submit(Request(PROMPTS[0], 4), lambda t, r: None, speculation="never")
    sched.cost = CostModel((1, 64), (1.0, 1.0 + 0.3 * 63), "m", "e")
    for i, mode in enumerate(("off", "always", "auto")):
        sched.submit(Request(PROMPTS[i], 16), lambda t, r, i=i: got.__setitem__(i, r) if r is not None else None,
                     speculation=mode)
    sched.run_until_idle()
    assert [got[i].output_ids for i in range(3)] == want
    assert got[0].accepted_draft_tokens == 0 and sched.progress  # off drafts nothing
    info = {i: got[i] for i in range(3)}
    assert info[0].num_steps == 16 - 1  # plain: one token per step after the first


def test_cost_for_engine_is_cached_and_remeasured_for_another_engine(tmp_path):
    import shutil

    from trtbuild.runtime import Model
    from trtbuild.runtime.cost import engine_digest, for_engine

    ckpt = speculative_checkpoints(tmp_path)["medusa"]
    model = Model.load(ckpt)
    said = []
    cost = for_engine(model, ckpt, 16, said.append)
    assert cost.heads > 0 and cost.engine == engine_digest(ckpt) and (ckpt / CACHE).is_file()
    assert any("calibrating" in s for s in said)
    said.clear()
    assert for_engine(model, ckpt, 16, said.append) == cost and said == []  # the cache, as stored
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["max_position_embeddings"] = cfg.get("max_position_embeddings", 256) + 1
    (other / "config.json").write_text(json.dumps(cfg))
    assert engine_digest(other) != engine_digest(ckpt)
    again = for_engine(model, other, 16, said.append)  # the copied cache belongs to the first engine
    assert any("measured for another engine" in s for s in said) and again.engine == engine_digest(other)
