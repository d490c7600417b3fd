"""convert, build, plan, inspect, repo: the commands that make checkpoints, engines and repositories."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trtbuild.cli.options import quantize_options, speculative_options

DTYPE = click.Choice(["auto", "float32", "float16", "bfloat16"])


@click.command()
@click.argument("hf_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output TensorRT-LLM checkpoint directory (must not exist unless --force).")
@click.option("--dtype", type=DTYPE, default="auto", show_default=True,
              help="Weight dtype; auto keeps the checkpoint's (float32 becomes float16).")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="Tensor-parallel size.")
@click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True, help="Pipeline-parallel size.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists (only once the new one is complete).")
@speculative_options()
@quantize_options()
def convert(hf_dir: Path, out_dir: Path, dtype: str, tp: int, pp: int, force: bool, medusa: Path | None,
            medusa_choices: str | None, max_draft_len: int | None, lookahead, **quant) -> None:
    """Convert a HF checkpoint (+ Medusa heads) into a TensorRT-LLM checkpoint (--quantize: through ModelOpt)."""
    from trtbuild.common.lookahead.spec import format_spec
    from trtbuild.convert import convert as run

    mode = ", medusa" if medusa else f", lookahead {format_spec(lookahead)[1:-1]}" if lookahead else ""
    if any(v is not None for v in quant.values()):
        mode += _quantize(hf_dir, out_dir, dtype, tp, pp, force, medusa, medusa_choices, max_draft_len, lookahead,
                          quant)
    else:
        run(hf_dir, out_dir, dtype=dtype, tp=tp, pp=pp, force=force, medusa=medusa, medusa_choices=medusa_choices,
            max_draft_len=max_draft_len, lookahead=lookahead)
    click.echo(f"wrote {out_dir} (tp={tp}, pp={pp}{mode})")


def _quantize(hf_dir, out_dir, dtype, tp, pp, force, medusa, medusa_choices, max_draft_len, lookahead, quant) -> str:
    """convert --quantize: every rule of `build --quantize` (the cpu target) checked before calibration."""
    from trtbuild.builder import quantize_spec
    from trtbuild.builder.validate import resolve_spec
    from trtbuild.common.lookahead.spec import format_spec
    from trtbuild.common.spec import BuildSpec
    from trtbuild.quantize import quantize

    if quant.get("calib_prompts") is not None:
        quant["calib_prompts"] = str(quant["calib_prompts"])
    spec = BuildSpec(model=str(hf_dir), tp=tp, pp=pp, dtype=dtype, medusa=str(medusa) if medusa else None,
                     lookahead=format_spec(lookahead)[1:-1] if lookahead else None).merged(quant)
    rs = resolve_spec(spec).spec
    quantize(hf_dir, out_dir, quantize_spec(rs), dtype=rs.dtype, tp=tp, pp=pp, force=force, medusa=medusa,
             medusa_choices=medusa_choices, max_draft_len=max_draft_len, lookahead=lookahead,
             progress=_calibration_progress)
    return f", {rs.quantization}" + (f", KV cache {rs.kv_cache}" if rs.kv_cache else "")


@click.command()
@click.argument("hf_dir", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output directory: checkpoint/, engine/, spec.yaml.")
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), default=None,
              help="YAML build spec; flags given on the command line override it.")
@speculative_options(for_build=True)
@click.option("--speculation", type=click.Choice(["auto", "always", "off"]), default=None,
              help="How the server spends draft tokens (default auto): auto = it decides every step from the "
                   "measured step cost and acceptance (the goal: never slower than plain); always = every row "
                   "drafts all it can; off = plain decoding. A request overrides it with the Triton request "
                   "parameter \"speculation\".")
@click.option("--backend", type=click.Choice(["torch", "tensorrt-llm"]), default=None,
              help="torch (reference runtime, default) or tensorrt-llm (GPU engines).")
@click.option("--gpu", default=None, help="Target: a100-40gb, a100-80gb, h100-80gb, h200-141gb, l40s-48gb, t4-16gb, "
                                          "v100-32gb or cpu (default: cpu for torch, h100-80gb for tensorrt-llm).")
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="GPUs one replica may use, at least tp x pp (default: tp x pp; on cpu: the world size).")
@click.option("--tp", type=click.IntRange(min=1), default=None, help="Tensor-parallel size (default 1).")
@click.option("--pp", type=click.IntRange(min=1), default=None, help="Pipeline-parallel size (default 1).")
@click.option("--dtype", type=DTYPE, default=None, help="Weight dtype (default auto: the checkpoint's).")
@quantize_options()
@click.option("--max-batch-size", type=click.IntRange(min=1), default=None, help="Default 8.")
@click.option("--max-input-len", type=click.IntRange(min=1), default=None, help="Default min(1024, max_seq_len - 1).")
@click.option("--max-seq-len", type=click.IntRange(min=2), default=None, help="Default min(model positions, 4096).")
@click.option("--max-num-tokens", type=click.IntRange(min=1), default=None,
              help="Default 8192 (raised for speculative decoding).")
@click.option("--gather-context-logits", is_flag=True, default=None,
              help="Keep the logits of every prompt position (not with Medusa or lookahead).")
@click.option("--kv-cache-free-gpu-mem-fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Share of the memory left after weights and buffers for the KV cache (default 0.9).")
@click.option("--force", is_flag=True, help="Replace OUT even if it is not a previous build.")
@click.option("--dry-run", is_flag=True, help="Validate and plan; print the equivalent commands; build nothing.")
@click.option("--no-verify", is_flag=True, help="Skip the speculative-vs-plain greedy self-check.")
@click.option("--allow-base-drift", is_flag=True,
              help="Build a Medusa-2 model (train-medusa --joint) whose base drifted from its original.")
def build(hf_dir: Path | None, out_dir: Path, spec_file: Path | None, force: bool, dry_run: bool, no_verify: bool,
          allow_base_drift: bool, **flags) -> None:
    """Build an engine directory from a HF model (+ Medusa heads | lookahead) for one backend and GPU."""
    from trtbuild.builder import build as run
    from trtbuild.common.spec import BuildSpec

    spec = BuildSpec.from_yaml(spec_file) if spec_file is not None else BuildSpec()
    if flags.get("calib_prompts") is not None:
        flags["calib_prompts"] = str(flags["calib_prompts"])
    spec = spec.merged({**flags, "model": str(hf_dir) if hf_dir is not None else None})
    run(spec, out_dir, force=force, dry_run=dry_run, verify=not no_verify, echo=click.echo, spec_file=spec_file,
        progress=_calibration_progress, allow_base_drift=allow_base_drift)


def _calibration_progress(done: int, total: int) -> None:
    """`calibrating 12/32` on stderr, rewritten in place on a terminal, else one line per pass
    (AWQ passes over the data twice)."""
    import sys

    if sys.stderr.isatty():
        click.echo(f"\rcalibrating {done}/{total}", nl=done >= total, err=True)
    elif done >= total:
        click.echo(f"calibrated {done}/{total} sequences", err=True)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--verify", is_flag=True, help="Recompute every file's sha256 and compare with the recorded one.")
@click.option("--json", "as_json", is_flag=True)
def inspect(path: Path, verify: bool, as_json: bool) -> None:
    """Summarise a checkpoint, engine or build directory."""
    from trtbuild.builder.inspect import inspect_dir, render

    info = inspect_dir(path, verify)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for line in render(info):
            click.echo(line)
    if verify:
        if info["verified"]:
            raise click.ClickException(f"{path}: {len(info['verified'])} file(s) differ from their recorded hashes: "
                                       + ", ".join(info["verified"][:5]))
        click.echo("verified: every file matches its recorded sha256")


@click.command()
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
@click.option("--quantize", "quantization", type=click.Choice(["none", "fp8", "int4_awq", "int8_sq", "w4a8_awq"]),
              default="none", show_default=True, help="Plan the ModelOpt-quantized layout (weights, scales).")
@click.option("--kv-cache", type=click.Choice(["fp8"]), default=None, help="An FP8 KV cache (1 byte per element).")
@click.option("--group-size", type=click.IntRange(min=1), default=None, help="AWQ group size (default as build).")
@click.option("--json", "as_json", is_flag=True)
def plan(model: Path, as_json: bool, **settings) -> None:
    """Memory plan: weights and KV cache per GPU, whether a configuration fits (MODEL: HF dir or config.json)."""
    from trtbuild.builder.plan_report import plan_model

    report = plan_model(model, **settings)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.lines()))


@click.command()
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


COMMANDS = (convert, build, plan, inspect, repo)
