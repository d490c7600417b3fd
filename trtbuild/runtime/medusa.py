"""Medusa tree decoding in the reference runtime.

Glossary (Cai et al., 2024, arXiv 2401.10774):
- root: the base model's own next token, node 0 of the tree; it is already emitted;
- candidate (draft) tokens: a node at depth k with path (i0, ..., i(k-1)) holds the i(k-1)-th most
  likely token of Medusa head k-1, computed from the hidden state of the last accepted token;
- verification: one forward pass over all n = len(choices) + 1 nodes, each node attending to the
  context and to its own ancestors (the tree mask), at position context + depth;
- accepted tokens: the longest root-to-node path whose every token is the model's own choice at
  its parent (greedy), or passes the typical-acceptance threshold (temperature > 0);
- bonus token: the model's own choice after the last accepted node; it becomes the next root.
A step emits the accepted tokens plus the bonus token; with greedy decoding the output is exactly
plain greedy decoding's. The KV entries of the accepted path are moved to consecutive slots; the
rest of the tree's entries are left to be overwritten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trtbuild.common.errors import GenerationError
from trtbuild.common.medusa.choices import Choices
from trtbuild.runtime.generate import Request, Result, validate
from trtbuild.runtime.model import Model
from trtbuild.runtime.sampling import sample
from trtbuild.runtime.speculative import Rows, draft_attention_mask, keep_path, prefill


@dataclass(frozen=True)
class TreeBuffers:
    """Everything needed to verify one tree; node 0 is the root, node i >= 1 is `paths[i - 1]`."""

    paths: Choices
    parents: tuple[int, ...]  # [n], parents[0] == -1
    depths: tuple[int, ...]  # [n] position offsets: root 0, a path of length k at k
    children: tuple[tuple[int, ...], ...]  # [n] child node ids, in node order
    mask: torch.Tensor  # [n, n] bool: node i sees node j iff j is i or an ancestor of i
    retrieve: torch.Tensor  # [leaves, max_depth + 1] node ids root -> leaf, -1 padded
    head: torch.Tensor  # [n - 1] which Medusa head proposes node i (= depth - 1)
    rank: torch.Tensor  # [n - 1] which of that head's top-k tokens node i holds

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def top_k(self) -> int:
        """How many tokens each head must propose."""
        return int(self.rank.max()) + 1


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
    for i in range(n):
        j = i
        while j != -1:
            mask[i, j] = True
            j = parents[j]
    leaves = [i for i in range(1, n) if not children[i]] or [0]
    width = max(depths) + 1
    retrieve = torch.full((len(leaves), width), -1, dtype=torch.long)
    for r, leaf in enumerate(leaves):
        chain = []
        j = leaf
        while j != -1:
            chain.append(j)
            j = parents[j]
        retrieve[r, : len(chain)] = torch.tensor(chain[::-1])
    head = torch.tensor([len(p) - 1 for p in choices], dtype=torch.long)
    rank = torch.tensor([p[-1] for p in choices], dtype=torch.long)
    return TreeBuffers(tuple(choices), parents, depths, children, mask, retrieve, head, rank)


@dataclass(frozen=True)
class TypicalAcceptance:
    """Medusa's typical acceptance for temperature > 0 (TensorRT-LLM has none): a candidate is
    accepted iff p(token) > min(posterior_threshold, posterior_alpha * exp(-entropy))."""

    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3


def _greedy_walk(tree: TreeBuffers, tokens: list[int], pred: list[int]) -> list[int]:
    """Longest path whose every node holds the model's argmax at its parent; returns node ids."""
    path, u = [0], 0
    while True:
        nxt = next((c for c in tree.children[u] if tokens[c] == pred[u]), None)
        if nxt is None:
            return path
        path.append(nxt)
        u = nxt


def _typical_path(tree: TreeBuffers, tokens: torch.Tensor, logits: torch.Tensor, temperature: float,
                  rule: TypicalAcceptance) -> list[int]:
    """tokens [n], logits [n, V]: the retrieve path with the most accepted nodes (ties: highest log p)."""
    probs = torch.softmax(logits / temperature, dim=-1)  # [n, V]
    entropy = -(probs * torch.log(probs + 1e-5)).sum(-1)  # [n]
    threshold = torch.minimum(torch.full_like(entropy, rule.posterior_threshold),
                              rule.posterior_alpha * torch.exp(-entropy))
    parents = torch.tensor(tree.parents[1:])
    p_node = probs[parents, tokens[1:]]  # [n - 1] probability of node i's token at its parent
    ok = torch.cat([torch.ones(1, dtype=torch.bool), p_node > threshold[parents]])  # root always "accepted"
    logp = torch.cat([torch.zeros(1), torch.log(p_node + 1e-12)])
    best, best_key = [0], (0, -math.inf)
    for row in tree.retrieve.tolist():
        nodes = [i for i in row if i >= 0]
        k = 1
        while k < len(nodes) and ok[nodes[k]]:
            k += 1
        key = (k - 1, float(logp[nodes[:k]].sum()))
        if key > best_key:
            best, best_key = nodes[:k], key
    return best


