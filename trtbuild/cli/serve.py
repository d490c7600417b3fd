"""serve, ask: run a model repository under tritonserver; one request to a running server."""

from __future__ import annotations

import signal
from pathlib import Path

import click


def _frontend():
    """trtbuild.openai_api.app, or one line naming what is missing."""
    try:
        from trtbuild.openai_api import app
    except ModuleNotFoundError as e:
        raise click.ClickException(f"the OpenAI API needs {e.name} (pip install 'trtbuild[serve]')") from None
    return app


def _prompt(ctx, param, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("the prompt is empty", param_hint="'--once'")
    return value


@click.command()
@click.argument("repo_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--log-file", type=click.Path(path_type=Path), default=None, help="tritonserver's log.")
@click.option("--once", "once", default=None, metavar="PROMPT", callback=_prompt,
              help="Start, stream one request over gRPC (printed as it arrives), stop: a smoke test.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="For --once.")
@click.option("--start-timeout", type=click.IntRange(min=1), default=600, show_default=True,
              help="Seconds tritonserver may take to become ready (large engines load for minutes).")
@click.option("--openai-port", type=click.IntRange(1, 65535), default=None,
              help="Also serve the OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, "
                   "/health) on this port (9000 is the convention), in front of the ensemble.")
@click.option("--model-name", default=None, help="The model's name in the OpenAI API (default: the build's).")
def serve(repo_dir: Path, host: str, http_port: int, grpc_port: int, metrics_port: int, log_file: Path | None,
          once: str | None, max_tokens: int, start_timeout: int, openai_port: int | None,
          model_name: str | None) -> None:
    """Serve a model repository with tritonserver until Ctrl-C / SIGTERM (a build dir's triton_repo too).

    Exits non-zero if the server dies (tritonserver or one of its Python models' processes), and
    with 128 + the signal number if stopped before it was ready; nothing of the server is left."""
    from trtbuild.serve.supervise import Ports, serve_repo

    if openai_port is not None and openai_port in (http_port, grpc_port, metrics_port):
        raise click.BadParameter(f"{openai_port} is also a Triton port: give the OpenAI API its own port",
                                 param_hint="'--openai-port'")
    companion = None
    if openai_port is not None:
        Announced = _frontend().Announced

        def companion(repo: str):
            local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # dial the server on loopback
            return Announced(repo, f"{local}:{grpc_port}", f"{local}:{metrics_port}", host, openai_port, model_name,
                             click.echo)
    stopped = serve_repo(repo_dir, Ports(host, http_port, grpc_port, metrics_port), log_file=log_file, once=once,
                         max_tokens=max_tokens, start_timeout=start_timeout, echo=click.echo, companion=companion)
    if stopped.exit_code:
        click.echo(f"{signal.Signals(stopped.signal).name} while starting: tritonserver stopped before it was ready",
                   err=True)
        raise click.exceptions.Exit(stopped.exit_code)
    click.echo("stopped")


@click.command()
@click.argument("url")
@click.argument("prompt")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--model", default="ensemble", show_default=True)
@click.option("--stats", is_flag=True, help="Then print the server's perf metrics (return_perf_metrics).")
def ask(url: str, prompt: str, protocol: str, max_tokens: int, model: str, stats: bool) -> None:
    """Send one streamed request to a running server and print the text as it arrives (to a text
    model: ensemble or tensorrt_llm_bls)."""
    from trtbuild.serve.ask import ask as run, stats_lines

    last = run(url, prompt, max_tokens, model, protocol, echo=click.echo)
    if stats:
        for line in stats_lines(last):
            click.echo(line)


@click.command("openai")
@click.argument("repo_dir", type=click.Path(path_type=Path))
@click.option("--grpc-url", default="127.0.0.1:8001", show_default=True, help="The tritonserver serving REPO_DIR.")
@click.option("--metrics-url", default=None, help="Its metrics endpoint HOST:PORT, passed through on /metrics.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=9000, show_default=True)
@click.option("--model-name", default=None, help="The model's name in the API (default: the build's).")
def openai_frontend(repo_dir: Path, grpc_url: str, metrics_url: str | None, host: str, port: int,
                    model_name: str | None) -> None:
    """Serve the OpenAI-compatible API for a running tritonserver (a sidecar of a multi-rank server);
    REPO_DIR is the repository (or build directory) it serves, read for the tokenizer and limits."""
    _frontend().run_until_signal(repo_dir, grpc_url, metrics_url, host, port, model_name, click.echo)


COMMANDS = (serve, ask, openai_frontend)
