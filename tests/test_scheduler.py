"""In-flight batching: requests joining a running batch, leaving at once, cancellation, mixed
plain / lookahead / Medusa rows, and output equal to plain greedy decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import speculative_checkpoints
from trtbuild.common.errors import GenerationError
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.common.medusa.choices import MedusaSpec
from trtbuild.runtime import Model, Request, SamplingParams, generate
from trtbuild.runtime.scheduler import Scheduler, schedule_all

PROMPTS = [(5, 6, 7, 8, 5, 6, 7, 8, 5, 6), (3, 9, 27, 81), tuple(range(10, 40)), (7,), (11, 12, 13, 11, 12)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return speculative_checkpoints(tmp_path_factory.mktemp("sched"))


@pytest.mark.parametrize("kind", ["plain", "lookahead", "medusa"])
def test_scheduled_greedy_equals_plain(ckpts, kind):
    model = Model.load(ckpts[kind])
    reqs = [Request(p, 12 + 5 * i) for i, p in enumerate(PROMPTS)]
    want = [generate(model, [r])[0].output_ids for r in reqs]
    sched = Scheduler(model, max_batch_size=3, max_seq_len=128)
    got = schedule_all(sched, reqs)
    assert [r.output_ids for r in got] == want
    assert sched.stats.finished == 5 and sched.stats.max_active == 3 and sched.free_rows == [0, 1, 2] and not sched.running
    # 5 requests on 3 rows: the last two joined while others were mid-decode
    assert sched.stats.joined_running_batch >= 2
    if kind != "plain":
        assert sum(r.accepted_draft_tokens for r in got) > 0 or kind == "medusa"


def test_requests_join_a_running_batch_and_mix_modes(ckpts):
    model = Model.load(ckpts["lookahead"])
    sched = Scheduler(model, max_batch_size=4, max_seq_len=128)
    want = {i: generate(model, [Request(p, 30)])[0].output_ids for i, p in enumerate(PROMPTS[:4])}
    streams: dict[int, list[int]] = {i: [] for i in range(4)}
    ends: dict[int, object] = {}

    def cb(i):
        def f(tokens, result):
            streams[i].extend(tokens)
            if result is not None:
                ends[i] = result
        return f

    sched.submit(Request(PROMPTS[0], 30), cb(0))  # the engine's lookahead
    sched.submit(Request(PROMPTS[1], 30), cb(1), decoding=None)
    for _ in range(4):
        sched.step()
    assert 0 < len(streams[0]) < 30 and sched.stats.active == 2
    sched.submit(Request(PROMPTS[2], 30), cb(2), decoding=LookaheadSpec(2, 2, 1))
    sched.submit(Request(PROMPTS[3], 30), cb(3))
    sched.run_until_idle()
    assert sched.stats.joined_running_batch == 2
    for i in range(4):
        assert tuple(streams[i]) == want[i] == ends[i].output_ids
    with pytest.raises(Exception, match="exceeds the engine's"):
        sched.submit(Request(PROMPTS[0], 4), cb(0), decoding=LookaheadSpec(4, 4, 4))


def test_cancel_frees_the_row_and_stops_output(ckpts):
    model = Model.load(ckpts["plain"])
    sched = Scheduler(model, max_batch_size=2, max_seq_len=128)
    got: list[int] = []
    jid = sched.submit(Request(PROMPTS[0], 100), lambda t, r: got.extend(t))
    for _ in range(3):
        sched.step()
    assert sched.stats.active == 1 and len(got) == 4  # the first step prefills (1 token) and decodes (1)
    before = sched.stats_now()
    assert sched.cancel(jid) and not sched.cancel(12345)
    sched.step()
    assert sched.stats.active == 0 and sched.stats.cancelled == 1 and sched.free_rows == [0, 1]
    assert len(got) == 4
    # a snapshot is its moment's: the cancellation and the freed row came after it
    assert (before.active, before.cancelled) == (1, 0)
    now = sched.stats_now()
    assert (now.active, now.cancelled, now.steps) == (0, 1, sched.stats.steps) and now is not sched.stats


def test_stops_sampling_and_validation(ckpts):
    model = Model.load(ckpts["plain"])
    free = generate(model, [Request(PROMPTS[0], 20)])[0].output_ids
    reqs = [Request(PROMPTS[0], 20, end_ids=(free[5],)), Request(PROMPTS[0], 20, stop_words=(free[2:4],)),
            Request(PROMPTS[1], 16, SamplingParams(temperature=0.9, seed=4))]
    sched = Scheduler(model, max_batch_size=4, max_seq_len=64)
    got = schedule_all(sched, reqs)
    want = generate(model, reqs[:2])
    assert [(r.output_ids, r.finish_reason) for r in got[:2]] == [(r.output_ids, r.finish_reason) for r in want]
    again = schedule_all(Scheduler(model, max_batch_size=4, max_seq_len=64), reqs)
    assert got[2].output_ids == again[2].output_ids and len(got[2].output_ids) == 16
    with pytest.raises(GenerationError, match="exceeds max_seq_len 64"):
        sched.submit(Request(PROMPTS[2], 40), lambda t, r: None)
    with pytest.raises(GenerationError, match="empty prompt"):
        sched.submit(Request((), 4), lambda t, r: None)
    with pytest.raises(GenerationError, match="no Medusa heads"):
        sched.submit(Request(PROMPTS[0], 4), lambda t, r: None, decoding=MedusaSpec(((0,),)))


def test_serve_forever_thread(ckpts):
    import threading

    model = Model.load(ckpts["medusa"])
    sched = Scheduler(model, max_batch_size=2, max_seq_len=64)
    thread = sched.serve_forever()
    done = threading.Event()
    out = {}

    def cb(tokens, result):
        if result is not None:
            out["r"] = result
            done.set()

    sched.submit(Request(PROMPTS[1], 10), cb)
    assert done.wait(60)
    sched.shutdown()
    thread.join(10)
    assert out["r"].output_ids == generate(model, [Request(PROMPTS[1], 10)])[0].output_ids


def test_rows_stay_compact_when_requests_finish_out_of_order(ckpts):
    """Short requests finish first and the last rows move into their holes; outputs stay exact."""
    model = Model.load(ckpts["lookahead"])
    reqs = [Request(PROMPTS[i % 5], n) for i, n in enumerate([1, 30, 3, 25, 2, 18, 1, 22])]
    want = [generate(model, [r])[0].output_ids for r in reqs]
    sched = Scheduler(model, max_batch_size=6, max_seq_len=128)
    assert [r.output_ids for r in schedule_all(sched, reqs)] == want
    assert sched.stats.finished == 8 and not sched.running
