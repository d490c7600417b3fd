"""Pick a lookahead (W, N, G) for this machine (`trtbuild tune-lookahead`).

Every candidate decodes the calibration prompts greedily at batch 1; the table reports tokens/s
(prefill included), the acceptance length (tokens per decode-phase forward pass), the compression
ratio (plain decoding's forward passes / lookahead's) and the speedup over plain greedy decoding
measured in the same run (plain runs first and last; the faster of the two is the baseline). The
compression ratio carries over to GPUs; tokens/s is this machine's: a step verifies
max_draft_len + 1 tokens, nearly free on a GPU, not on a small CPU. A setting is recommended only
when it beats plain decoding here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.runtime import Model
from trtbuild.tuning.measure import measure

# a small grid around TensorRT-LLM's default (4, 3, 4): wider windows and more candidates cost
# rows per step; n-grams longer than 5 rarely verify fully on a small model
DEFAULT_GRID = tuple(LookaheadSpec(w, n, g) for w, n, g in itertools.product((1, 3, 5), (3, 4, 5), (2, 4, 8)))


def sweep(model: Model, prompts: list[list[int]], new_tokens: int,
          grid: Sequence[LookaheadSpec] = DEFAULT_GRID, limit: LookaheadSpec | None = None) -> dict:
    """Measure plain decoding and every spec of `grid`; returns a JSON-ready report."""
    for s in grid:
        if limit is not None:
            limit.check_request(s)
    measure(model, prompts[:1], 8, None)  # warm-up: the first decode pays one-off costs
    first = measure(model, prompts, new_tokens, None)
    runs = [measure(model, prompts, new_tokens, s) for s in grid]
    last = measure(model, prompts, new_tokens, None)
    base = max(first.tokens_per_s, last.tokens_per_s)
    rows = [{"W": r.decoding.max_window_size, "N": r.decoding.max_ngram_size, "G": r.decoding.max_verification_set_size,
             "max_draft_len": r.decoding.max_draft_len, "tokens_per_s": round(r.tokens_per_s, 2),
             "acceptance_length": round(r.acceptance_length, 3), "compression_ratio": round(r.compression_ratio, 3),
             "speedup": round(r.tokens_per_s / base, 3)} for r in runs if r.decoding is not None]
    fastest = max(rows, key=lambda r: r["tokens_per_s"])
    densest = max(rows, key=lambda r: r["compression_ratio"])
    report = {"prompts": len(prompts), "new_tokens": new_tokens,
              "plain_tokens_per_s": [round(first.tokens_per_s, 2), round(last.tokens_per_s, 2)],
              "runs": rows, "best_compression": densest, "fastest": fastest}
    if fastest["speedup"] > 1.0:
        report["recommended"] = {k: fastest[k] for k in ("W", "N", "G", "max_draft_len")}
    else:
        report["recommended"] = None
    return report
