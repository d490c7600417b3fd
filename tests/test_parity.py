"""Conversion parity: the runtime on a converted checkpoint reproduces transformers exactly (fp32).

Tiny random Llama, Mistral and Qwen2 models (GQA with 2 kv heads, vocabulary 101 so tp 2 and 4
need padding, kv heads < tp at tp=4), every tp in {1, 2, 4} x pp in {1, 2}: logits within 1e-4,
greedy outputs token-identical, also for a batch of prompts of different lengths.
"""

from __future__ import annotations

import pytest
import torch

from conftest import ARCHS, make_hf_model
from trtbuild.convert import convert
from trtbuild.runtime import Model, Request, generate
from trtbuild.runtime.generate import attention_mask

LAYOUTS = [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (4, 2)]
PROMPTS = [[5, 17, 33, 8, 91, 42, 7, 3, 64, 12, 99, 21], [44, 2 + 1, 71], [9, 9, 100, 0, 58, 13, 77]]


def runtime_logits(model: Model, ids: list[int]) -> torch.Tensor:
    """[T, V] logits for one prompt, every position."""
    T = len(ids)
    cache = model.new_cache(1, T)
    return model.forward(torch.tensor([ids]), torch.arange(T)[None], cache, 0,
                         attention_mask(0, T, torch.zeros(1, dtype=torch.long), model.cfg.sliding_window))[0]


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])  # explicit mask: some prompts contain the pad id, which HF would mask
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                      do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


def check_parity(hf, ckpt, n_new: int = 16, batched: bool = True) -> None:
    model = Model.load(ckpt, dtype="float32", device="cpu")
    for ids in PROMPTS:
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].float()
        torch.testing.assert_close(runtime_logits(model, ids), ref, atol=1e-4, rtol=0)
    reqs = [Request(tuple(p), n_new) for p in PROMPTS]
    results = generate(model, reqs) if batched else [generate(model, [r])[0] for r in reqs]
    for ids, res in zip(PROMPTS, results):
        assert list(res.output_ids) == hf_greedy(hf, ids, n_new)
        assert res.num_steps == n_new - 1 and res.tokens_per_step == 1.0


@pytest.fixture(scope="module", params=ARCHS)
def hf_model(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param) / "hf"
    return request.param, d, make_hf_model(d, request.param)


@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_parity_all_layouts(hf_model, tp, pp, tmp_path):
    arch, d, hf = hf_model
    ckpt = convert(d, tmp_path / "ckpt", dtype="float32", tp=tp, pp=pp)
    assert sorted(p.name for p in ckpt.glob("rank*.safetensors")) == sorted(f"rank{r}.safetensors" for r in range(tp * pp))
    check_parity(hf, ckpt)


@pytest.mark.parametrize("overrides,tp,batched", [
    ({"num_key_value_heads": 8}, 2, True),  # MHA
    ({"num_key_value_heads": 1}, 4, True),  # MQA, kv duplicated 4x
    ({"tie_word_embeddings": True}, 2, True),
    ({"head_dim": 16}, 2, True),  # head_dim != hidden / heads
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}, 1, True),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}}, 1, True),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}}, 1, True),
    # dynamic NTK active: sequences grow past max_position_embeddings during the test
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
      "max_position_embeddings": 16}, 1, False),  # its frequencies depend on the batch's length
])
def test_parity_llama_variants(overrides, tp, batched, tmp_path):
    hf = make_hf_model(tmp_path / "hf", "LlamaForCausalLM", seed=1, **overrides)
    ckpt = convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32", tp=tp)
    check_parity(hf, ckpt, batched=batched)


def test_mistral_sliding_window_matches_hf(tmp_path):
    """A window shorter than the sequence: the runtime masks exactly as transformers does."""
    hf = make_hf_model(tmp_path / "hf", "MistralForCausalLM", seed=2, sliding_window=5)
    ckpt = convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32", tp=2)
    model = Model.load(ckpt, dtype="float32")
    ids = PROMPTS[0]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(runtime_logits(model, ids), ref, atol=1e-4, rtol=0)
    res = generate(model, [Request(tuple(ids), 12)])[0]
    assert list(res.output_ids) == hf_greedy(hf, ids, 12)


def test_dynamic_rope_with_legacy_type_only_scaling(tmp_path):
    """A checkpoint whose rotary_scaling carries only `type` (older converters) runs dynamic NTK too."""
    import json

    hf = make_hf_model(tmp_path / "hf", "LlamaForCausalLM", seed=5, max_position_embeddings=16,
                       rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    ckpt = convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["rotary_scaling"] = {"type": "dynamic", "factor": 2.0}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    check_parity(hf, ckpt, batched=False)
