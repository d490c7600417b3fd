"""What a speculative step costs against a plain one on the reference runtime: batch-1 forwards of
the shapes each decoding verifies, alternating, medians.

    .venv/bin/python benchmarks/step_cost.py --ckpt CKPT [--medusa-choices "{0}, {1}, {0, 0}"]
        [--lookahead 1,5,2] [--dtype float32] [--rounds 5] [--steps 16] [--context 64]

Each round times `--steps` forwards of every shape over a cache of `--context` tokens (the token
count a step of that decoding verifies, decoding.step_tokens; a causal mask over the step's
tokens, which costs what a tree mask costs) and keeps the per-step median: plain (1 token), Medusa
(its tree's nodes, plus one pass of the Medusa heads when CKPT has heads) and lookahead. Prints
the medians over rounds of the step time and of the per-round ratio to plain as one JSON report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--medusa-choices", default="{0}, {1}, {0, 0}")
    ap.add_argument("--lookahead", default="1,5,2", metavar="W,N,G")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--context", type=int, default=64)
    a = ap.parse_args()

    from trtbuild.common.lookahead.spec import LookaheadSpec
    from trtbuild.common.medusa.choices import MedusaSpec, parse_choices
    from trtbuild.runtime import Model
    from trtbuild.runtime.decoding import draft_attention_mask, step_tokens

    m = Model.load(a.ckpt, dtype=a.dtype, device="cpu")
    medusa = MedusaSpec(parse_choices(a.medusa_choices).choices)
    lookahead = LookaheadSpec(*(int(v) for v in a.lookahead.split(",")))
    shapes = {"plain": (1, False), f"medusa-{step_tokens(medusa)}": (step_tokens(medusa), bool(m.medusa)),
              f"lookahead-{a.lookahead}": (step_tokens(lookahead), False)}
    S = a.context + max(t for t, _ in shapes.values()) + 1
    cache = m.new_cache(1, S)
    lens = torch.tensor([a.context])

    @torch.inference_mode()
    def step(T: int, heads: bool) -> float:
        tokens = torch.zeros(1, T, dtype=torch.long)
        depths = torch.arange(T)[None]
        mask = draft_attention_mask(torch.ones(T, T, dtype=torch.bool).tril()[None], depths, lens, a.context + T)
        t0 = time.perf_counter()
        h = m.hidden(tokens, lens[:, None] + depths, cache, lens[:, None] + depths, mask)  # [1, T, H]
        m.logits(h)
        if heads:
            m.medusa_logits(h[:, 0]).topk(8, dim=-1)
        return time.perf_counter() - t0

    for T, heads in shapes.values():
        step(T, heads)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in shapes}
    ratios: dict[str, list[float]] = {k: [] for k in shapes}
    for _ in range(a.rounds):
        per = {k: statistics.median(step(T, heads) for _ in range(a.steps)) for k, (T, heads) in shapes.items()}
        for k, t in per.items():
            times[k].append(t)
            ratios[k].append(t / per["plain"])
    print(json.dumps({
        "ckpt": a.ckpt, "dtype": a.dtype, "threads": torch.get_num_threads(), "context": a.context,
        "tokens": {k: T for k, (T, _) in shapes.items()},
        "step_ms": {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items()},
        "ratio_to_plain": {k: round(statistics.median(v), 3) for k, v in ratios.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
