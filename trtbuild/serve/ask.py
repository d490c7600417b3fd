"""`trtbuild ask`: one streamed request to a running server, and the perf metrics it returned."""

from __future__ import annotations

from collections.abc import Callable

from trtbuild.common.errors import TrtbuildError
from trtbuild.serve.client import STATS, check_text_model, stream_grpc, stream_http


def ask(url: str, prompt: str, max_tokens: int = 64, model: str = "ensemble", protocol: str = "grpc",
        echo: Callable[..., None] | None = None) -> dict:
    """Check that `model` is a text model, stream `prompt` (each piece to `echo(text, nl=False)`,
    then a newline) and return the last response's outputs."""
    check_text_model(url, model, protocol)
    stream = stream_grpc if protocol == "grpc" else stream_http
    last: dict = {}
    for out in stream(url, prompt, max_tokens, model):
        if echo is not None:
            echo(out.get("text_output", ""), nl=False)
        last = out
    if echo is not None:
        echo("")
    return last


def stats_lines(last: dict) -> list[str]:
    """`name: value` per perf metric of a response (times as +ms from its arrival); one-line
    TrtbuildError when the server returned none (return_perf_metrics)."""
    values = {k: last[k] for k in STATS if k in last}
    if not values:
        raise TrtbuildError("the server returned no perf metrics (return_perf_metrics)")
    t0 = values.get("arrival_time_ns")
    return [f"{k}: " + (f"+{(v - t0) / 1e6:.1f} ms" if k.endswith("_time_ns") and t0 is not None else
                        f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
