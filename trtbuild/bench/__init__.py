"""`trtbuild bench`: load against a Triton endpoint (or the in-process scheduler), genai-perf's
metrics per load point, and results written as JSON, CSV and per-request JSON lines.

    DIR/results.json     metrics per load point, the served engine's spec when known, versions, machine
    DIR/results.csv      one row per load point
    (both with the server's draft budget and acceptance per load point when a counter source gives them:
    bench.speculation's FIELDS, None / empty where the server exports no counters)
    DIR/requests.jsonl   one line per request: timestamps, lengths, text, errors
    DIR/*.png            TTFT and ITL distributions, throughput vs concurrency, latency vs throughput
                         (each only when some request measured it)

The results are written even when a load point fails (every request, or more than --max-error-rate);
the failure is then raised as BenchFailed (a non-zero exit at the CLI).

May import: trtbuild.common, trtbuild.convert, trtbuild.runtime, trtbuild.triton_repo, trtbuild.builder,
trtbuild.tuning, trtbuild.serve (every layer below; never trtbuild.deploy or trtbuild.cli).
"""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path

from trtbuild.bench.load import BenchFailed, Prompt, run_load
from trtbuild.bench.metrics import summarize
from trtbuild.bench.speculation import FIELDS as SPECULATION_FIELDS, Counters, speculation_fields
from trtbuild.common.fsutil import check_output_dir, staging_dir

KIND = "bench"  # the marker kind of a results directory: bench -o replaces only an empty one or its own

CSV_FIELDS = (("time_to_first_token_ms", "p50"), ("time_to_first_token_ms", "p99"), ("inter_token_latency_ms", "p50"),
              ("inter_token_latency_ms", "p99"), ("request_latency_ms", "p50"), ("request_latency_ms", "p99"))


def bench(send, prompts: list[Prompt], tok, points: list[dict], *, warmup: int = 0, slo: dict | None = None,
          out_dir: Path | None = None, meta: dict | None = None, echo=print, duration: float | None = None,
          max_error_rate: float = 0.0, inputs: tuple = (), counters: Counters | None = None) -> dict:
    """Run every load point ({"concurrency": C} or {"request_rate": R, "burstiness": B}) on `prompts`;
    `counters` (bench.speculation) is read before the first point and after each, for the draft
    budget and acceptance of each point (None fields without it).

    Raises BenchFailed, after the results measured so far are written, when every request of a
    point failed (the later points are not run) or a point's error rate is above `max_error_rate`."""
    from tqdm import tqdm

    from trtbuild import __version__

    if out_dir is not None:  # refused before any load is sent; `inputs` (tokenizer, dataset, engine) are kept safe
        check_output_dir(out_dir, True, kind=KIND, inputs=inputs)
    if warmup:
        run_load(send, prompts[:warmup], tok, concurrency=1)
    results, all_records, failure = [], [], None
    before = counters() if counters else None
    for k, point in enumerate(points):
        with tqdm(total=None if duration else len(prompts), desc=_label(point), unit="req", leave=False) as bar:
            records = run_load(send, prompts, tok, concurrency=point.get("concurrency"),
                               rate=point.get("request_rate"), burstiness=point.get("burstiness", 1.0),
                               seed=point.get("seed", 0), progress=lambda: bar.update(1), duration=duration)
        after = counters() if counters else None
        summary = {**summarize(records, slo), **speculation_fields(before, after)}
        before = after
        results.append({"load": point, **summary})
        all_records += [{"load": point, **r.to_dict()} for r in records]
        if summary["requests"] and summary["errors"] == summary["requests"]:
            failure = (f"all {summary['requests']} requests at {_label(point)} failed"
                       + ("" if k == len(points) - 1 else " (later load points not run)")
                       + f"; first error: {summary['first_error']}")
            break
    report = {"trtbuild_version": __version__, "machine": {"platform": platform.platform(),
                                                           "processor": platform.processor(),
                                                           "python": platform.python_version()},
              "slo_ms": slo or None, **(meta or {}), "results": results}
    echo(table(results))
    if out_dir is not None:
        from trtbuild.bench.plots import write_plots

        out_dir = Path(out_dir)
        # a new results directory replaces the previous one whole (no stale plot survives)
        with staging_dir(out_dir, True, kind=KIND, inputs=inputs) as tmp:
            (tmp / "results.json").write_text(json.dumps(report, indent=2) + "\n")
            with open(tmp / "requests.jsonl", "w") as f:
                for r in all_records:
                    f.write(json.dumps(r) + "\n")
            with open(tmp / "results.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["load", "requests", "errors", "output_token_throughput_per_s", "request_throughput_per_s",
                            "goodput_per_s", "acceptance_length", *[f"{m}_{q}" for m, q in CSV_FIELDS],
                            *SPECULATION_FIELDS])
                for r in results:
                    w.writerow([_label(r["load"]), r["requests"], r["errors"], r.get("output_token_throughput_per_s"),
                                r.get("request_throughput_per_s"), r.get("goodput_per_s"), r.get("acceptance_length"),
                                *[(r.get(m) or {}).get(q) for m, q in CSV_FIELDS],
                                *[r.get(f) for f in SPECULATION_FIELDS]])
            plots = write_plots(report, all_records, tmp)
        echo(f"wrote {out_dir}/results.json, results.csv, requests.jsonl and "
             + (f"plots: {', '.join(p.name for p in plots)}" if plots else "no plots (no successful request)"))
    if failure:
        raise BenchFailed(failure)
    over = [r for r in results if r["requests"] and r["errors"] / r["requests"] > max_error_rate]
    if over:
        raise BenchFailed(f"error rate above --max-error-rate {max_error_rate:g} at "
                          + ", ".join(f"{_label(r['load'])} ({r['errors']} of {r['requests']} requests failed, "
                                      f"{r['errors'] / r['requests']:.2f})" for r in over)
                          + f"; first error: {over[0]['first_error']}")
    return report


def _label(point: dict) -> str:
    if "concurrency" in point:
        return f"concurrency {point['concurrency']}"
    return f"rate {point['request_rate']}/s"


def table(results: list[dict]) -> str:
    head = f"{'load':<16} {'req':>4} {'err':>3} {'out tok/s':>9} {'req/s':>6} {'TTFT p50':>9} {'TTFT p99':>9} " \
           f"{'ITL p50':>8} {'ITL p99':>8} {'lat p50':>8} {'accept':>6} " \
           f"{'draft/step':>10} {'acc rate':>8} {'acc est':>7} {'spec rows':>9}"
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
                     f"{q('request_latency_ms', 'p50'):>8} {(f'{acc:.2f}' if acc else '-'):>6} "
                     f"{_num(r.get('draft_tokens_per_step'), '.2f'):>10} "
                     f"{_num(r.get('draft_acceptance_rate'), '.2f'):>8} "
                     f"{_num(r.get('estimated_acceptance_rate'), '.2f'):>7} "
                     f"{_num(r.get('speculating_row_share'), '.0%'):>9}")
    return "\n".join(lines)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)
