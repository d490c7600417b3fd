"""The one measurement the tuners make: decode prompts through the decoding core and time it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from trtbuild.common.spec import DecodingSpec
from trtbuild.runtime import Model, Request, decode


@dataclass(frozen=True)
class Measurement:
    decoding: DecodingSpec  # None: plain decoding
    tokens_per_s: float  # over the whole run, prefill included
    acceptance_length: float  # tokens per target forward pass of the decode phase (plain: 1.0)
    compression_ratio: float  # target forward passes plain decoding needs over the passes used


def measure(model: Model, prompts: list[list[int]], new_tokens: int, decoding: DecodingSpec) -> Measurement:
    """Decode every prompt alone (batch 1, greedy) with `decoding`, through the same core as the
    server (`runtime.decode`, so plain and speculative runs pay the same overheads), timed as one run."""
    reqs = [Request(tuple(p), new_tokens) for p in prompts]
    t = time.perf_counter()
    results = [decode(model, [r], decoding)[0] for r in reqs]
    elapsed = time.perf_counter() - t
    tokens = sum(len(r.output_ids) for r in results)
    steps = sum(r.num_steps for r in results)
    return Measurement(decoding, tokens / elapsed, (tokens - len(results)) / max(steps, 1),
                       tokens / (steps + len(results)))
