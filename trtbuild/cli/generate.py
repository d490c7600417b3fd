"""generate: text from a TensorRT-LLM checkpoint with the reference runtime (Medusa, lookahead)."""

from __future__ import annotations

from pathlib import Path

import click

from trtbuild.cli.options import TOKEN_IDS, Lookahead, MedusaChoices


@click.command()
@click.argument("ckpt_dir", type=click.Path(path_type=Path))
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (repeat for a batch).")
@click.option("--input-ids", "input_ids", type=TOKEN_IDS, multiple=True,
              help="Comma-separated prompt token ids (repeatable).")
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
@click.option("--medusa-choices", type=MedusaChoices(), default=None,
              help="Medusa tree for a Medusa checkpoint (default: the one stored with it).")
@click.option("--no-medusa", is_flag=True, help="Plain decoding even for a Medusa checkpoint.")
@click.option("--lookahead", type=Lookahead(), default=None, metavar="W,N,G",
              help="Lookahead decoding with this (W, N, G) (default: the spec stored with the checkpoint).")
@click.option("--no-lookahead", is_flag=True, help="Plain decoding even for a checkpoint with a lookahead spec.")
@click.option("--typical-acceptance", is_flag=True,
              help="Medusa's typical acceptance (temperature > 0; not lossless). Default: lossless sampling, "
                   "every token the model's own choice.")
@click.option("--posterior-threshold", type=click.FloatRange(0, 1), default=None,
              help="Typical acceptance threshold (with --typical-acceptance; default 0.09).")
@click.option("--posterior-alpha", type=click.FloatRange(0, 1), default=None,
              help="Typical acceptance entropy factor (with --typical-acceptance; default 0.3).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per request.")
def generate(ckpt_dir: Path, prompts: tuple[str, ...], input_ids: tuple[tuple[int, ...], ...], chat: bool,
             max_tokens: int, temperature: float, top_k: int, top_p: float, seed: int | None,
             end_ids: tuple[int, ...], ignore_eos: bool, stops: tuple[str, ...], device: str, dtype: str | None,
             medusa_choices: str | None, no_medusa: bool, lookahead, no_lookahead: bool, typical_acceptance: bool,
             posterior_threshold: float | None, posterior_alpha: float | None, as_json: bool) -> None:
    """Generate text from a TensorRT-LLM checkpoint with the reference runtime (Medusa, lookahead)."""
    if bool(prompts) == bool(input_ids):
        raise click.UsageError("give either --prompt or --input-ids")
    if lookahead is not None and no_lookahead:
        raise click.UsageError("--lookahead and --no-lookahead contradict each other")
    if not typical_acceptance and (posterior_threshold is not None or posterior_alpha is not None):
        raise click.UsageError("--posterior-threshold and --posterior-alpha tune --typical-acceptance: give it too")
    from trtbuild.runtime import Model, SamplingParams, decode
    from trtbuild.runtime.decoding import TypicalAcceptance, resolve_decoding
    from trtbuild.runtime.text import render, requests, tokenizer_for

    tuned = {"posterior_threshold": posterior_threshold, "posterior_alpha": posterior_alpha}
    typical = TypicalAcceptance(**{k: v for k, v in tuned.items() if v is not None}) if typical_acceptance else None
    tok = tokenizer_for(ckpt_dir, prompts, stops)
    reqs = requests(ckpt_dir, tok, prompts=prompts, input_ids=input_ids, chat=chat, max_tokens=max_tokens,
                    params=SamplingParams(temperature, top_k, top_p, seed), end_ids=end_ids, ignore_eos=ignore_eos,
                    stops=stops)
    model = Model.load(ckpt_dir, dtype=dtype, device=device)
    decoding = resolve_decoding(model, medusa_choices=medusa_choices, lookahead=lookahead, no_medusa=no_medusa,
                                no_lookahead=no_lookahead)
    for r in decode(model, reqs, decoding, typical=typical):
        click.echo(render(r, tok, decoding, as_json))


COMMANDS = (generate,)
