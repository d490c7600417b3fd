"""Token selection: greedy, or temperature / top-k / top-p sampling with a per-request seed, and the
per-token rules of TensorRT-LLM's executor (penalties, min_tokens, log probs).

`temperature == 0` (or `top_k == 1`) is greedy argmax. Otherwise logits are divided by the
temperature, filtered to the top-k tokens, then to the smallest set whose probability reaches
top-p (the most likely token is always kept), and one token is drawn with the request's own
`torch.Generator`, so a seeded request is reproducible whatever else is in the batch.

`TokenPicker` is one request's choice of each next token under every per-request rule, as
TensorRT-LLM's penalty layer and sampling kernels apply them (`adjust_logits`, the citations there):

1. the temperature divides the logits first (temperature 0, trtbuild's greedy: the logits themselves);
2. tokens of the prompt *and* of the output so far are penalised: repetition
   (`logit < 0 ? logit * p : logit / p`, once per token seen), presence (`logit -= p` once per token
   seen), frequency (`logit -= p * count`, count over prompt + output), in that order, then the
   logits are clamped to the float range;
3. min_tokens: every end id is masked (-inf) while fewer than `min_tokens` tokens were generated;
4. the token is the argmax (greedy) or drawn after top-k / top-p from these logits;
5. its log prob is its log-softmax under these logits, over the whole vocabulary (before top-k /
   top-p); with `normalize_log_probs` (an engine-wide option upstream) a top-k request's per-token
   log prob is renormalised over its top-k set (greedy: 0.0), the cumulative one never is.
With no penalty, no min_tokens and no log probs, `TokenPicker.pick` is exactly `sample`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trtbuild.common.errors import GenerationError

# Upstream sources of the rules below (TensorRT-LLM 1.2 era), cited in the comments as
# NVIDIA/TensorRT-LLM@<commit>:<path>:<line>. Full commits:
#   3585984b32cd = 3585984b32cded5cc002d3087d3da4b0fd9fb8a5 (penaltyKernels.cu with promptIgnoreLength,
#                  PR #8127, in 1.2.0; samplingConfig.cpp)
#   03961722f652 = 03961722f65265573cad179baca3bc5fe8c03f76 (samplingTopKKernels.cu)
#   03cff08f1494 = 03cff08f14948f2eb805e24829a813052030b41d (samplingTopPKernels.cu)
#   0165bd7ac275 = 0165bd7ac275dae69796767cdbb71ce1963506f3 (executor/executor.h)
#   1020a8d799d0 = 1020a8d799d04a1776f8eec19496ecafa2558506 (layers/defaultDecodingParams.h)
#   05316d331336 = 05316d3313360012536ace46c781518f5afae75e (layers/penaltyLayer.cpp)

_FLT_MAX = torch.finfo(torch.float32).max


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0
    seed: int | None = None
    # defaults 1.0 / 0.0 / 0.0:
    #   NVIDIA/TensorRT-LLM@1020a8d799d0:cpp/tensorrt_llm/layers/defaultDecodingParams.h:38-50
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        # repetitionPenalty > 0 (checkRepetitionPenalty):
        #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/executor/samplingConfig.cpp:52
        # ("It can have any value > 0.f"):
        #   NVIDIA/TensorRT-LLM@0165bd7ac275:cpp/include/tensorrt_llm/executor/executor.h:172-173
        # a non-finite value is refused here too (upstream does not check it)
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise GenerationError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")
        # presence / frequency are not checked:
        #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/executor/samplingConfig.cpp:53-54
        # ("It can have any values"):
        #   NVIDIA/TensorRT-LLM@0165bd7ac275:cpp/include/tensorrt_llm/executor/executor.h:175-179
        # NaN and inf are refused here (they would poison every logit)
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise GenerationError(f"{name} must be a finite number, got {v}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def generator(self, device: str) -> torch.Generator | None:
        if self.greedy:
            return None
        g = torch.Generator(device=device)
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


def _truncate(x: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Top-k then top-p over tempered logits x [V] (max <= 0): filtered-out tokens at -inf."""
    if 0 < p.top_k < x.shape[-1]:
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = sorted_x.softmax(-1)
        drop = probs.cumsum(-1) - probs >= p.top_p  # mass before this token already reaches top_p
        x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return x


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """logits [V] fp32 -> tempered logits with filtered-out tokens at -inf."""
    x = (logits - logits.max()) / p.temperature  # <= 0: a tiny temperature cannot overflow to inf
    return _truncate(x, p)


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> torch.Tensor:
    """logits [B, V] fp32 -> next tokens [B] (int64)."""
    out = logits.argmax(-1)
    for b, (p, g) in enumerate(zip(params, generators)):
        if not p.greedy:
            probs = filter_logits(logits[b], p).softmax(-1)
            out[b] = torch.multinomial(probs, 1, generator=g)[0]
    return out


