"""`trtbuild bench`: load against a Triton endpoint (or the in-process scheduler), genai-perf's
metrics per load point, and results written as JSON, CSV and per-request JSON lines.

    DIR/results.json     metrics per load point, the served engine's spec when known, versions, machine
    DIR/results.csv      one row per load point
    DIR/requests.jsonl   one line per request: timestamps, lengths, text, errors
    DIR/*.png            TTFT and ITL distributions, throughput vs concurrency, latency vs throughput
"""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

from trtbuild.bench.load import Prompt, run_load
from trtbuild.bench.metrics import summarize

CSV_FIELDS = (("time_to_first_token_ms", "p50"), ("time_to_first_token_ms", "p99"), ("inter_token_latency_ms", "p50"),
              ("inter_token_latency_ms", "p99"), ("request_latency_ms", "p50"), ("request_latency_ms", "p99"))


def bench(send, prompts: list[Prompt], tok, points: list[dict], *, warmup: int = 0, slo: dict | None = None,
          out_dir: Path | None = None, meta: dict | None = None, echo=print, duration: float | None = None) -> dict:
    """Run every load point ({"concurrency": C} or {"request_rate": R, "burstiness": B}) on `prompts`."""
    from tqdm import tqdm

    from trtbuild import __version__

    if warmup:
        run_load(send, prompts[:warmup], tok, concurrency=1)
    results, all_records = [], []
    for point in points:
        with tqdm(total=None if duration else len(prompts), desc=_label(point), unit="req", leave=False) as bar:
            records = run_load(send, prompts, tok, concurrency=point.get("concurrency"),
                               rate=point.get("request_rate"), burstiness=point.get("burstiness", 1.0),
                               seed=point.get("seed", 0), progress=lambda: bar.update(1), duration=duration)
        summary = summarize(records, slo)
        results.append({"load": point, **summary})
        all_records += [{"load": point, **r.to_dict()} for r in records]
    report = {"trtbuild_version": __version__, "machine": {"platform": platform.platform(),
                                                           "processor": platform.processor(),
                                                           "python": platform.python_version()},
              "slo_ms": slo or None, **(meta or {}), "results": results}
    echo(table(results))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        with open(out_dir / "requests.jsonl", "w") as f:
            for r in all_records:
                f.write(json.dumps(r) + "\n")
        with open(out_dir / "results.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["load", "requests", "errors", "output_token_throughput_per_s", "request_throughput_per_s",
                        "goodput_per_s", "acceptance_length", *[f"{m}_{q}" for m, q in CSV_FIELDS]])
            for r in results:
                w.writerow([_label(r["load"]), r["requests"], r["errors"], r.get("output_token_throughput_per_s"),
                            r.get("request_throughput_per_s"), r.get("goodput_per_s"), r.get("acceptance_length"),
                            *[(r.get(m) or {}).get(q) for m, q in CSV_FIELDS]])
        from trtbuild.bench.plots import write_plots

        plots = write_plots(report, all_records, out_dir)
        echo(f"wrote {out_dir}/results.json, results.csv, requests.jsonl and plots: "
             + ", ".join(p.name for p in plots))
    return report


def _label(point: dict) -> str:
    if "concurrency" in point:
        return f"concurrency {point['concurrency']}"
    return f"rate {point['request_rate']}/s"


def table(results: list[dict]) -> str:
    head = f"{'load':<16} {'req':>4} {'err':>3} {'out tok/s':>9} {'req/s':>6} {'TTFT p50':>9} {'TTFT p99':>9} " \
           f"{'ITL p50':>8} {'ITL p99':>8} {'lat p50':>8} {'accept':>6}"
    lines = [head, "-" * len(head)]
    for r in results:
        def q(m, k):
            v = (r.get(m) or {}).get(k)
            return f"{v:.1f}" if v is not None else "-"
        acc = r.get("acceptance_length")
        lines.append(f"{_label(r['load']):<16} {r['requests']:>4} {r['errors']:>3} "
                     f"{r.get('output_token_throughput_per_s', 0):>9.1f} {r.get('request_throughput_per_s', 0):>6.2f} "
                     f"{q('time_to_first_token_ms', 'p50'):>9} {q('time_to_first_token_ms', 'p99'):>9} "
                     f"{q('inter_token_latency_ms', 'p50'):>8} {q('inter_token_latency_ms', 'p99'):>8} "
                     f"{q('request_latency_ms', 'p50'):>8} {(f'{acc:.2f}' if acc else '-'):>6}")
    return "\n".join(lines)
