"""The decoding core (`trtbuild.runtime.decoding`): the acceptance rules by hand, one precedence for the
decoding, and the default rule's distribution against plain sampling (a chi-square homogeneity test
over 2000 seeded draws per decoder: deterministic, and shown to reject a different distribution)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import speculative_checkpoints
from trtbuild.common.errors import ConfigError, GenerationError
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.common.medusa.choices import MedusaSpec
from trtbuild.runtime import Model, Request, SamplingParams, decode, generate
from trtbuild.runtime.decoding import TypicalAcceptance, longest_chain, resolve_decoding, typical_path

REPEATING = (5, 9, 17, 5, 9, 17, 5, 9, 17, 5, 9)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return speculative_checkpoints(tmp_path_factory.mktemp("decoding"))


def test_typical_path_by_hand():
    # 3 nodes on one chain (1, 2) and a second chain (3,); vocabulary of 4
    tokens = (0, 1, 2, 3)
    logits = torch.log(torch.tensor([[0.05, 0.6, 0.05, 0.3],   # root: p(1) = .6, p(3) = .3
                                     [0.05, 0.05, 0.85, 0.05],  # after node 1: p(2) = .85
                                     [0.25, 0.25, 0.25, 0.25],
                                     [0.25, 0.25, 0.25, 0.25]]))
    rule = TypicalAcceptance(posterior_threshold=0.09, posterior_alpha=0.3)
    assert typical_path([(1, 2), (3,)], tokens, logits, 1.0, rule) == [0, 1, 2]
    # the second chain wins when the first is refused at once (p(1) below the threshold)
    refused = logits.clone()
    refused[0] = torch.log(torch.tensor([0.65, 0.02, 0.03, 0.3]))
    assert typical_path([(1, 2), (3,)], tokens, refused, 1.0, rule) == [0, 3]
    # nothing passes: the root alone
    assert typical_path([(1,)], tokens, refused, 1.0, TypicalAcceptance(0.5, 0.5)) == [0]


def test_lossless_walk_follows_the_choice_at_each_node():
    tokens = [0, 10, 20, 30, 40]
    choice = {0: 10, 1: 20, 2: 99}
    assert longest_chain([(3, 4), (1, 2)], tokens, choice.__getitem__) == ([0, 1, 2], 99)


def test_one_precedence_for_the_decoding(ckpts):
    plain, la, md = (Model.load(ckpts[k]) for k in ("plain", "lookahead", "medusa"))
    assert resolve_decoding(plain) is None
    assert resolve_decoding(la) == LookaheadSpec(4, 3, 4)
    assert resolve_decoding(la, lookahead=LookaheadSpec(2, 2, 1)) == LookaheadSpec(2, 2, 1)
    assert resolve_decoding(la, no_lookahead=True) is None
    assert resolve_decoding(la, lookahead=LookaheadSpec(1, 1, 0)) is None  # (1, 1, 0) is plain decoding
    assert isinstance(resolve_decoding(md), MedusaSpec) and resolve_decoding(md).nodes == 6
    assert resolve_decoding(md, medusa_choices="{0}, {1}").choices == ((0,), (1,))
    assert resolve_decoding(md, no_medusa=True) is None
    for kw, msg in (({"lookahead": LookaheadSpec(4, 4, 4)}, "exceeds the engine's"),
                    ({"lookahead": LookaheadSpec(2, 2, 1), "no_lookahead": True}, "contradict"),
                    ({"medusa_choices": "{0}"}, "need a Medusa checkpoint")):
        with pytest.raises(Exception, match=msg):
            resolve_decoding(la if "lookahead" in kw else plain, **kw)
    with pytest.raises(GenerationError, match="needs Medusa decoding switched off"):
        resolve_decoding(md, lookahead=LookaheadSpec(2, 2, 1))


def _chi2_p(a: Counter, b: Counter) -> float:
    """p-value of a chi-square homogeneity test between two samples of categories (expected counts
    below 5 pooled into one category)."""
    na, nb = sum(a.values()), sum(b.values())
    cats = sorted(set(a) | set(b), key=str)
    small = [c for c in cats if (a[c] + b[c]) * min(na, nb) / (na + nb) < 5]
    rows = [(a[c], b[c]) for c in cats if c not in small]
    if small:
        rows.append((sum(a[c] for c in small), sum(b[c] for c in small)))
    stat = 0.0
    for x, y in rows:
        tot = x + y
        for obs, n in ((x, na), (y, nb)):
            exp = tot * n / (na + nb)
            stat += (obs - exp) ** 2 / exp
    dof = len(rows) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


N_DRAWS = 2000


def _draws(model, decoding, seeds, temperature, n=4):
    reqs = [Request(REPEATING, n, SamplingParams(temperature=temperature, seed=s)) for s in seeds]
    if decoding == "plain":
        return generate(model, reqs), 0
    res = decode(model, reqs, decoding)
    return res, sum(r.accepted_draft_tokens for r in res)


@pytest.mark.parametrize("kind", ["lookahead", "medusa"])
def test_default_rule_samples_the_plain_distribution(ckpts, kind):
    """Tokens 2..4 (the ones drafts can supply) of 2000 seeded sampled requests: the speculative decoder
    and plain sampling (other seeds) agree by a chi-square test; the same seed gives the same tokens
    draw for draw; and the test rejects a different distribution (plain at another temperature)."""
    model = Model.load(ckpts[kind])
    spec = resolve_decoding(model)
    t = 0.35
    fast, accepted = _draws(model, spec, range(N_DRAWS), t)
    slow, _ = _draws(model, "plain", range(N_DRAWS, 2 * N_DRAWS), t)
    hotter, _ = _draws(model, "plain", range(2 * N_DRAWS, 3 * N_DRAWS), 0.6)
    assert accepted > 200, accepted  # drafts were accepted: the rule was exercised, not bypassed
    seq = lambda rs: Counter(r.output_ids[1:] for r in rs)  # noqa: E731
    assert _chi2_p(seq(fast), seq(slow)) > 0.001
    assert _chi2_p(seq(slow), seq(hotter)) < 1e-6  # the test has power
    same, _ = _draws(model, "plain", range(200), t)
    assert [r.output_ids for r in fast[:200]] == [r.output_ids for r in same]


def test_typical_acceptance_is_opt_in_and_refuses_per_token_rules(ckpts):
    model = Model.load(ckpts["medusa"])
    req = Request(REPEATING, 12, SamplingParams(temperature=0.8, seed=3))
    a = decode(model, [req], "engine", TypicalAcceptance())
    b = decode(model, [req], "engine", TypicalAcceptance())
    assert a[0].output_ids == b[0].output_ids  # seeded: reproducible
    assert decode(model, [req])[0].output_ids == generate(model, [req])[0].output_ids  # default: lossless
    with pytest.raises(GenerationError, match="typical acceptance does not apply penalties"):
        decode(model, [Request(REPEATING, 4, SamplingParams(temperature=0.8, presence_penalty=1.0))], "engine",
               TypicalAcceptance())


def test_the_scheduler_refuses_what_its_cache_cannot_hold_and_stays_refusing_once_dead(ckpts):
    from trtbuild.runtime import Scheduler

    md, la = Model.load(ckpts["medusa"]), Model.load(ckpts["lookahead"])
    with pytest.raises(GenerationError, match=r"the Medusa tree \(6 nodes\) needs 6 tokens per step; this engine "
                                              r"was built for 3"):
        Scheduler(md, 2, 64, max_draft_len=2)  # the engine's own tree must fit its draft tokens
    sched = Scheduler(la, 2, 64)
    for bad in ("medusa", "plain", (4, 3, 4)):
        with pytest.raises(GenerationError, match="unknown decoding"):
            sched.submit(Request(REPEATING, 4), lambda t, r: None, bad)
    with pytest.raises(ConfigError, match="exceeds the engine.s"):  # the checkpoint's (W, N, G) is the limit
        Scheduler(la, 2, 64, decoding=None).submit(Request(REPEATING, 4), lambda t, r: None, LookaheadSpec(5, 3, 4))
    sched.error = RuntimeError("boom")  # what run_forever keeps when the loop dies
    with pytest.raises(GenerationError, match="the scheduler stopped: boom"):
        sched.submit(Request(REPEATING, 4), lambda t, r: None)
    # typical acceptance never applies to greedy rows: their per-token rules are fine
    greedy = Request(REPEATING, 6, return_log_probs=True)
    assert decode(md, [greedy], "engine", TypicalAcceptance())[0].output_ids == generate(md, [greedy])[0].output_ids


def test_typical_acceptance_from_triton_request_parameters():
    from trtbuild.triton_repo.llm_requests import typical_from
    from trtbuild.triton_repo.python_models import RequestError

    assert typical_from({}) is None and typical_from({"typical_acceptance": False}) is None
    assert typical_from({"typical_acceptance": True}) == TypicalAcceptance()
    assert typical_from({"typical_acceptance": True, "posterior_threshold": 0.2, "posterior_alpha": "0.5"}) == \
        TypicalAcceptance(0.2, 0.5)  # a number as text: how a BLS forwards it
    for params, msg in (({"typical_acceptance": "yes"}, "must be true or false"),
                        ({"typical_acceptance": True, "posterior_alpha": 2}, r"must be a number in \[0, 1\]"),
                        ({"typical_acceptance": True, "posterior_alpha": "x"}, r"must be a number in \[0, 1\]"),
                        ({"posterior_threshold": 0.1}, "send typical_acceptance=true with it")):
        with pytest.raises(RequestError, match=msg):
            typical_from(params)
