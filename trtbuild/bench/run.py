"""`trtbuild bench`'s options -> one run: the target (a server, or the in-process scheduler), the
prompts (a dataset or synthetic ones), the load points, and what results.json records about them
(the target; a build directory's resolved spec.yaml when the engine or tokenizer is in one), and where
the speculation counters come from (a server's metrics endpoint, the in-process scheduler's Stats)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trtbuild.bench import bench
from trtbuild.bench.load import (bench_tokenizer, check_server, dataset_prompts, inprocess_target, parse_length,
                                 sender, synthetic_prompts)
from trtbuild.bench.metrics import parse_slo
from trtbuild.bench.speculation import metrics_counters

# Triton's default ports (--http-port 8000, --grpc-port 8001, --metrics-port 8002; `serve`'s too): "By default,
# these metrics are available at http://localhost:8002/metrics" (triton-inference-server/server@067c1e9:
# docs/user_guide/metrics.md:31-33)
TRITON_DEFAULT_PORTS, TRITON_METRICS_PORT = (8000, 8001), 8002


@dataclass(frozen=True)
class Target:
    """A server (`url`, `protocol` grpc | http | openai, `model`, `tokenizer` its tokenizer's directory,
    `metrics_url` its metrics endpoint HOST:PORT, `openai_api` chat | completions for openai) or the
    in-process scheduler of `engine_dir`. `model` None: the first model an OpenAI server lists."""

    url: str | None = None
    engine_dir: Path | None = None
    protocol: str = "grpc"
    model: str | None = "ensemble"
    tokenizer: Path | None = None
    metrics_url: str | None = None  # default: HOST:8002 when `url` is on a Triton default port, else none
    openai_api: str = "chat"

    def metrics(self) -> str | None:
        """The metrics endpoint to read the speculation counters from, if any."""
        if self.metrics_url or not self.url:
            return self.metrics_url
        host, _, port = self.url.rpartition(":")
        return f"{host}:{TRITON_METRICS_PORT}" if port.isdigit() and int(port) in TRITON_DEFAULT_PORTS else None


@dataclass(frozen=True)
class Load:
    concurrency: tuple[int, ...] = (1,)
    request_rate: float | None = None  # Poisson arrivals instead of concurrency levels
    burstiness: float = 1.0
    num_requests: int = 16
    duration: float | None = None
    warmup: int = 1
    dataset: Path | None = None
    isl: str = "128"
    osl: str = "64"
    seed: int = 0
    slo: str | None = None
    max_error_rate: float = 0.0

    def points(self) -> list[dict]:
        if self.request_rate:
            return [{"request_rate": self.request_rate, "burstiness": self.burstiness, "seed": self.seed}]
        return [{"concurrency": c} for c in self.concurrency]


def run_bench(target: Target, load: Load, out_dir: Path | None = None, echo: Callable[[str], None] = print) -> dict:
    """Load `target` and report (and write to `out_dir`); one-line errors for bad settings, an
    unreachable server or a tokenizer-less directory; BenchFailed after writing for failed points."""
    slo_ms = parse_slo(load.slo)
    tok = bench_tokenizer(target.tokenizer or target.engine_dir, "--tokenizer" if target.tokenizer else "--in-process")
    if load.dataset is not None:
        prompts = dataset_prompts(load.dataset, tok, parse_length(load.osl, "--osl")[0])[:load.num_requests]
    else:
        prompts = synthetic_prompts(tok, load.num_requests, parse_length(load.isl, "--isl"),
                                    parse_length(load.osl, "--osl"), load.seed)
    stop = None
    if target.engine_dir is not None:
        send, stop, counters = inprocess_target(target.engine_dir)
        meta: dict = {"target": {"in_process": str(target.engine_dir)}}
    else:
        # one line now rather than every request failing; an OpenAI server names its model itself
        model = check_server(target.url, target.model, target.protocol)
        send = sender(target.url, model, target.protocol, target.openai_api)
        stop = getattr(send, "close", None)  # an OpenAI sender's kept-alive connections
        meta = {"target": {"url": target.url, "protocol": target.protocol, "model": model,
                           "metrics_url": target.metrics()}}
        if target.protocol == "openai":
            meta["target"]["openai_api"] = target.openai_api
        if target.metrics() is None:
            counters = None
            echo(f"no metrics endpoint for {target.url} (not on Triton's default ports): give --metrics-url "
                 "HOST:PORT for the draft budget and acceptance per load point")
        else:
            counters = metrics_counters(target.metrics(), echo)
    spec = build_spec(target.engine_dir or target.tokenizer)
    if spec is not None:
        meta["spec"] = spec
    try:
        return bench(send, prompts, tok, load.points(), warmup=load.warmup, slo=slo_ms, out_dir=out_dir, meta=meta,
                     echo=echo, duration=load.duration, max_error_rate=load.max_error_rate,
                     inputs=(target.tokenizer, target.engine_dir, load.dataset), counters=counters)
    finally:
        if stop:
            stop()


def build_spec(path: Path) -> dict | None:
    """The resolved spec of the build directory holding `path` (OUT/engine -> OUT/spec.yaml), if any."""
    from trtbuild.common.spec import ResolvedSpec

    spec = Path(path).parent / "spec.yaml"
    return ResolvedSpec.from_yaml(spec).to_dict() if spec.is_file() else None
