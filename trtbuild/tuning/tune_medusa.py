"""Size and shape a Medusa tree for the heads and the machine (`trtbuild tune-medusa`).

1. Head accuracy: on calibration prompts, the base model's greedy continuation is the truth; p[k, r]
   is how often the truth k + 2 tokens ahead is head k's r-th most likely token.
2. Tree: the Medusa paper's greedy construction. Treating heads as independent, a node's chance of
   being accepted is the product of p along its path, and a tree's expected acceptance length
   (tokens per target forward pass) is 1 + the sum of those chances. Adding nodes in order of that
   chance maximises it for every size K (a child never beats its parent, so the tree stays
   prefix-closed).
3. Size: verifying more nodes costs more per forward pass on a CPU, so K is picked by measured
   wall-clock tokens/s of tree decoding on this machine (unless --nodes fixes it).
"""

from __future__ import annotations


import torch

from trtbuild.common.errors import ConfigError
from trtbuild.common.medusa.choices import Choices, MedusaSpec
from trtbuild.runtime import Model, Request, generate
from trtbuild.runtime.generate import hidden_states
from trtbuild.tuning.measure import measure


def head_rank_probs(model: Model, prompts: list[list[int]], new_tokens: int, top_k: int = 10) -> torch.Tensor:
    """[K, top_k]: P(the greedy token k + 2 ahead is head k's r-th choice), over all positions."""
    K = len(model.medusa)
    hits, count = torch.zeros(K, top_k), torch.zeros(K)
    for p, r in zip(prompts, generate(model, [Request(tuple(p), new_tokens) for p in prompts])):
        seq = list(p) + list(r.output_ids)
        start = len(p) - 1
        h = hidden_states(model, seq)[start:]  # [T', H]
        top = model.medusa_logits(h).topk(top_k, dim=-1).indices  # [T', K, top_k]
        ids = torch.tensor(seq)
        for k in range(K):
            n = len(seq) - start - k - 2
            if n <= 0:
                continue
            truth = ids[start + k + 2: start + k + 2 + n]  # [n]
            hits[k] += (top[:n, k] == truth[:, None]).float().sum(0)
            count[k] += n
    if not count.all():
        raise ConfigError("calibration too short: generate more tokens per prompt")
    return hits / count[:, None]


def greedy_tree(probs: torch.Tensor, nodes: int) -> tuple[Choices, float]:
    """The `nodes`-node tree maximising expected acceptance length; (choices, expected length)."""
    K, top_k = probs.shape
    p = probs.tolist()
    chosen: dict[tuple[int, ...], float] = {}
    frontier = {(r,): p[0][r] for r in range(top_k)}
    while len(chosen) < nodes and frontier:
        path = max(frontier, key=lambda q: (frontier[q], -len(q), [-i for i in q]))
        chosen[path] = frontier.pop(path)
        if len(path) < K:
            for r in range(top_k):
                frontier[path + (r,)] = chosen[path] * p[len(path)][r]
    choices = tuple(sorted(chosen, key=lambda q: (len(q), q)))
    return choices, 1.0 + sum(chosen.values())


def expected_length(choices: Choices, probs: torch.Tensor) -> float:
    """1 + sum over nodes of the product of p along the node's path."""
    total = 1.0
    for path in choices:
        prob = 1.0
        for depth, r in enumerate(path):
            prob *= float(probs[depth, r]) if depth < probs.shape[0] and r < probs.shape[1] else 0.0
        total += prob
    return total


def tune(model: Model, calibration: list[list[int]], new_tokens: int, nodes: int | None,
         candidates: tuple[int, ...], max_draft_len: int | None = None) -> dict:
    """Measure the heads, build greedy trees, pick the size; returns a JSON-ready report."""
    probs = head_rank_probs(model, calibration, new_tokens)
    limit = max_draft_len or 63
    sizes = [nodes] if nodes else sorted({k for k in candidates if 1 <= k <= limit})
    if not sizes:
        raise ConfigError(f"no tree size to try (max_draft_len {limit})")
    measure(model, calibration[:1], 8, None)  # warm-up: the first decode pays one-off costs
    plain = measure(model, calibration, new_tokens, None)
    rows = [{"nodes": 0, "tokens_per_s": round(plain.tokens_per_s, 2), "acceptance_length": 1.0,
             "expected_length": 1.0, "speedup": 1.0}]
    trees = {}
    for k in sizes:
        choices, expected = greedy_tree(probs, k)
        m = measure(model, calibration, new_tokens, MedusaSpec(choices))
        trees[k] = choices
        rows.append({"nodes": k, "tokens_per_s": round(m.tokens_per_s, 2),
                     "acceptance_length": round(m.acceptance_length, 3), "expected_length": round(expected, 3),
                     "speedup": round(m.tokens_per_s / plain.tokens_per_s, 3)})
    best = max(rows[1:], key=lambda r: r["tokens_per_s"])
    return {"best_nodes": best["nodes"], "choices": [list(p) for p in trees[best["nodes"]]],
            "head_rank_probs": [[round(float(x), 4) for x in row] for row in probs], "runs": rows}