def adjust_logits(logits: torch.Tensor, p: SamplingParams, counts: torch.Tensor | None = None,
                  masked: Sequence[int] = (), bias: torch.Tensor | None = None,
                  banned: Sequence[int] = ()) -> torch.Tensor:
    """The logits a token is chosen from: logits [V] -> fp32 [V] (TensorRT-LLM's penalty layer, then
    its ban-words layer).

    counts: [V] occurrences of each token in the prompt and the output so far (None: no penalty);
    masked: token ids set to -inf (the end ids while min_tokens is not reached);
    bias: [V] added first (the request's embedding bias); banned: token ids set to -inf last (bad words).
    """
    x = logits.float()
    if bias is not None:
        # `logit += biasBase[index]` before the temperature:
        #   NVIDIA/TensorRT-LLM@249d93d551e8:cpp/tensorrt_llm/kernels/penaltyKernels.cu:batchApplyPenalty ("Bias")
        x = x + bias
    # the temperature first, `logit *= invTemperature`:
    #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:190-193
    # with invTemperature = 1 / (temperature + 1e-6) (here an exact division, as `sample` does):
    #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:85
    # Greedy at temperature 0 (trtbuild's spelling) uses the logits themselves: upstream's greedy is
    # top_k 1 at the default temperature 1.0 (upstream would scale by 1e6 at temperature 0, which makes
    # any additive penalty vanish; that artefact is not reproduced):
    #   NVIDIA/TensorRT-LLM@1020a8d799d0:cpp/tensorrt_llm/layers/defaultDecodingParams.h:33-35
    if p.temperature > 0 and p.temperature != 1.0:
        x = x / p.temperature
    if counts is not None and p.penalised:
        # one count over prompt + output: prompt tokens (default promptIgnoreLength 0):
        #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:137-146
        # and each generated token:
        #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:162-167
        seen = counts > 0
        if p.repetition_penalty != 1.0:
            # logit < 0 ? logit * p : logit / p, tokens seen anywhere, once each:
            #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:196-205
            x = torch.where(seen, torch.where(x < 0, x * p.repetition_penalty, x / p.repetition_penalty), x)
        if p.presence_penalty != 0.0:
            # logit -= p if count > 0:
            #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:207-213
            x = x - p.presence_penalty * seen
        if p.frequency_penalty != 0.0:
            # logit -= p * count:
            #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:215-217
            x = x - p.frequency_penalty * counts
    # "do clamp to prevent overflow":
    #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:221-229
    x = x.clamp(-_FLT_MAX, _FLT_MAX)
    if masked:
        # `currentStep - inputLen < minLength` -> logits[endId] = -FLT_MAX:
        #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:237-244
        # (upstream has one end id per request; every end id of the request is masked here)
        x = x.index_fill(0, torch.tensor(list(masked), device=x.device), float("-inf"))
    if banned:
        # the ban-words layer runs after the penalty layer (layersFactory.h: PENALTY_LAYER first, then
        # BAN_WORDS_LAYER, DECODING_LAYER): NVIDIA/TensorRT-LLM@c629546ce429:cpp/tensorrt_llm/layers/layersFactory.h
        x = x.index_fill(0, torch.tensor(list(banned), device=x.device), float("-inf"))
    return x


def banned_tokens(bad_words: Sequence[Sequence[int]], seq: Sequence[int]) -> tuple[int, ...]:
    """The last token of each bad word whose other tokens end the sequence so far (prompt + output;
    a one-token bad word is always banned): TensorRT-LLM's ban_bad_words kernel,
    NVIDIA/TensorRT-LLM@829d3e2c34c7:cpp/tensorrt_llm/kernels/banBadWords.cu:ban_bad_words (it compares
    against output_ids, which hold the prompt first)."""
    out = []
    for w in bad_words:
        k = len(w) - 1
        if k == 0 or (len(seq) >= k and tuple(seq[len(seq) - k:]) == tuple(w[:k])):
            out.append(w[-1])
    return tuple(dict.fromkeys(out))


