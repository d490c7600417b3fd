"""What Medusa and lookahead decoding share: prefill, per-row bookkeeping, the draft attention
mask and KV compaction.

A speculative step feeds each row T new tokens (the last accepted token plus drafts) into cache
slots L_b .. L_b + T - 1, where L_b is the row's accepted length (slot == position for accepted
tokens). Token t sits at position L_b + depth[b, t] and sees the row's context plus the step tokens
its `local` mask allows. After verification the accepted tokens' KV entries are moved to
consecutive slots; the other slots are overwritten by later steps.
"""

from __future__ import annotations

import torch

from trtbuild.runtime.generate import Request, Result, _stopped
from trtbuild.runtime.model import KVCache, Model


class Rows:
    """Per-request bookkeeping: emitted tokens, finish reason, steps, accepted drafts."""

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests
        self.outs: list[list[int]] = [[] for _ in requests]
        self.done: list[str | None] = [None] * len(requests)
        self.steps = [0] * len(requests)
        self.accepted = [0] * len(requests)

    def emit(self, b: int, token: int) -> bool:
        """Append a token to row b; True once the row is finished."""
        self.outs[b].append(token)
        self.done[b] = _stopped(self.outs[b], self.requests[b])
        return self.done[b] is not None

    def results(self) -> list[Result]:
        return [Result(tuple(o[:-1] if d == "end_id" else o), d or "length", s, a)
                for o, d, s, a in zip(self.outs, self.done, self.steps, self.accepted)]


def prefill(model: Model, requests: list[Request], cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompts into slots 0..P-1 (pad queries see only themselves); returns the final
    hidden state of each prompt's last token [B, H] and the prompt lengths [B]."""
    dev, B = model.device, len(requests)
    lens = torch.tensor([len(r.prompt) for r in requests], device=dev)
    P = int(lens.max())
    tokens = torch.zeros(B, P, dtype=torch.long, device=dev)
    for b, r in enumerate(requests):
        tokens[b, : len(r.prompt)] = torch.tensor(r.prompt, device=dev)
    t = torch.arange(P, device=dev)
    window = model.cfg.sliding_window
    q, k = t[None, :, None], t[None, None, :]
    mask = (k <= q) & (k < lens[:, None, None]) & ((q - k < window) if window else True)
    mask = (mask | torch.eye(P, dtype=torch.bool, device=dev)).unsqueeze(1)
    h = model.hidden(tokens, t[None, :].expand(B, P), cache, 0, mask)
    return h[torch.arange(B, device=dev), lens - 1], lens


def draft_attention_mask(local: torch.Tensor, depths: torch.Tensor, lengths: torch.Tensor, span: int,
                         window: int | None = None) -> torch.Tensor:
    """[B, 1, T, span] bool over cache slots 0..span-1.

    local: [B, T, T] bool, step token t may see step token u (t sees itself); depths: [B, T] the
    position offset of each step token; lengths: [B] accepted lengths L_b. Step token t of row b
    sees slots < L_b (its context; with a sliding window only positions less than `window`
    behind it) and slot L_b + u where local[b, t, u].
    """
    B, T, _ = local.shape
    dev = lengths.device
    col = torch.arange(span, device=dev)[None, None, :] - lengths[:, None, None]  # [B, 1, span]
    in_step = (col >= 0) & (col < T)
    seen = local.gather(2, col.clamp(0, T - 1).expand(B, T, span))  # [B, T, span]
    context = col < 0
    if window:
        context = context & (depths[:, :, None] - col < window)  # query L + depth, key L + col
    return (context | (in_step & seen)).unsqueeze(1)


def keep_path(cache: KVCache, b: int, start: int, path: list[int]) -> None:
    """Move the KV entries of row b's accepted step tokens (slots start + path[j]) to start + j."""
    if path == list(range(len(path))):
        return
    src = torch.tensor(path, device=cache.k.device) + start
    dst = torch.arange(len(path), device=cache.k.device) + start
    for kv in (cache.k, cache.v):  # [L, B, nkv, S, d]
        row = kv[:, b]
        row[:, :, dst] = row[:, :, src]
