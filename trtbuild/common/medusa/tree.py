"""The buffers a verifier needs for one Medusa tree (Cai et al., 2024, arXiv 2401.10774).

Node 0 is the root (the last emitted token); node i >= 1 is `paths[i - 1]`: a path (i0, ..., ik-1)
of length k sits at depth k and holds the i(k-1)-th most likely token of Medusa head k-1. A node
sees its ancestors and itself; verification walks the root-to-leaf chains.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from trtbuild.common.errors import GenerationError
from trtbuild.common.medusa.choices import Choices


@dataclass(frozen=True)
class TreeBuffers:
    """Everything needed to verify one tree; node 0 is the root, node i >= 1 is `paths[i - 1]`."""

    paths: Choices
    parents: tuple[int, ...]  # [n], parents[0] == -1
    depths: tuple[int, ...]  # [n] position offsets: root 0, a path of length k at k
    children: tuple[tuple[int, ...], ...]  # [n] child node ids, in node order
    chains: tuple[tuple[int, ...], ...]  # [leaves] node ids root-exclusive -> leaf, leaves in node order
    mask: torch.Tensor  # [n, n] bool: node i sees node j iff j is i or an ancestor of i
    head: torch.Tensor  # [n - 1] which Medusa head proposes node i (= depth - 1)
    rank: torch.Tensor  # [n - 1] which of that head's top-k tokens node i holds

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def top_k(self) -> int:
        """How many tokens each head must propose."""
        return int(self.rank.max()) + 1 if len(self.paths) else 0

    @property
    def max_depth(self) -> int:
        return max(self.depths)


@lru_cache(maxsize=64)
def tree_buffers(choices: Choices) -> TreeBuffers:
    """Tree buffers for canonical choices (sorted by depth then path, prefix-closed)."""
    index = {p: i + 1 for i, p in enumerate(choices)}
    if len(index) != len(choices) or any(p[:-1] and p[:-1] not in index for p in choices):
        raise GenerationError("medusa choices must be unique and prefix-closed")
    n = len(choices) + 1
    parents = (-1,) + tuple(index.get(p[:-1], 0) for p in choices)
    depths = (0,) + tuple(len(p) for p in choices)
    children = tuple(tuple(c for c in range(1, n) if parents[c] == u) for u in range(n))
    mask = torch.zeros(n, n, dtype=torch.bool)
    chains = []
    for i in range(n):
        j, up = i, []
        while j != -1:
            mask[i, j] = True
            up.append(j)
            j = parents[j]
        if i and not children[i]:
            chains.append(tuple(up[-2::-1]))  # root excluded, root -> leaf
    head = torch.tensor([len(p) - 1 for p in choices], dtype=torch.long)
    rank = torch.tensor([p[-1] for p in choices], dtype=torch.long)
    return TreeBuffers(tuple(choices), parents, depths, children, tuple(chains), mask, head, rank)