def tree_attention_mask(tree: TreeBuffers, lengths: torch.Tensor, span: int,
                        window: int | None = None) -> torch.Tensor:
    """[B, 1, n, span] bool: node i of row b sees the row's context and its ancestors-or-self."""
    B, n = lengths.shape[0], tree.num_nodes
    local = tree.mask.to(lengths.device)[None].expand(B, n, n)
    depths = torch.tensor(tree.depths, device=lengths.device)[None].expand(B, n)
    return draft_attention_mask(local, depths, lengths, span, window)


def medusa_generate(model: Model, requests: list[Request], choices: Choices,
                    typical: TypicalAcceptance = TypicalAcceptance()) -> list[Result]:
    """Decode every request with Medusa tree verification, as one batch; results in request order."""
    validate(model, requests)
    if not model.medusa:
        raise GenerationError("this checkpoint has no Medusa heads (convert it with --medusa)")
    tree = tree_buffers(choices)
    if max(tree.depths) > len(model.medusa):
        raise GenerationError(f"medusa choices: tree depth {max(tree.depths)} exceeds the {len(model.medusa)} heads")
    if tree.top_k > model.cfg.dims.vocab_size:  # torch.topk over the vocabulary (parse_choices also caps at TOP_K_MAX)
        raise GenerationError(f"medusa choices: a node takes candidate {tree.top_k - 1} of a head, but the "
                              f"vocabulary has {model.cfg.dims.vocab_size} tokens")
    dev, n, B = model.device, tree.num_nodes, len(requests)
    cache = model.new_cache(B, max(len(r.prompt) + r.max_new_tokens for r in requests) + n + 1)
    params = [r.sampling for r in requests]
    gens = [p.generator(dev) for p in params]
    h_last, lens = prefill(model, requests, cache)
    root = sample(model.logits(h_last), params, gens)  # [B]: the first token, the first root
    rows = Rows(requests)
    for b in range(B):
        rows.emit(b, int(root[b]))
    head, rank, depths = tree.head.to(dev), tree.rank.to(dev), torch.tensor(tree.depths, device=dev)
    while not all(rows.done):
        cand = model.medusa_logits(h_last).topk(tree.top_k, dim=-1).indices  # [B, K, top_k]
        tree_tokens = torch.cat([root[:, None], cand[:, head, rank]], dim=1)  # [B, n]
        h = model.hidden(tree_tokens, lens[:, None] + depths[None, :], cache,
                         lens[:, None] + torch.arange(n, device=dev)[None, :],
                         tree_attention_mask(tree, lens, int(lens.max()) + n, model.cfg.sliding_window))
        logits = model.logits(h)  # [B, n, V]
        pred, tok_list = logits.argmax(-1).tolist(), tree_tokens.tolist()
        last = [0] * B
        for b in range(B):
            if rows.done[b] is not None:
                continue
            if params[b].greedy:
                path = _greedy_walk(tree, tok_list[b], pred[b])
            else:
                path = _typical_path(tree, tree_tokens[b].cpu(), logits[b].cpu(), params[b].temperature, typical)
            rows.steps[b] += 1
            rows.accepted[b] += len(path) - 1
            keep_path(cache, b, int(lens[b]), path)
            lens[b] += len(path)
            last[b] = path[-1]
            for node in path[1:]:
                if rows.emit(b, tok_list[b][node]):
                    break
            if rows.done[b] is not None:
                lens[b] = 0  # a finished row's cache is no longer read; keep its dummy steps in bounds
        at = (torch.arange(B, device=dev), torch.tensor(last, device=dev))
        h_last = h[at]  # [B, H]
        root = sample(logits[at], params, gens)  # the bonus tokens, from the verification logits
        for b in range(B):
            if rows.done[b] is None:
                rows.emit(b, int(root[b]))
    return rows.results()
