"""Lookahead decoding (Fu et al., 2024, arXiv 2402.02057) in the reference runtime.

Each step runs one forward pass over, per request:
- node 0: the last accepted token (the root, position offset 0);
- the lookahead branch: a window of `levels` <= N - 1 rows of W columns, the trajectory of past
  Jacobi iterations. Level l, column i sits at offset i + l; level 0, column 0 is the root itself, so
  the branch adds W * levels - 1 tokens. A window token sees the root, level 0's columns 1..i, and the
  tokens above it in its own column: every column is a coherent guess of the text after the root;
- the verification branch: up to G candidate n-grams from the pool under the root token, N - 1
  tokens each at offsets 1..N-1, each seeing only the context, the root and its own earlier tokens.
With a full window that is (W + G)(N - 1) tokens: TensorRT-LLM's max_draft_len + 1.

Verification walks the candidates (window column 0 is a free extra candidate): starting at the
root, the model's own choice at the current node (argmax, or a sample with temperature > 0) is
emitted; if some still-matching candidate holds that token next, the walk moves onto it, else the
step ends. Greedy output is therefore exactly plain greedy decoding's; sampled output follows the
model's distribution (each emitted token is drawn from it). The accepted nodes' KV entries are kept.

The window then advances one Jacobi iteration: each column's last-level output becomes a new level
(the oldest level is dropped once there are N - 1), and each full column adds one n-gram, keyed by
its level-0 token, to the pool. The pool is seeded with the prompt's n-grams and gets the n-grams
that emitted tokens complete. Level 0 starts as the root plus W - 1 tokens drawn from the prompt.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from trtbuild.common.errors import GenerationError
from trtbuild.common.lookahead.pool import NgramPool
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.runtime.generate import Request, Result, generate, validate
from trtbuild.runtime.model import Model
from trtbuild.runtime.sampling import sample
from trtbuild.runtime.speculative import Rows, draft_attention_mask, keep_path, prefill


@dataclass(frozen=True)
class StepLayout:
    """One request's tokens in one step. Node 0 is the root; then the window level by level (level
    0 without its column 0, which is the root), then each candidate's tokens."""

    depths: tuple[int, ...]  # [T] position offset of each node
    visible: tuple[tuple[int, ...], ...]  # [T] the step nodes each node sees, itself included
    window: tuple[tuple[int, ...], ...]  # [levels][W] node id of each window token; window[0][0] == 0
    chains: tuple[tuple[int, ...], ...]  # verification chains (node ids after the root): column 0, then candidates

    @property
    def num_nodes(self) -> int:
        return len(self.depths)


@lru_cache(maxsize=256)
def step_layout(width: int, levels: int, candidates: int, candidate_len: int) -> StepLayout:
    """Layout for a window of `levels` x `width` and `candidates` n-grams of `candidate_len` tokens."""
    if width < 1 or levels < 1 or candidates < 0 or (candidates and candidate_len < 1):
        raise ValueError(f"bad step layout ({width}, {levels}, {candidates}, {candidate_len})")
    depths, visible = [0], [(0,)]
    window: list[list[int]] = []
    for lev in range(levels):
        row = []
        for i in range(width):
            if lev == 0 and i == 0:
                row.append(0)
                continue
            node = len(depths)
            seen = (0, *window[0][1:i + 1]) if lev else (0, *row[1:i], node)
            if lev:
                seen = (*seen, *(window[m][i] for m in range(1, lev)), node)
            depths.append(i + lev)
            visible.append(tuple(sorted(set(seen))))
            row.append(node)
        window.append(row)
    chains = [tuple(window[m][0] for m in range(1, levels))] if levels > 1 else []
    for _ in range(candidates):
        chain = []
        for d in range(candidate_len):
            node = len(depths)
            chain.append(node)
            depths.append(d + 1)
            visible.append((0, *chain))
        chains.append(tuple(chain))
    return StepLayout(tuple(depths), tuple(visible), tuple(tuple(r) for r in window), tuple(chains))


@lru_cache(maxsize=256)
def _local_mask(layout: StepLayout) -> torch.Tensor:
    """[T, T] bool from layout.visible."""
    T = layout.num_nodes
    m = torch.zeros(T, T, dtype=torch.bool)
    for t, seen in enumerate(layout.visible):
        m[t, list(seen)] = True
    return m


def longest_chain(chains: Sequence[Sequence[int]], tokens: Sequence[int],
                  choose: Callable[[int], int]) -> tuple[list[int], int]:
    """Walk from the root (node 0) along the chains: at each node take the model's choice
    `choose(node)`; continue on the first chain that still matches and holds it next.
    Returns (accepted node ids starting with 0, the choice at the last accepted node)."""
    path, alive, d = [0], list(chains), 0
    while True:
        t = choose(path[-1])
        alive = [c for c in alive if len(c) > d and tokens[c[d]] == t]
        if not alive:
            return path, t
        path.append(alive[0][d])
        d += 1


