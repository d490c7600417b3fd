"""The tokens of one lookahead step (Fu et al., 2024, arXiv 2402.02057), as node ids and masks.

Per request, one step holds:
- node 0: the root (the last emitted token, position offset 0);
- the lookahead branch: a window of `levels` <= N - 1 rows of W columns, the trajectory of past
  Jacobi iterations. Level l, column i sits at offset i + l; level 0, column 0 is the root itself, so
  the branch adds W * levels - 1 tokens. A window token sees the root, level 0's columns 1..i, and the
  tokens above it in its own column: every column is a coherent guess of the text after the root;
- the verification branch: up to G candidate n-grams from the pool under the root token, N - 1
  tokens each at offsets 1..N-1, each seeing only the root and its own earlier tokens.
With a full window that is (W + G)(N - 1) tokens: TensorRT-LLM's max_draft_len + 1.
The chains verification walks are window column 0 (a free extra candidate), then the n-grams.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch


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

    @cached_property
    def mask(self) -> torch.Tensor:
        """[T, T] bool from `visible`: node t sees node u."""
        m = torch.zeros(self.num_nodes, self.num_nodes, dtype=torch.bool)
        for t, seen in enumerate(self.visible):
            m[t, list(seen)] = True
        return m


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
