"""Benchmark metrics as genai-perf defines them, from per-request timestamps (pure functions).

Per request: time to first token (TTFT) = first response - request sent; request latency = last
response - request sent; inter-token latency (ITL) = (latency - TTFT) / (output tokens - 1);
input/output sequence lengths counted with the tokenizer. Per load point: avg/min/max/p50/p90/p99
of each, output token throughput = output tokens / benchmark duration (first request sent to last
response), request throughput = requests / duration, goodput = requests meeting every SLO /
duration, and the acceptance length/rate reported by the server.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class RequestRecord:
    index: int
    sent: float  # seconds (monotonic clock)
    input_tokens: int
    responses: list[float] = field(default_factory=list)  # arrival time of each response with text
    output_tokens: int = 0
    text: str = ""
    error: str | None = None
    accepted_draft_tokens: int = 0
    draft_tokens: int = 0

    @property
    def ttft(self) -> float | None:
        return self.responses[0] - self.sent if self.responses else None

    @property
    def latency(self) -> float | None:
        return self.responses[-1] - self.sent if self.responses else None

    @property
    def itl(self) -> float | None:
        if not self.responses or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ttft=self.ttft, latency=self.latency, itl=self.itl)
        return d


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of a non-empty list, q in [0, 100]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"avg": sum(values) / len(values), "min": min(values), "max": max(values),
            "p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99)}


def summarize(records: list[RequestRecord], slo: dict[str, float] | None = None) -> dict:
    """Metrics of one load point. slo: {"ttft": ms, "itl": ms, "latency": ms} (any subset).

    A request counts as an error if it raised or got no text; "first_error" is the first one's reason."""
    ok = [r for r in records if r.error is None and r.responses]
    first_error = next((r.error or "no response" for r in records if r.error is not None or not r.responses), None)
    if not ok:
        return {"requests": len(records), "errors": len(records), "first_error": first_error}
    start = min(r.sent for r in ok)
    end = max(r.responses[-1] for r in ok)
    duration = max(end - start, 1e-9)
    ms = 1000.0
    out_tokens = sum(r.output_tokens for r in ok)
    good = [r for r in ok if all(
        (v := {"ttft": r.ttft, "itl": r.itl, "latency": r.latency}[k]) is not None and v * ms <= limit
        for k, limit in (slo or {}).items())]
    drafted = sum(r.draft_tokens for r in ok)
    accepted = sum(r.accepted_draft_tokens for r in ok)
    steps = sum(max(r.output_tokens - r.accepted_draft_tokens, 1) for r in ok)
    return {
        "requests": len(records), "errors": len(records) - len(ok), "first_error": first_error,
        "duration_s": duration,
        "time_to_first_token_ms": stats([r.ttft * ms for r in ok]),
        "inter_token_latency_ms": stats([r.itl * ms for r in ok if r.itl is not None]),
        "request_latency_ms": stats([r.latency * ms for r in ok]),
        "input_sequence_length": stats([float(r.input_tokens) for r in ok]),
        "output_sequence_length": stats([float(r.output_tokens) for r in ok]),
        "output_token_throughput_per_s": out_tokens / duration,
        "request_throughput_per_s": len(ok) / duration,
        "goodput_per_s": len(good) / duration if slo else None,
        "acceptance_rate": accepted / drafted if drafted else None,
        "acceptance_length": out_tokens / steps if drafted else None,
    }


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft:500,itl:50' -> {"ttft": 500.0, "itl": 50.0} (milliseconds)."""
    from trtbuild.common.errors import ConfigError

    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition(":")
        key = key.strip()
        if key not in ("ttft", "itl", "latency"):
            raise ConfigError(f"--slo: unknown metric {key!r} (use ttft, itl, latency)")
        try:
            out[key] = float(value)
        except ValueError:
            raise ConfigError(f"--slo: {part!r} needs a number of milliseconds, e.g. ttft:500") from None
        if out[key] <= 0:
            raise ConfigError(f"--slo: {key} must be > 0 ms")
    return out