class _RowState:
    """One request's lookahead state: its (w, n, g), window levels and n-gram pool."""

    def __init__(self, spec: LookaheadSpec, prompt: Sequence[int], first: int) -> None:
        self.w, self.n, self.g = spec.as_tuple()
        self.seq = list(prompt) + [first]
        self.pool = NgramPool(self.n, self.g) if self.n >= 2 else None
        if self.pool is not None:
            self.pool.add_sequence(self.seq)
        rng = random.Random(0)
        self.levels = [[first] + [rng.choice(prompt) for _ in range(self.w - 1)]]

    def step_tokens(self) -> tuple[StepLayout, list[int]]:
        root = self.seq[-1]
        self.levels[0][0] = root
        cands = self.pool.candidates(root, self.g) if self.pool is not None else []
        layout = step_layout(self.w, len(self.levels), len(cands), self.n - 1)
        tokens = [root] + [t for lev, row in enumerate(self.levels) for t in (row[1:] if lev == 0 else row)]
        tokens += [t for c in cands for t in c]
        return layout, tokens

    def advance(self, layout: StepLayout, tokens: list[int], pred: list[int], emitted: list[int]) -> None:
        """One Jacobi iteration of the window, then the pool gets the full columns' n-grams and
        the n-grams the emitted tokens complete."""
        new = [pred[node] for node in layout.window[-1]]  # each column's next guess
        if len(self.levels) == self.n - 1:
            assert self.pool is not None
            for i in range(self.w):
                col = [tokens[layout.window[m][i]] for m in range(len(self.levels))]
                self.pool.add(col[0], col[1:] + [new[i]])
            self.levels = self.levels[1:] + [new]
        else:
            self.levels.append(new)
        start = len(self.seq)
        self.seq.extend(emitted)
        if self.pool is not None:
            self.pool.add_sequence(self.seq, start - self.n + 1)


def lookahead_generate(model: Model, requests: list[Request], spec: LookaheadSpec | Sequence[LookaheadSpec],
                       limit: LookaheadSpec | None = None) -> list[Result]:
    """Decode every request with lookahead decoding, as one batch; results in request order.

    spec: one (W, N, G) for all requests or one per request; each must be <= `limit` (the
    engine's spec) when given.
    """
    validate(model, requests)
    specs = [spec] * len(requests) if isinstance(spec, LookaheadSpec) else list(spec)
    if len(specs) != len(requests):
        raise GenerationError(f"{len(specs)} lookahead specs for {len(requests)} requests")
    for s in specs:
        if limit is not None:
            limit.check_request(s)
    if all(s.max_ngram_size == 1 for s in specs):  # (1, 1, 0): plain decoding
        return generate(model, requests)
    dev, B = model.device, len(requests)
    most = max(s.decoding_tokens for s in specs)
    cache = model.new_cache(B, max(len(r.prompt) + r.max_new_tokens for r in requests) + most + 1)
    params = [r.sampling for r in requests]
    gens = [p.generator(dev) for p in params]
    h_last, lens = prefill(model, requests, cache)
    first = sample(model.logits(h_last), params, gens).tolist()  # [B]
    rows = Rows(requests)
    states = []
    for b, r in enumerate(requests):
        rows.emit(b, first[b])
        states.append(_RowState(specs[b], r.prompt, first[b]))
    single = step_layout(1, 1, 0, 0)
    while not all(rows.done):
        plan = [st.step_tokens() if rows.done[b] is None else (single, [0]) for b, st in enumerate(states)]
        T = max(layout.num_nodes for layout, _ in plan)
        tokens = torch.zeros(B, T, dtype=torch.long)
        depths = torch.zeros(B, T, dtype=torch.long)
        local = torch.eye(T, dtype=torch.bool)[None].repeat(B, 1, 1)  # padding sees only itself
        for b, (layout, toks) in enumerate(plan):
            k = layout.num_nodes
            tokens[b, :k] = torch.tensor(toks)
            depths[b, :k] = torch.tensor(layout.depths)
            local[b, :k, :k] = _local_mask(layout)
        tokens, depths, local = tokens.to(dev), depths.to(dev), local.to(dev)
        mask = draft_attention_mask(local, depths, lens, int(lens.max()) + T, model.cfg.sliding_window)
        h = model.hidden(tokens, lens[:, None] + depths, cache, lens[:, None] + torch.arange(T, device=dev)[None, :],
                         mask)
        logits = model.logits(h)  # [B, T, V]
        pred = logits.argmax(-1).tolist()
        for b, (layout, toks) in enumerate(plan):
            if rows.done[b] is not None:
                continue
            if params[b].greedy:
                choose = pred[b].__getitem__
            else:
                def choose(node: int, b: int = b) -> int:
                    return int(sample(logits[b, node][None], [params[b]], [gens[b]])[0])
            path, bonus = longest_chain(layout.chains, toks, choose)
            rows.steps[b] += 1
            rows.accepted[b] += len(path) - 1
            keep_path(cache, b, int(lens[b]), path)
            lens[b] += len(path)
            emitted = []
            for t in [toks[node] for node in path[1:]] + [bonus]:
                emitted.append(t)
                if rows.emit(b, t):
                    break
            states[b].advance(layout, toks, pred[b], emitted)
            if rows.done[b] is not None:
                lens[b] = 0  # a finished row's cache is no longer read; keep its dummy steps in bounds
    return rows.results()

