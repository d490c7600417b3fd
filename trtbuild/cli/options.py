"""Shared option types and option bundles of the `trtbuild` commands.

Parsing only, no heavy imports: integer lists (`IntList`: bench's --concurrency, tune-medusa's
--candidates, generate's --input-ids), W,N,G (`Lookahead`), Medusa trees (`MedusaChoices`), and the
bundles several commands share (`speculative_options`: convert and build; `calibration_options`:
tune-medusa and tune-lookahead). Integer lists fail as usage errors (exit 2, `Invalid value for
--OPT: ...`); W,N,G and Medusa trees raise the library's ConfigError, which the group's edge makes
one `Error: ...` line (exit 1), as build and convert always have.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, TypeVar

import click

F = TypeVar("F", bound=Callable)


def _hint(param: click.Parameter | None, default: str) -> str:
    """The option's longest spelling, unquoted (`Invalid value for --concurrency: ...`)."""
    opts = getattr(param, "opts", None)
    return max(opts, key=len) if opts else default


class IntList(click.ParamType):
    """'1,4,16' -> (1, 4, 16): comma-separated integers >= `minimum`, no empty item.

    `what` names the items in the error (`expected comma-separated token ids, got '1,,2': an empty
    item`); without it the error is `expected comma-separated integers >= 1, got '1,,2'`."""

    name = "INTEGERS"

    def __init__(self, minimum: int = 1, what: str | None = None, item: str | None = None) -> None:
        self.minimum, self.what, self.item = minimum, what, item

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        text = str(value)
        items = [x.strip() for x in text.split(",")]
        bad = next((x for x in items if not re.fullmatch(r"[+-]?[0-9]+", x) or int(x) < self.minimum), None)
        if bad is None:
            return tuple(int(x) for x in items)
        if self.what is None:
            msg = f"expected comma-separated integers >= {self.minimum}, got {text!r}"
        else:
            why = "an empty item" if not bad else f"{bad!r}, not a {self.item} (an integer >= {self.minimum})"
            msg = f"expected comma-separated {self.what}, got {text!r}: {why}"
        raise click.BadParameter(msg, ctx=ctx, param_hint=_hint(param, "value"))


TOKEN_IDS = IntList(0, "token ids", "token id")


class Lookahead(click.ParamType):
    """'W,N,G' -> LookaheadSpec; `engine`: also the rules of a spec an engine is built for
    (build, convert); `as_text`: checked, then kept as text (build's spec holds the string)."""

    name = "W,N,G"

    def __init__(self, engine: bool = False, as_text: bool = False) -> None:
        self.engine, self.as_text = engine, as_text

    def convert(self, value, param, ctx):
        from trtbuild.common.lookahead.spec import LookaheadSpec, parse_engine_lookahead, parse_lookahead

        if isinstance(value, LookaheadSpec):
            return value
        spec = (parse_engine_lookahead if self.engine else parse_lookahead)(value)  # ConfigError: one line
        return value if self.as_text else spec


class MedusaChoices(click.ParamType):
    """A Medusa tree (preset name, JSON list of paths or brace form), checked for its syntax; the
    text is kept: the heads, max_draft_len and vocabulary it must fit are the library's to check."""

    name = "SPEC"

    def convert(self, value, param, ctx) -> str:
        from trtbuild.common.medusa.choices import parse_choices

        parse_choices(value)  # ConfigError: one line
        return value


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def speculative_options(for_build: bool = False) -> Callable[[F], F]:
    """--medusa, --medusa-choices, --lookahead, --max-draft-len (convert's help, or build's)."""
    if for_build:
        medusa = click.option("--medusa", default=None, help="Medusa heads (file or directory).")
        choices_help = "Medusa tree: preset name, JSON list or brace form."
        lookahead_help = "Lookahead decoding (window, n-gram, verification set)."
        draft_help = "Medusa: default 63. Lookahead: the formula."
    else:
        medusa = click.option("--medusa", type=click.Path(path_type=Path), default=None,
                              help="Medusa heads: medusa_lm_head.{pt,safetensors}, or a directory (also Medusa-2 "
                                   "full models).")
        choices_help = ("Tree: preset name, JSON list of paths, or '{0}, {0, 0}, ...' (default: mc_sim_7b_63 "
                        "cut to the number of heads).")
        lookahead_help = "Store a lookahead decoding spec (window, n-gram size, verification set) with the checkpoint."
        draft_help = "Medusa max_draft_len (default 63, at least the tree's node count)."
    return _options(
        medusa,
        click.option("--medusa-choices", type=MedusaChoices(), default=None, help=choices_help),
        click.option("--lookahead", type=Lookahead(engine=True, as_text=for_build), default=None, metavar="W,N,G",
                     help=lookahead_help),
        click.option("--max-draft-len", type=click.IntRange(min=1), default=None, help=draft_help))


def quantize_options() -> Callable[[F], F]:
    """--quantize, --kv-cache, --group-size, --calib-prompts, --calib-size, --quantize-medusa-heads
    (convert and build; every value is None unless given, so a build spec file's settings stay)."""
    from trtbuild.common.spec import KV_CACHE_DTYPES, QUANTIZATIONS

    return _options(
        click.option("--quantize", "quantization", type=click.Choice(QUANTIZATIONS), default=None,
                     help="Quantize the weights with NVIDIA ModelOpt (default none). fp8 and w4a8_awq need compute "
                          "capability >= 8.9 (H100/H200/L40S); int4_awq and int8_sq run on A100 too. Needs "
                          "trtbuild[quantize] in its own environment, named by $TRTBUILD_MODELOPT_PYTHON."),
        click.option("--kv-cache", type=click.Choice(KV_CACHE_DTYPES), default=None,
                     help="Quantize the KV cache to FP8 (compute capability >= 8.9)."),
        click.option("--group-size", type=click.IntRange(min=1), default=None,
                     help="AWQ group size (int4_awq, w4a8_awq; default 128, or the largest of 128/64/32 that "
                          "divides every layer's input features)."),
        click.option("--calib-prompts", type=click.Path(path_type=Path), default=None,
                     help="Calibration prompts: one text per line, or JSON lines with \"prompt\" or \"input_ids\" "
                          "(default: text cut from the local Python sources)."),
        click.option("--calib-size", type=click.IntRange(min=1), default=None,
                     help="Calibration sequences (default 32, of up to 256 tokens)."),
        click.option("--quantize-medusa-heads", is_flag=True, default=None,
                     help="Quantize the Medusa heads too (default: they stay unquantized, as in TensorRT-LLM's "
                          "quantize.py)."))


def calibration_options(report_help: str = "Write the report to this JSON file.") -> Callable[[F], F]:
    """--prompts, --chat, --max-tokens, -o/--output of the tune commands."""
    return _options(
        click.option("--prompts", "prompts_file", required=True, type=click.Path(path_type=Path),
                     help="Calibration prompts: text lines, or JSON lines with \"prompt\" or \"input_ids\"."),
        click.option("--chat", is_flag=True, help="Wrap text prompts in the model's chat template."),
        click.option("--max-tokens", type=click.IntRange(min=8), default=64, show_default=True,
                     help="Greedy tokens per calibration prompt."),
        click.option("-o", "--output", "out_file", type=click.Path(path_type=Path), default=None, help=report_help))


def check_prompts_file(path: Path) -> None:
    """The calibration prompts must be a file (a usage error, checked after the other options)."""
    if not path.is_file():
        raise click.BadParameter(f"{path} not found", param_hint="--prompts")
