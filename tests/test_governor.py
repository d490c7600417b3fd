"""Issue 16's foundations: the measured cost model (and its cache) and the governor's allocation,
checked by hand and against brute force."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from conftest import speculative_checkpoints
from trtbuild.common.errors import ConfigError
from trtbuild.runtime.cost import CACHE, CostModel, calibrate, knots, load, machine_id, save
from trtbuild.runtime.governor import allocate, hull


def test_hull_by_hand():
    # (2, 0.9) lies under the chord from (1, 0.8) to (3, 1.3)? chord at 2: 1.05 > 0.9 -> dropped
    assert hull([(0, 0.0), (1, 0.8), (2, 0.9), (3, 1.3)]) == [0, 1, 3]
    assert hull([(0, 0.0), (2, 0.1), (1, 0.5)]) == [0, 2]  # costs more, gives less: never
    assert hull([(0, 0.0)]) == [0]
    with pytest.raises(ValueError, match="starts at"):
        hull([(1, 0.5)])


def test_allocation_by_hand():
    a = [(0, 0.0), (1, 0.8), (2, 1.2)]
    b = [(0, 0.0), (1, 0.3)]
    # t(T) = 1 + 0.5 T. (a, b) -> emitted / time: (0,0) 2/2 = 1.0; (1,0) 2.8/2.5 = 1.12; (2,0) 3.2/3 = 1.067;
    # (1,1) 3.1/3 = 1.033; (2,1) 3.5/3.5 = 1.0; (0,1) 2.3/2.5 = 0.92 -> (1, 0)
    choice, rate = allocate([a, b], lambda T: 1 + 0.5 * T)
    assert choice == [1, 0] and rate == pytest.approx(1.12)
    # a CPU-like cost, every token paid in full: no draft pays (each extra token brings < 1 token)
    assert allocate([a, b], lambda T: 0.01 * T)[0] == [0, 0]
    # a GPU-like cost, nearly flat: every draft pays
    assert allocate([a, b], lambda T: 1 + 0.001 * T)[0] == [2, 1]
    # rows that offer no choice still count: beside 10 fixed tokens emitting 3, t(T) = 1 + 0.5 T, row a alone:
    # k = 0: 4 / 6.5 = 0.615; k = 1: 4.8 / 7 = 0.686; k = 2: 5.2 / 7.5 = 0.693 -> 2 (without them: 1.8 / 2 = 0.9
    # at k = 1 beats 2.2 / 2.5 = 0.88 at k = 2)
    assert allocate([a], lambda T: 1 + 0.5 * T)[0] == [1]
    choice, rate = allocate([a], lambda T: 1 + 0.5 * T, fixed_tokens=10, fixed_emitted=3.0)
    assert choice == [2] and rate == pytest.approx(5.2 / 7.5)


def _brute(curves, t):
    best = max(itertools.product(*[range(len(c)) for c in curves]),
               key=lambda ch: (len(curves) + sum(c[i][1] for c, i in zip(curves, ch)))
               / t(len(curves) + sum(c[i][0] for c, i in zip(curves, ch))))
    return (len(curves) + sum(c[i][1] for c, i in zip(curves, best))) / t(len(curves) + sum(c[i][0] for c, i in zip(curves, best)))


def test_allocation_is_exact_for_concave_unit_curves():
    """Medusa's node-by-node trees: concave, one token per step; random cases against brute force,
    with fixed-plus-linear and convex step costs."""
    rng = random.Random(0)
    for case in range(200):
        curves = []
        for _ in range(rng.randint(1, 4)):
            gains = sorted((rng.random() for _ in range(rng.randint(0, 4))), reverse=True)
            curve, e = [(0, 0.0)], 0.0
            for k, g in enumerate(gains, 1):
                e += g
                curve.append((k, e))
            curves.append(curve)
        fixed, slope, bend = rng.uniform(0.1, 2), rng.uniform(0.01, 1), rng.choice([0.0, 0.02])
        t = lambda T, f=fixed, s=slope, q=bend: f + s * T + q * T * T  # noqa: E731
        _, rate = allocate(curves, t)
        assert rate == pytest.approx(_brute(curves, t)), case


def test_cost_model_interpolates_and_follows_live_steps():
    cost = CostModel((1, 4, 16), (0.010, 0.013, 0.040), "m", "e")
    assert cost.step_time(1) == pytest.approx(0.010)
    assert cost.step_time(2) == pytest.approx(0.011)  # a third of the way from 1 to 4
    assert cost.step_time(10) == pytest.approx(0.0265)
    assert cost.step_time(32) == pytest.approx(0.076)  # the last segment extrapolates
    assert cost.step_time(0) == pytest.approx(0.010)  # never below the first knot
    moved = cost.observe(4, 0.023, weight=0.5)
    assert moved.seconds == pytest.approx((0.010, 0.018, 0.040))
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
    assert cost.machine == machine_id("cpu")
    save(cost, tmp_path)
    assert load(tmp_path, machine_id("cpu"), "tiny") == cost
    with pytest.raises(ConfigError, match="measured on another machine"):
        load(tmp_path, "another box", "tiny")
    with pytest.raises(ConfigError, match="measured for another engine"):
        load(tmp_path, machine_id("cpu"), "other")
    (tmp_path / CACHE).write_text(json.dumps({"tokens": [1]}))
    with pytest.raises(ConfigError, match="not a cost calibration"):
        load(tmp_path, machine_id("cpu"), "tiny")
    with pytest.raises(ConfigError, match="no cost calibration"):
        load(tmp_path / "none", machine_id("cpu"), "tiny")


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


def test_budgets_by_hand(tmp_path):
    """One Medusa row (prior path probabilities 1/2 at depth 1, 1/4 at depth 2, 1/8 at 3) beside a
    plain row; t(T) = 1 + 0.3 T. Options for the Medusa row, k nodes -> E: 0 -> 0, 1 -> .5, 2 -> 1,
    3 -> 1.25, 4 -> 1.5, 5 -> 1.625; rate (2 + E) / (1 + 0.3 (2 + k)): 1.250, 1.316, 1.364, 1.300,
    1.250, 1.169 -> 2 nodes."""
    from trtbuild.runtime import Model
    from trtbuild.runtime.decoding import PlainDecoder, Row, budgets, make_decoder, resolve_decoding
    from trtbuild.runtime.generate import Request

    model = Model.load(speculative_checkpoints(tmp_path)["medusa"])  # {0}, {1}, {0, 0}, {0, 1}, {0, 0, 0}
    spec = resolve_decoding(model)
    req = Request((1, 2, 3), 4)
    pick = req.picker(model.cfg.dims.vocab_size, "cpu")
    rows = [Row(request=req, decoding=spec, picker=pick, decoder=make_decoder(spec, req.prompt, 1)),
            Row(request=req, decoding=None, picker=pick, decoder=PlainDecoder())]
    assert rows[0].decoder.options() == [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.25), (4, 1.5), (5, 1.625)]
    assert budgets(rows, lambda T: 1 + 0.3 * T, "auto") == [2, 0]
    assert budgets(rows, lambda T: 1 + 0.3 * T, "off") == [0, 0]
    assert budgets(rows, None, "always") == [None, None]
