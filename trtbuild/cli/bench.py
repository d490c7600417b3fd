"""bench, bench sweep, bench compare: load a server or the in-process runtime; compare runs."""

from __future__ import annotations

from pathlib import Path

import click

from trtbuild.cli.options import IntList

ERROR_RATE_HELP = "Fail (after writing the results) if a load point's fraction of failed requests is above this."


@click.group(invoke_without_command=True)
@click.option("--url", default=None, help="HOST:PORT of the server (gRPC port for grpc, HTTP port for http, the "
              "OpenAI-compatible frontend's port for openai, e.g. serve --openai-port 9000).")
@click.option("--in-process", "engine_dir", type=click.Path(path_type=Path), default=None,
              help="Send the load straight to the reference runtime's scheduler for this engine dir.")
@click.option("--protocol", type=click.Choice(["grpc", "http", "openai"]), default="grpc", show_default=True,
              help="grpc / http: Triton's own (the ensemble); openai: an OpenAI-compatible server's streaming API.")
@click.option("--openai-api", type=click.Choice(["chat", "completions"]), default="chat", show_default=True,
              help="With --protocol openai: /v1/chat/completions (the prompt as a user message, through the chat "
                   "template) or /v1/completions (the prompt as is, as the ensemble gets it).")
@click.option("--model", default="ensemble", show_default=True,
              help="The model to send to (with --protocol openai, the default is the first one /v1/models lists).")
@click.option("--concurrency", type=IntList(), default="1", show_default=True, help="Comma-separated load points.")
@click.option("--request-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Requests per second (Poisson arrivals) instead of --concurrency.")
@click.option("--burstiness", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--num-requests", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds per load point instead of --num-requests (prompts are reused in turn).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--dataset", type=click.Path(path_type=Path), default=None, help="JSON lines with text_input[, max_tokens].")
@click.option("--isl", default="128", show_default=True, help="Input length MEAN[:STD] in tokens (synthetic prompts).")
@click.option("--osl", default="64", show_default=True, help="Output length MEAN[:STD] in tokens.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--slo", default=None, help="Goodput SLO, e.g. ttft:500,itl:50 (milliseconds).")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="Tokenizer dir for --url: the served engine dir (OUT/engine) or the model's HF dir.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True, help=ERROR_RATE_HELP)
@click.option("--metrics-url", default=None,
              help="HOST:PORT of the server's metrics endpoint, read before and after each load point for the draft "
                   "budget and acceptance (default: HOST:8002 when --url is on Triton's default port 8000 or 8001).")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=None)
@click.pass_context
def bench(ctx: click.Context, url: str | None, engine_dir: Path | None, protocol: str, openai_api: str,
          model: str | None, tokenizer: Path | None, metrics_url: str | None, out_dir: Path | None, **load) -> None:
    """Load a server (or the in-process runtime) and report TTFT, ITL, latency, throughput, acceptance,
    and the server's draft tokens per step and rows speculating per load point."""
    if ctx.invoked_subcommand is not None:
        return

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

    if (url is None) == (engine_dir is None):
        raise click.UsageError("give either --url HOST:PORT or --in-process ENGINE_DIR")
    if given("openai_api") and protocol != "openai":
        raise click.UsageError("--openai-api goes with --protocol openai")
    if protocol == "openai" and engine_dir is not None:
        raise click.UsageError("--protocol openai goes with --url (--in-process sends to the scheduler itself)")
    if tokenizer is None and engine_dir is None:
        raise click.UsageError("--url needs --tokenizer DIR (the served engine dir, or the model's HF dir): "
                               "token counts come from the tokenizer")
    if metrics_url is not None and url is None:
        raise click.UsageError("--metrics-url goes with --url (--in-process reads the scheduler's counters itself)")
    if protocol == "openai" and not given("model"):
        model = None  # the server's own model name (GET /v1/models), not Triton's "ensemble"
    from trtbuild.bench.run import Load, Target, run_bench

    run_bench(Target(url, engine_dir, protocol, model, tokenizer, metrics_url, openai_api), Load(**load), out_dir,
              echo=click.echo)


@bench.command("sweep")
@click.argument("builds", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--concurrency", type=IntList(), default="1,4,16", show_default=True)
@click.option("--num-requests", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--isl", default="128", show_default=True)
@click.option("--osl", default="64", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fail (after the comparison is written) if a load point's fraction of failed requests is above this.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path))
def bench_sweep(builds: tuple[Path, ...], concurrency: tuple[int, ...], num_requests: int, isl: str, osl: str,
                seed: int, warmup: int, max_error_rate: float, out_dir: Path) -> None:
    """Serve each build dir in turn (a real tritonserver) under the same load; one comparison."""
    from trtbuild.bench.sweep import sweep

    sweep(list(builds), [{"concurrency": c} for c in concurrency], num_requests, isl, osl, seed, warmup, out_dir,
          echo=click.echo, max_error_rate=max_error_rate)


@bench.command("compare")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
def bench_compare(dirs: tuple[Path, ...]) -> None:
    """Runs side by side (results.json of each DIR), with ratios to the first."""
    from trtbuild.bench.compare import compare

    click.echo(compare(list(dirs)))


COMMANDS = (bench,)
