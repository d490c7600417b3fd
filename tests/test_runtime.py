"""Runtime behaviour: sampling, seeds, end ids, stop words, batching of different lengths."""

from __future__ import annotations

import pytest
import torch

from conftest import make_hf_model
from trtbuild.convert import convert
from trtbuild.common.errors import GenerationError
from trtbuild.runtime import Model, Request, SamplingParams, generate, kernels
from trtbuild.runtime.generate import attention_mask
from trtbuild.runtime.sampling import filter_logits


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    d = tmp_path_factory.mktemp("rt")
    make_hf_model(d / "hf", seed=3)
    return Model.load(convert(d / "hf", d / "ckpt", dtype="float32", tp=2), dtype="float32")


P = (5, 17, 33, 8, 91)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    keep = lambda p: torch.isfinite(filter_logits(logits, p)).tolist()  # noqa: E731
    assert keep(SamplingParams(1.0, top_k=2)) == [True, True, False, False, False]
    assert keep(SamplingParams(1.0, top_p=0.5)) == [True, False, False, False, False]
    assert keep(SamplingParams(1.0, top_p=0.6)) == [True, True, False, False, False]
    assert keep(SamplingParams(1.0, top_p=0.86)) == [True, True, True, True, False]
    assert keep(SamplingParams(1.0)) == [True] * 5


@pytest.mark.parametrize("kw,msg", [({"temperature": -1}, "temperature"), ({"top_k": -1}, "top_k"),
                                    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")])
def test_sampling_params_validation(kw, msg):
    with pytest.raises(GenerationError, match=msg):
        SamplingParams(**kw)


def test_seeded_sampling_is_reproducible_and_batch_independent(model):
    s = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    alone = generate(model, [Request(P, 12, s)])[0].output_ids
    again = generate(model, [Request(P, 12, s)])[0].output_ids
    mixed = generate(model, [Request((1, 2, 3, 4, 5, 6, 7, 8), 12, SamplingParams(temperature=1.0, seed=1)),
                             Request(P, 12, s)])[1].output_ids
    assert alone == again == mixed
    other = generate(model, [Request(P, 12, SamplingParams(temperature=1.0, top_p=0.9, seed=8))])[0].output_ids
    greedy = generate(model, [Request(P, 12)])[0].output_ids
    assert other != alone and greedy != alone  # another seed, or greedy, gives another sequence
    assert generate(model, [Request(P, 12, SamplingParams(temperature=0.8, top_k=1, seed=3))])[0].output_ids == greedy


def test_sampling_follows_the_distribution(model):
    """Empirical first-token frequencies match softmax(logits / T) on the top-3 restricted support."""
    cache = model.new_cache(1, len(P))
    logits = model.forward(torch.tensor([P]), torch.arange(len(P))[None], cache, 0,
                           attention_mask(0, len(P), torch.zeros(1, dtype=torch.long), None))[0, -1]
    probs = filter_logits(logits, SamplingParams(temperature=1.5, top_k=3)).softmax(-1)
    n = 600
    reqs = [Request(P, 1, SamplingParams(temperature=1.5, top_k=3, seed=i)) for i in range(n)]
    firsts = torch.tensor([r.output_ids[0] for r in generate(model, reqs)])
    top = torch.topk(probs, 3).indices
    assert set(firsts.tolist()) <= set(top.tolist())
    for t in top.tolist():
        assert abs((firsts == t).float().mean().item() - probs[t].item()) < 0.07


def test_end_ids_stop_and_are_not_emitted(model):
    free = generate(model, [Request(P, 10)])[0].output_ids
    end = free[3]
    first = free.index(end)
    r = generate(model, [Request(P, 10, end_ids=(999, end))])[0]
    assert r.output_ids == free[:first] and r.finish_reason == "end_id"
    assert r.num_steps == first  # the end token came from decode step number `first`
    if first:
        assert r.tokens_per_step == 1.0


def test_stop_words_end_the_output_and_are_included(model):
    free = generate(model, [Request(P, 12)])[0].output_ids
    word = tuple(free[4:6])
    cut = next(i for i in range(len(free) - 1) if tuple(free[i:i + 2]) == word) + 2
    r = generate(model, [Request(P, 12, stop_words=((77, 78, 79), word))])[0]
    assert r.output_ids == free[:cut] and r.finish_reason == "stop_word"


def test_max_tokens_and_batch_of_different_lengths_equals_one_by_one(model):
    reqs = [Request(P, 7), Request((3,), 2), Request(tuple(range(40, 60)), 11), Request((9, 9), 1)]
    batch = generate(model, reqs)
    for req, res in zip(reqs, batch):
        assert res == generate(model, [req])[0]
        assert len(res.output_ids) == req.max_new_tokens and res.finish_reason == "length"
    assert batch[3].num_steps == 0 and batch[3].tokens_per_step is None


@pytest.mark.parametrize("req,msg", [
    (Request((), 4), "empty prompt"),
    (Request((1,), 0), "max_new_tokens must be >= 1"),
    (Request((1, -2), 3), "token id -2 outside"),
    (Request((1,), 3, stop_words=((),)), "empty stop word"),
])
def test_invalid_requests(model, req, msg):
    with pytest.raises(GenerationError, match=msg):
        generate(model, [req])


def test_kernel_onednn_packed_and_plain_linears_agree(tmp_path):
    make_hf_model(tmp_path / "hf", "Qwen2ForCausalLM", seed=4)  # qkv bias: the kernel's bias path
    ckpt = convert(tmp_path / "hf", tmp_path / "c", dtype="float32", tp=2)
    packed, plain = Model.load(ckpt, pack=True), Model.load(ckpt, pack=False)
    assert packed.backend == "onednn" and plain.backend == "plain"
    reqs = [Request(P, 10), Request((7, 7, 1), 10)]
    want = generate(plain, reqs)
    assert generate(packed, reqs) == want
    if kernels.library() is not None:  # the default on x86-64 with AVX-512
        kern = Model.load(ckpt)
        assert kern.backend == "kernel"
        assert generate(kern, reqs) == want
