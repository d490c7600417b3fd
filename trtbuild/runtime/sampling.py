"""Token selection: greedy, or temperature / top-k / top-p sampling with a per-request seed.

`temperature == 0` (or `top_k == 1`) is greedy argmax. Otherwise logits are divided by the
temperature, filtered to the top-k tokens, then to the smallest set whose probability reaches
top-p (the most likely token is always kept), and one token is drawn with the request's own
`torch.Generator`, so a seeded request is reproducible whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trtbuild.errors import GenerationError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def generator(self, device: str) -> torch.Generator | None:
        if self.greedy:
            return None
        g = torch.Generator(device=device)
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """logits [V] fp32 -> tempered logits with filtered-out tokens at -inf."""
    x = (logits - logits.max()) / p.temperature  # <= 0: a tiny temperature cannot overflow to inf
    if 0 < p.top_k < x.shape[-1]:
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = sorted_x.softmax(-1)
        drop = probs.cumsum(-1) - probs >= p.top_p  # mass before this token already reaches top_p
        x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return x


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> torch.Tensor:
    """logits [B, V] fp32 -> next tokens [B] (int64)."""
    out = logits.argmax(-1)
    for b, (p, g) in enumerate(zip(params, generators)):
        if not p.greedy:
            probs = filter_logits(logits[b], p).softmax(-1)
            out[b] = torch.multinomial(probs, 1, generator=g)[0]
    return out