class TokenPicker:
    """One request's next-token choice under all its per-token rules (module docstring).

    `pick(logits)` chooses a token from one position's logits [V], records its log probs when asked
    and counts it as generated: every call is one emitted token, in order. The caller stops calling
    once the request is finished (a speculative walk may pick a few tokens past an end id; the
    caller cuts `log_probs` to the tokens it kept)."""

    def __init__(self, sampling: SamplingParams, generator: torch.Generator | None, *,
                 prompt: Sequence[int], vocab_size: int, end_ids: Sequence[int] = (), min_tokens: int = 0,
                 log_probs: bool = False, normalize_log_probs: bool = False, device="cpu",
                 bad_words: Sequence[Sequence[int]] = (), embedding_bias: Sequence[float] | None = None) -> None:
        self.params = sampling
        self.bad_words = tuple(tuple(w) for w in bad_words if len(w) > 0)
        # the sequence so far, for multi-token bad words (prompt + picked tokens)
        self.seq: list[int] | None = list(prompt) if any(len(w) > 1 for w in self.bad_words) else None
        self.bias = (None if embedding_bias is None
                     else torch.tensor(list(embedding_bias), dtype=torch.float32, device=device))
        self.generator = generator
        self.end_ids = tuple(e for e in dict.fromkeys(end_ids) if 0 <= e < vocab_size)
        self.min_tokens = min_tokens
        self.normalize = normalize_log_probs
        self.generated = 0
        self.counts: torch.Tensor | None = None
        if sampling.penalised:
            self.counts = torch.bincount(torch.tensor(list(prompt), dtype=torch.long, device=device),
                                         minlength=vocab_size).float()
        # log_probs: per picked token, as reported (normalised when asked); raw: never normalised
        self.log_probs: list[float] | None = [] if log_probs else None
        self.raw_log_probs: list[float] | None = [] if log_probs else None

    @property
    def trivial(self) -> bool:
        """No rule beyond `sample` (the caller may use a batched argmax instead of `pick`)."""
        return (self.counts is None and self.log_probs is None and self.min_tokens <= self.generated
                and not self.bad_words and self.bias is None)

    def _masked(self) -> tuple[int, ...]:
        # masked while (tokens generated so far) < minLength:
        #   NVIDIA/TensorRT-LLM@3585984b32cd:cpp/tensorrt_llm/kernels/penaltyKernels.cu:242
        return self.end_ids if self.generated < self.min_tokens else ()

    def _banned(self) -> tuple[int, ...]:
        return banned_tokens(self.bad_words, self.seq if self.seq is not None else ()) if self.bad_words else ()

    def pick(self, logits: torch.Tensor) -> int:
        p, masked, banned = self.params, self._masked(), self._banned()
        x = None
        if self.counts is None and not masked and not banned and self.bias is None:
            tok = int(sample(logits[None], [p], [self.generator])[0])  # today's rule, draw for draw
        else:
            x = adjust_logits(logits, p, self.counts, masked, self.bias, banned)
            if p.greedy:
                tok = int(x.argmax())
            else:
                probs = _truncate(x - x.max(), p).softmax(-1)
                tok = int(torch.multinomial(probs, 1, generator=self.generator)[0])
        self._record(tok, logits, x)
        return tok

    def observe(self, tok: int, logits: torch.Tensor) -> None:
        """Count `tok` as the next generated token without choosing it (a draft token accepted by
        typical acceptance): log prob, penalty counts and bad-word state as `pick` would record them."""
        self._record(tok, logits, None)

    def _record(self, tok: int, logits: torch.Tensor, x: torch.Tensor | None) -> None:
        """Book `tok` as generated; x: the adjusted logits it was chosen from (None: not computed yet)."""
        p = self.params
        if self.log_probs is not None:
            if x is None:
                x = adjust_logits(logits, p, self.counts, self._masked(), self.bias, self._banned())
            lsm = x.log_softmax(-1)
            # with log probs asked, the values are already the softmax over the vocabulary of the
            # penalised logits:
            #   NVIDIA/TensorRT-LLM@03961722f652:cpp/tensorrt_llm/kernels/samplingTopKKernels.cu:204-211
            # logProb = logf(prob of the chosen token), cumLogProbs += logProb:
            #   NVIDIA/TensorRT-LLM@03961722f652:cpp/tensorrt_llm/kernels/samplingTopKKernels.cu:240-244
            # top-p: lprob = logf(sortedLogProbs[offset]), the same probability:
            #   NVIDIA/TensorRT-LLM@03cff08f1494:cpp/tensorrt_llm/kernels/samplingTopPKernels.cu:epilogue()
            raw = float(lsm[tok])
            out = raw
            if self.normalize and (p.greedy or p.top_k > 0):
                # normalised = logProb - logf(sum of the top-k probabilities):
                #   NVIDIA/TensorRT-LLM@03961722f652:cpp/tensorrt_llm/kernels/samplingTopKKernels.cu:247-253
                # (greedy is top-k with k = 1: 0.0); the top-p kernel never normalises
                k = 1 if p.greedy else min(p.top_k, lsm.shape[-1])
                out = raw - float(torch.logsumexp(torch.topk(lsm, k).values, -1))
            self.raw_log_probs.append(raw)
            self.log_probs.append(out)
        if self.counts is not None:
            self.counts[tok] += 1
        if self.seq is not None:
            self.seq.append(tok)
        self.generated += 1

    def report(self, emitted: int, kept: int) -> tuple[float | None, tuple[float, ...] | None]:
        """(cum log prob, per-token log probs) for a request that emitted `emitted` tokens of which the
        first `kept` are its output (an end id it stopped at is emitted, not kept). The cumulative log
        prob includes the end id's: upstream adds every chosen token's log prob, the end id's included,
        before the end id check that leaves the sequence length unchanged:
        NVIDIA/TensorRT-LLM@03961722f652:cpp/tensorrt_llm/kernels/samplingTopKKernels.cu:243, :260-273
        while the per-token log probs follow the output tokens."""
        if self.log_probs is None:
            return None, None
        return float(sum(self.raw_log_probs[:emitted])), tuple(self.log_probs[:kept])
