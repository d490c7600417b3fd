"""Plain autoregressive generation for a batch of requests of different lengths.

Prompts are left-padded into one cache so every row writes the same slot each step; row b's
token in slot s has position s - pad_b, and pad slots are masked out. One prefill pass produces
each request's first token; every later token costs one decode step (a target forward pass).
A request stops at its max_new_tokens, at an end id (not included in the output) or after a stop
word (included, as TensorRT-LLM does). The engine knows nothing about text: token ids only.

Per-request rules of TensorRT-LLM's executor (`trtbuild.runtime.sampling.TokenPicker`): repetition /
presence / frequency penalties (`SamplingParams`), `min_tokens` (end ids masked until that many
tokens were generated) and `return_log_probs` (`Result.cum_log_prob`, `Result.output_log_probs`).
`generate()` and the decoding core (`decoding`, every mode, offline and in the scheduler) honour them.
This left-padded batch is kept on purpose as the independent reference: the equality tests and the
build's self-check compare every speculative decoder against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from trtbuild.common.rope_scaling import max_sequence_length
from trtbuild.common.errors import GenerationError
from trtbuild.runtime.model import Model
from trtbuild.runtime.sampling import SamplingParams, TokenPicker

# why a request ended: an end id, a stop word, max_new_tokens reached, or cancelled by its client
# (the scheduler only; a cancelled request has no Result delivered)
FinishReason = Literal["length", "end_id", "stop_word", "cancelled"]


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]
    max_new_tokens: int = 16
    sampling: SamplingParams = field(default_factory=SamplingParams)
    end_ids: tuple[int, ...] = ()
    stop_words: tuple[tuple[int, ...], ...] = ()
    # end ids are masked (never chosen) until this many tokens were generated:
    #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:242
    # Upstream's minTokens "Values < 1 have no effect. Default is 1":
    #   NVIDIA/TensorRT-LLM@0165bd7ac275:cpp/include/tensorrt_llm/executor/executor.h:168
    #   NVIDIA/TensorRT-LLM@1020a8d799d0:cpp/tensorrt_llm/layers/defaultDecodingParams.h:53-55
    # and its penalty layer passes no min lengths at all when every request of the batch has the
    # default 1 (macro GET_PENALTIES):
    #   NVIDIA/TensorRT-LLM@05316d331336:cpp/tensorrt_llm/layers/penaltyLayer.cpp:forwardAsync
    # Here 0 (the default) has no effect and 1 forbids an immediate end id, whatever the other requests.
    min_tokens: int = 0
    return_log_probs: bool = False  # upstream OutputConfig returnLogProbs (default false)
    # bad words (token sequences whose last token is banned where the sequence so far ends with the
    # rest) and an additive bias per vocabulary entry: `sampling.TokenPicker`
    bad_words: tuple[tuple[int, ...], ...] = ()
    embedding_bias: tuple[float, ...] | None = None  # [V], or None

    @property
    def per_token_rules(self) -> bool:
        """Needs a decoder that applies TokenPicker's rules (penalties, min_tokens, log probs, bad
        words, embedding bias)."""
        return (self.sampling.penalised or self.min_tokens > 0 or self.return_log_probs or bool(self.bad_words)
                or self.embedding_bias is not None)

    def picker(self, vocab_size: int, device, normalize_log_probs: bool = False) -> TokenPicker:
        return TokenPicker(self.sampling, self.sampling.generator(device), prompt=self.prompt, vocab_size=vocab_size,
                           end_ids=self.end_ids, min_tokens=self.min_tokens, log_probs=self.return_log_probs,
                           normalize_log_probs=normalize_log_probs, device=device, bad_words=self.bad_words,
                           embedding_bias=self.embedding_bias)


@dataclass(frozen=True)
class Result:
    output_ids: tuple[int, ...]  # new tokens only
    finish_reason: FinishReason
    num_steps: int  # target forward passes in the decode phase (the prefill is not counted)
    accepted_draft_tokens: int = 0  # speculative decoding: draft tokens the target model confirmed
    # return_log_probs only (else None): the sum of the chosen tokens' log probs, an end id the request
    # stopped at included (as upstream's cumLogProbs), and one log prob per output_ids token
    cum_log_prob: float | None = None
    output_log_probs: tuple[float, ...] | None = None

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
    """Refuse what the model cannot run (one line naming the request and the problem)."""
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
        # an engine's limits, with the server's words (triton_repo.python_models.Preprocessor)
        if model.cfg.max_input_len is not None and len(r.prompt) > model.cfg.max_input_len:
            raise GenerationError(f"request {i}: prompt has {len(r.prompt)} tokens, more than max_input_len "
                                  f"{model.cfg.max_input_len}")
        if model.cfg.max_seq_len is not None and len(r.prompt) + r.max_new_tokens > model.cfg.max_seq_len:
            raise GenerationError(f"request {i}: prompt ({len(r.prompt)} tokens) + max_tokens ({r.max_new_tokens}) "
                                  f"exceeds max_seq_len {model.cfg.max_seq_len}")
        if len(r.prompt) + r.max_new_tokens > limit:
            raise GenerationError(f"request {i}: prompt ({len(r.prompt)} tokens) + max_new_tokens "
                                  f"({r.max_new_tokens}) exceeds the model's {limit} positions")
        # minTokens >= 0 (checkMinTokens):
        #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/executor/samplingConfig.cpp:50
        if isinstance(r.min_tokens, bool) or not isinstance(r.min_tokens, int) or r.min_tokens < 0:
            raise GenerationError(f"request {i}: min_tokens must be an integer >= 0, got {r.min_tokens!r}")
        if not isinstance(r.return_log_probs, bool):
            raise GenerationError(f"request {i}: return_log_probs must be true or false, got {r.return_log_probs!r}")
        if any(len(w) == 0 for w in r.bad_words):
            raise GenerationError(f"request {i}: empty bad word")
        if r.embedding_bias is not None and len(r.embedding_bias) != vocab:
            raise GenerationError(f"request {i}: embedding_bias has {len(r.embedding_bias)} entries, the "
                                  f"vocabulary {vocab}")


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


def stop_reason(out: list[int], r: Request) -> FinishReason | None:
    """Why a request stops after the tokens `out` (its last one just emitted), or None."""
    tok = out[-1]
    if tok in r.end_ids:
        return "end_id"
    for w in r.stop_words:
        if len(out) >= len(w) and tuple(out[-len(w):]) == w:
            return "stop_word"
    if len(out) >= r.max_new_tokens:
        return "length"
    return None


def generate(model: Model, requests: list[Request], normalize_log_probs: bool = False) -> list[Result]:
    """Run every request to completion in one left-padded batch; results in request order.

    normalize_log_probs: TensorRT-LLM's engine-wide option (sampling.TokenPicker); off by default."""
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
    pickers = [r.picker(model.cfg.dims.vocab_size, dev, normalize_log_probs) for r in requests]
    outs: list[list[int]] = [[] for _ in range(B)]
    done: list[str | None] = [None] * B

    def choose(logits: torch.Tensor) -> torch.Tensor:
        """Each unfinished row's next token from its logits [B, V] (one batched argmax for the greedy
        rows without per-token rules; a finished row's token is never read)."""
        nxt = logits.argmax(-1)
        for b in range(B):
            if done[b] is None and not (requests[b].sampling.greedy and pickers[b].trivial):
                nxt[b] = pickers[b].pick(logits[b])
        return nxt

    logits = model.forward(tokens, positions[:, :P], cache, 0, attention_mask(0, P, pads, window),
                           logits_for=torch.full((B,), P - 1, device=dev))
    nxt = choose(logits)
    steps = [0] * B
    slot = P
    while True:
        for b in range(B):
            if done[b] is None:
                outs[b].append(int(nxt[b]))
                done[b] = stop_reason(outs[b], requests[b])
        if all(done):
            break
        for b in range(B):
            steps[b] += done[b] is None
        logits = model.forward(nxt[:, None], positions[:, slot:slot + 1], cache, slot,
                               attention_mask(slot, slot + 1, pads, window))[:, -1]
        nxt = choose(logits)
        slot += 1
    results = []
    for o, d, s, pk in zip(outs, done, steps, pickers):
        kept = o[:-1] if d == "end_id" else o
        cum, lps = pk.report(len(o), len(kept))
        results.append(Result(tuple(kept), d or "length", s, 0, cum, lps))
    return results


def hidden_states(model: Model, seq: list[int]) -> torch.Tensor:
    """Final-norm hidden states [T, H] (fp32) of one sequence, in one causal pass (a fresh cache)."""
    T = len(seq)
    cache = model.new_cache(1, T)
    h = model.hidden(torch.tensor([seq], device=model.device), torch.arange(T, device=model.device)[None], cache, 0,
                     attention_mask(0, T, torch.zeros(1, dtype=torch.long, device=model.device),
                                    model.cfg.sliding_window))
    return h[0].float()
