"""The server's speculation counters around a load point: the draft budget and the acceptance.

A counter source is a callable returning the scheduler's running totals (`COUNTERS`, the fields of
trtbuild.runtime.scheduler.Stats) or None when they cannot be read. Two sources: Triton's metrics
endpoint, where the torch backend's tensorrt_llm model exports every numeric Stats field as the
gauge `trtbuild_scheduler_<field>{model="tensorrt_llm"}` (`metrics_counters`), and an in-process
scheduler's `stats` (`stats_counters`). `bench` reads one right before and right after each load
point; `speculation_fields` turns the two readings into

    draft_tokens_per_step      Δdrafted / Δsteps (draft tokens verified per scheduler step)
    draft_acceptance_rate      Δaccepted / Δdrafted (realised)
    estimated_acceptance_rate  Δexpected / Δdrafted (what the governor expected)
    speculating_row_share      Δspeculating_row_steps / Δrow_steps (share of rows with a draft)

each None where its counters are missing (the tensorrt-llm backend, a server from before these
gauges), unreadable, or did not move. Missing counters never fail a bench.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.request
from collections.abc import Callable

COUNTERS = ("steps", "drafted", "accepted", "expected", "row_steps", "speculating_row_steps")
PREFIX = "trtbuild_scheduler_"  # the gauges' names (triton_repo/models/tensorrt_llm.py `_export_metrics`)
MODEL_LABEL = "tensorrt_llm"
# the exporter sets the gauges from Stats every 0.2 s (`_export_metrics`): wait longer than that before a
# reading so the steps of the requests that just ended are in it
SETTLE_S = 0.5
FIELDS = ("draft_tokens_per_step", "draft_acceptance_rate", "estimated_acceptance_rate", "speculating_row_share")

Counters = Callable[[], "dict[str, float] | None"]

# Prometheus text exposition format: `name{label="value",...} value [timestamp]`, '#' lines are comments
_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, prefix: str = PREFIX, model: str = MODEL_LABEL) -> dict[str, float]:
    """{field: value} of the samples named `prefix`<field> in Prometheus text whose `model` label is
    `model` (or absent); samples of one field are summed. Unparseable lines are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m or not m.group(1).startswith(prefix):
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        if labels.get("model", model) != model:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        key = m.group(1)[len(prefix):]
        out[key] = out.get(key, 0.0) + value
    return out


def metrics_url(url: str) -> str:
    """HOST:PORT or http://HOST:PORT[/path] -> the full URL of the metrics page (Triton's path /metrics:
    triton-inference-server/server@067c1e9:docs/user_guide/metrics.md:31-33)."""
    if "://" not in url:
        url = f"http://{url}"
    rest = url.partition("://")[2]
    return url if "/" in rest else f"{url}/metrics"


def scrape(url: str, timeout: float = 5.0) -> tuple[dict[str, float] | None, str | None]:
    """(the trtbuild scheduler counters on the metrics page `url`, None) or (None, why not)."""
    try:
        with urllib.request.urlopen(metrics_url(url), timeout=timeout) as r:
            text = r.read().decode("utf-8", errors="replace")
    except (OSError, ValueError, http.client.HTTPException) as e:  # refused, timeout, HTTP errors; a bad URL or reply
        why = getattr(e, "reason", None) or e  # URLError wraps the socket's error
        why = why.strerror if isinstance(why, OSError) and why.strerror else why
        return None, " ".join(str(why).split()) or type(e).__name__
    return parse_metrics(text), None


def metrics_counters(url: str, echo: Callable[[str], None] | None = None, settle: float = SETTLE_S) -> Counters:
    """A counter source reading Triton's metrics page at `url` (HOST:PORT), `settle` seconds after it is
    called; why it cannot (unreachable, no gauges, some missing) is said once through `echo`."""
    told: set[str] = set()

    def read() -> dict[str, float] | None:
        if settle:
            time.sleep(settle)
        counters, why = scrape(url)
        missing = [PREFIX + k for k in COUNTERS if k not in (counters or {})]
        note = (f"cannot read the metrics at {metrics_url(url)} ({why})" if why is not None else
                f"{metrics_url(url)} has no {PREFIX}* gauges (not a trtbuild torch-backend server)" if not counters
                else f"{metrics_url(url)} lacks {', '.join(missing)} (a server from before them)" if missing
                else None)
        if note and echo and note not in told:
            told.add(note)
            echo(f"{note}: the speculation columns are -")
        return counters or None

    return read


def stats_counters(stats_of: Callable[[], object], settle: float = 0.1) -> Counters:
    """A counter source reading the fields of a live scheduler's Stats (`stats_of()` returns it),
    `settle` seconds after it is called (a step's totals are added as its tokens go out)."""
    def read() -> dict[str, float] | None:
        if settle:
            time.sleep(settle)
        stats = stats_of()
        out = {k: float(v) for k in COUNTERS if isinstance(v := getattr(stats, k, None), (int, float))}
        return out or None

    return read


def _delta(before: dict | None, after: dict | None, key: str) -> float | None:
    if not before or not after or key not in before or key not in after:
        return None
    d = after[key] - before[key]
    return d if d >= 0 else None  # gone backwards: the server restarted in between


def speculation_fields(before: dict[str, float] | None, after: dict[str, float] | None) -> dict:
    """The load point's FIELDS (None where not measurable) and "scheduler_delta": each counter's
    change (None without readings)."""
    d = {k: _delta(before, after, k) for k in COUNTERS}

    def ratio(num: str, den: str) -> float | None:
        return d[num] / d[den] if d[num] is not None and d[den] else None

    out = {"draft_tokens_per_step": ratio("drafted", "steps"),
           "draft_acceptance_rate": ratio("accepted", "drafted"),
           "estimated_acceptance_rate": ratio("expected", "drafted"),
           "speculating_row_share": ratio("speculating_row_steps", "row_steps")}
    deltas = {k: v for k, v in d.items() if v is not None}
    return {**out, "scheduler_delta": deltas or None}
