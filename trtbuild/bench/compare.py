"""`trtbuild bench compare DIR...`: load points of several runs side by side, ratios to the first;
`crossover`: the load points at which each speculative run is slower than the plain one."""

from __future__ import annotations

import json
from pathlib import Path

from trtbuild.common.errors import ConfigError

# (metric, quantile or None, column, format, ratio to the first run)
METRICS = (("output_token_throughput_per_s", None, "out tok/s", ".1f", True),
           ("time_to_first_token_ms", "p50", "TTFT p50 ms", ".1f", True),
           ("inter_token_latency_ms", "p50", "ITL p50 ms", ".1f", True),
           ("request_latency_ms", "p50", "latency p50 ms", ".1f", True),
           ("acceptance_length", None, "accept len", ".1f", True),
           # the server's speculation counters over the point (bench.speculation): no ratio, the plain run has none
           ("draft_tokens_per_step", None, "draft/step", ".2f", False),
           ("draft_acceptance_rate", None, "acc rate", ".2f", False),
           ("estimated_acceptance_rate", None, "acc est", ".2f", False),
           ("speculating_row_share", None, "spec rows", ".0%", False))
THROUGHPUT = "output_token_throughput_per_s"


def _load(d: Path) -> dict:
    try:
        return json.loads((Path(d) / "results.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{d}: no readable results.json ({e})") from None


def _value(result: dict, metric: str, q: str | None) -> float | None:
    v = result.get(metric)
    return (v or {}).get(q) if q else v


def _key(load: dict) -> str:
    return json.dumps(load, sort_keys=True)


def compare(dirs: list[Path]) -> str:
    runs = [_load(d) for d in dirs]
    base = {_key(r["load"]): r for r in runs[0]["results"]}
    lines = []
    for key, b in base.items():
        lines.append(f"load {key}")
        lines.append(f"  {'run':<28}" + "".join(f"{label:>18}" for _, _, label, _, _ in METRICS))
        for d, run in zip(dirs, runs):
            r = next((x for x in run["results"] if _key(x["load"]) == key), None)
            cells = []
            for metric, q, _, fmt, ratio in METRICS:
                v, v0 = (_value(r, metric, q) if r else None), _value(b, metric, q)
                cells.append("-" if v is None else format(v, fmt) + (f" ({v / v0:.2f}x)" if ratio and v0 else ""))
            lines.append(f"  {str(d)[-28:]:<28}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def _point(load: dict) -> str:
    return str(load["concurrency"]) if "concurrency" in load else f"rate {load.get('request_rate')}/s"


def crossover(names: list[str], dirs: list[Path], plain: list[bool | None]) -> list[str]:
    """A heading naming the plain run (the first with `plain[i]` True), then one line per speculative
    run (`plain[i]` False; None: unknown, skipped): the load points at which its output token throughput
    is below the plain run's (ratio < 1.0), or that it never is. [] without speculative runs."""
    runs = [_load(d) for d in dirs]
    base = next((i for i, p in enumerate(plain) if p), None)
    spec = [i for i, p in enumerate(plain) if p is False]
    if base is None:
        return [f"{names[i]}: no plain build among the runs to compare with" for i in spec]
    ref = {_key(r["load"]): r.get(THROUGHPUT) for r in runs[base]["results"]}
    lines = [f"crossover (output tok/s against the plain build {names[base]}):"] if spec else []
    for i in spec:
        slower, over = [], []
        for r in runs[i]["results"]:
            v, v0 = r.get(THROUGHPUT), ref.get(_key(r["load"]))
            if v is None or not v0:  # failed here or in the plain run: no ratio
                continue
            over.append(_point(r["load"]))
            if v / v0 < 1.0:
                slower.append(f"{_point(r['load'])} ({v / v0:.2f}x)")
        prefix = "concurrency " if all("concurrency" in r["load"] for r in runs[i]["results"]) else ""
        if slower:
            lines.append(f"{names[i]}: slower than plain at {prefix}{', '.join(slower)}")
        elif over:
            lines.append(f"{names[i]}: never slower than plain over {prefix}{', '.join(over)}")
        else:
            lines.append(f"{names[i]}: no load point measured in both it and plain")
    return lines
