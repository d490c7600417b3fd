"""Plain autoregressive generation for a batch of requests of different lengths.

Prompts are left-padded into one cache so every row writes the same slot each step; row b's
token in slot s has position s - pad_b, and pad slots are masked out. One prefill pass produces
each request's first token; every later token costs one decode step (a target forward pass).
A request stops at its max_new_tokens, at an end id (not included in the output) or after a stop
word (included, as TensorRT-LLM does). The engine knows nothing about text: token ids only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trtbuild.convert.rope_scaling import max_sequence_length
from trtbuild.errors import GenerationError
from trtbuild.runtime.model import Model
from trtbuild.runtime.sampling import SamplingParams, sample


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]
    max_new_tokens: int = 16
    sampling: SamplingParams = field(default_factory=SamplingParams)
    end_ids: tuple[int, ...] = ()
    stop_words: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class Result:
    output_ids: tuple[int, ...]  # new tokens only
    finish_reason: str  # "length" | "end_id" | "stop_word"
    num_steps: int  # target forward passes in the decode phase (the prefill is not counted)
    accepted_draft_tokens: int = 0  # speculative decoding: draft tokens the target model confirmed

    @property
    def tokens_per_step(self) -> float | None:
        """Tokens emitted per decode-phase forward pass (the prefill's token excluded): the
        acceptance length of speculative decoding, 1.0 for plain decoding."""
        if self.num_steps == 0:
            return None
        return (len(self.output_ids) - 1 + (self.finish_reason == "end_id")) / self.num_steps

    @property
    def compression_ratio(self) -> float:
        """Target forward passes plain decoding needs for this output over the passes used (the
        prefill included): 1.0 for plain decoding."""
        return (len(self.output_ids) + (self.finish_reason == "end_id")) / (self.num_steps + 1)


def validate(model: Model, requests: list[Request]) -> None:
    if not requests:
        raise GenerationError("no requests to generate")
    vocab = model.cfg.dims.vocab_size
    limit = max_sequence_length(model.cfg.max_position_embeddings, model.cfg.rotary_scaling)
    for i, r in enumerate(requests):
        if not r.prompt:
            raise GenerationError(f"request {i}: empty prompt")
        if r.max_new_tokens < 1:
            raise GenerationError(f"request {i}: max_new_tokens must be >= 1, got {r.max_new_tokens}")
        bad = [t for t in r.prompt if not 0 <= t < vocab]
        if bad:
            raise GenerationError(f"request {i}: token id {bad[0]} outside the vocabulary [0, {vocab})")
        if any(len(w) == 0 for w in r.stop_words):
            raise GenerationError(f"request {i}: empty stop word")
        if len(r.prompt) + r.max_new_tokens > limit:
            raise GenerationError(f"request {i}: prompt ({len(r.prompt)} tokens) + max_new_tokens "
                                  f"({r.max_new_tokens}) exceeds the model's {limit} positions")


def attention_mask(q_lo: int, q_hi: int, pads: torch.Tensor, window: int | None) -> torch.Tensor:
    """[B, 1, q_hi - q_lo, q_hi] bool: query slots q_lo..q_hi-1 over key slots 0..q_hi-1.

    A query sees causal, non-pad keys (within the sliding window when there is one); every slot
    also sees itself, so pad rows stay finite.
    """
    q = torch.arange(q_lo, q_hi, device=pads.device)[:, None]  # [T, 1]
    k = torch.arange(q_hi, device=pads.device)[None, :]  # [1, S]
    m = (k <= q) & (k >= pads[:, None, None])  # [B, T, S]
    if window:
        m &= (q - k) < window
    return (m | (k == q)).unsqueeze(1)


def _stopped(out: list[int], r: Request) -> str | None:
    tok = out[-1]
    if tok in r.end_ids:
        return "end_id"
    for w in r.stop_words:
        if len(out) >= len(w) and tuple(out[-len(w):]) == w:
            return "stop_word"
    if len(out) >= r.max_new_tokens:
        return "length"
    return None


def generate(model: Model, requests: list[Request]) -> list[Result]:
    """Run every request to completion in one left-padded batch; results in request order."""
    validate(model, requests)
    dev = model.device
    B = len(requests)
    lens = torch.tensor([len(r.prompt) for r in requests], device=dev)
    P, N = int(lens.max()), max(r.max_new_tokens for r in requests)
    pads = P - lens  # [B]
    tokens = torch.zeros(B, P, dtype=torch.long, device=dev)
    for b, r in enumerate(requests):
        tokens[b, P - len(r.prompt):] = torch.tensor(r.prompt, device=dev)
    slots = torch.arange(P + N, device=dev)
    positions = (slots[None, :] - pads[:, None]).clamp(min=0)  # [B, P + N]
    window = model.cfg.sliding_window
    cache = model.new_cache(B, P + N)
    params = [r.sampling for r in requests]
    gens = [p.generator(dev) for p in params]

    logits = model.forward(tokens, positions[:, :P], cache, 0, attention_mask(0, P, pads, window),
                           logits_for=torch.full((B,), P - 1, device=dev))
    nxt = sample(logits, params, gens)
    outs: list[list[int]] = [[] for _ in range(B)]
    done: list[str | None] = [None] * B
    steps = [0] * B
    slot = P
    while True:
        for b in range(B):
            if done[b] is None:
                outs[b].append(int(nxt[b]))
                done[b] = _stopped(outs[b], requests[b])
        if all(done):
            break
        for b in range(B):
            steps[b] += done[b] is None
        logits = model.forward(nxt[:, None], positions[:, slot:slot + 1], cache, slot,
                               attention_mask(slot, slot + 1, pads, window))[:, -1]
        nxt = sample(logits, params, gens)
        slot += 1
    return [Result(tuple(o[:-1] if d == "end_id" else o), d or "length", s)
            for o, d, s in zip(outs, done, steps)]


def hidden_states(model: Model, seq: list[int]) -> torch.Tensor:
    """Final-norm hidden states [T, H] (fp32) of one sequence, in one causal pass (a fresh cache)."""
    T = len(seq)
    cache = model.new_cache(1, T)
    h = model.hidden(torch.tensor([seq], device=model.device), torch.arange(T, device=model.device)[None], cache, 0,
                     attention_mask(0, T, torch.zeros(1, dtype=torch.long, device=model.device),
                                    model.cfg.sliding_window))
    return h[0].float()
