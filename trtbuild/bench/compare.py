"""`trtbuild bench compare DIR...`: load points of several runs side by side, ratios to the first."""

from __future__ import annotations

import json
from pathlib import Path

from trtbuild.common.errors import ConfigError

METRICS = (("output_token_throughput_per_s", None, "out tok/s"), ("time_to_first_token_ms", "p50", "TTFT p50 ms"),
           ("inter_token_latency_ms", "p50", "ITL p50 ms"), ("request_latency_ms", "p50", "latency p50 ms"),
           ("acceptance_length", None, "accept len"))


def _load(d: Path) -> dict:
    try:
        return json.loads((Path(d) / "results.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{d}: no readable results.json ({e})") from None


def _value(result: dict, metric: str, q: str | None) -> float | None:
    v = result.get(metric)
    return (v or {}).get(q) if q else v


def compare(dirs: list[Path]) -> str:
    runs = [_load(d) for d in dirs]
    base = {json.dumps(r["load"], sort_keys=True): r for r in runs[0]["results"]}
    lines = []
    for key, b in base.items():
        lines.append(f"load {key}")
        lines.append(f"  {'run':<28}" + "".join(f"{label:>18}" for _, _, label in METRICS))
        for d, run in zip(dirs, runs):
            r = next((x for x in run["results"] if json.dumps(x["load"], sort_keys=True) == key), None)
            cells = []
            for metric, q, _ in METRICS:
                v, v0 = (_value(r, metric, q) if r else None), _value(b, metric, q)
                cells.append("-" if v is None else f"{v:.1f}" + (f" ({v / v0:.2f}x)" if v0 else ""))
            lines.append(f"  {str(d)[-28:]:<28}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)
