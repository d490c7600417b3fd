"""Declarative name maps and the strict accounting that turns them into per-rank conversion plans.

A family module (llama.py, qwen2.py) declares `Rule`s: a TensorRT-LLM target name template, the HF
source names it is made from, and how it is split across tp ranks. `{}` in a target is the
*local* layer index of the rank file; `{}` in a source is the *global* HF layer index.

`plan_ranks` expands the rules against the rank layout (layout.rank_layout) before anything is
read or written, and fails naming the leftovers unless every source tensor is consumed or listed
as dropped on purpose, every source named by a rule exists with the expected shape, and every
target tensor of every rank has a rule. `produce` then makes one target tensor at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from trtbuild.convert.hf import TensorSource
from trtbuild.common.layout import Dims, Mapping, pad_rows, pad_vocab_size, pp_layers, rank_layout, split, split_qkv
from trtbuild.common.errors import ConversionError

if TYPE_CHECKING:
    import torch

Split = Literal["replicate", "column", "row", "qkv", "vocab"]


@dataclass(frozen=True)
class Rule:
    target: str  # TensorRT-LLM name; "{}" = local layer index
    sources: tuple[str, ...]  # HF names; "{}" = global layer index; qkv rules list q, k, v
    split: Split


@dataclass(frozen=True)
class Family:
    """One architecture family: its name map and its config.json builder."""

    name: str
    rules: tuple[Rule, ...]
    dropped: tuple[str, ...]  # HF name templates consumed on purpose without output
    trt_config: Callable[[dict, Dims, str, Mapping], dict]  # (hf config, dims, dtype, mapping) -> config.json
    dims: Callable[[dict], Dims]  # validates the HF config


@dataclass(frozen=True)
class Step:
    """Make one target tensor of one rank from concrete source names."""

    target: str
    sources: tuple[str, ...]
    split: Split
    shape: tuple[int, ...]


def _tied_substitutions(hf_config: dict, source_names: set[str]) -> dict[str, tuple[str, ...]]:
    """A tied lm_head reads the embedding when the checkpoint does not store lm_head itself."""
    subs: dict[str, tuple[str, ...]] = {}
    if hf_config.get("tie_word_embeddings", False) and "lm_head.weight" not in source_names:
        subs["lm_head.weight"] = ("model.embed_tokens.weight",)
    return subs


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{\}", r"(\d+)") + "$")


def medusa_rules(num_heads: int, num_layers: int) -> tuple[Rule, ...]:
    """Medusa head tensors (canonical source names of trtbuild.medusa.heads): split like lm_head."""
    rules = []
    for h in range(num_heads):
        for j in range(num_layers):
            for p in ("weight", "bias"):
                rules.append(Rule(f"medusa_heads.{h}.medusa_layers.{j}.linear.{p}", (f"medusa.{h}.{j}.linear.{p}",),
                                  "column"))
        rules.append(Rule(f"medusa_heads.{h}.lm_head.weight", (f"medusa.{h}.lm_head.weight",), "vocab"))
    return tuple(rules)


def plan_ranks(family: Family, hf_config: dict, dims: Dims, source: TensorSource,
               mapping: Mapping, extra_subs: dict[str, str] | None = None) -> list[list[Step]]:
    """The full conversion plan, one list of steps per rank, validated before any tensor is read.

    `extra_subs` redirects a source name to another (version-2 Medusa heads read the base lm_head).
    """
    names = set(source.names())
    subs = _tied_substitutions(hf_config, names)
    for name, target in (extra_subs or {}).items():
        subs[name] = subs.get(target, (target,))
    rules = [(r, _template_regex(r.target)) for r in family.rules + medusa_rules(dims.medusa_heads, dims.medusa_layers)]
    whole = rank_layout(dims, Mapping(1, 1), 0)  # unsplit shapes by target name (global layer index)
    plans: list[list[Step]] = []
    consumed: set[str] = set()
    for rank in range(mapping.world_size):
        layers = pp_layers(dims.num_layers, mapping.pp_size, mapping.pp_rank(rank))
        steps: list[Step] = []
        for target, shape in rank_layout(dims, mapping, rank).items():
            step = None
            for rule, rx in rules:
                m = rx.match(target)
                if m is None:
                    continue
                glob = layers[int(m.group(1))] if m.groups() else None
                srcs = tuple(s.format(glob) for s in rule.sources)
                srcs = subs.get(srcs[0], srcs) if len(srcs) == 1 else srcs
                step = Step(target, srcs, rule.split, shape)
                break
            if step is None:
                raise ConversionError(f"{family.name}: no rule produces target tensor {target!r}")
            steps.append(step)
            consumed.update(step.sources)
        plans.append(steps)
    missing = sorted(consumed - names)
    if missing:
        raise ConversionError(f"missing tensor(s) in checkpoint: {_short(missing)}")
    dropped_rx = [_template_regex(t) for t in family.dropped]
    leftover = sorted(n for n in names - consumed if not any(rx.match(n) for rx in dropped_rx))
    if leftover:
        raise ConversionError(f"unconverted tensor(s) in checkpoint (no rule consumes them): {_short(leftover)}")
    _check_source_shapes(plans, source, dims, whole)
    return plans


def _check_source_shapes(plans: list[list[Step]], source: TensorSource, dims: Dims,
                         whole: dict[str, tuple[int, ...]]) -> None:
    """Each source tensor must have the shape its unsplit target implies."""
    seen: set[str] = set()
    layer_rx = re.compile(r"^transformer\.layers\.\d+\.")
    for steps in plans:
        for st in steps:
            # whole shape of this target at tp=1: layer targets are looked up via layer 0's entry
            key = layer_rx.sub("transformer.layers.0.", st.target)
            full = whole[key]
            if st.split == "qkv":
                d, rest = dims.head_size, full[1:]
                expect = [(dims.num_heads * d, *rest), (dims.num_kv_heads * d, *rest), (dims.num_kv_heads * d, *rest)]
            else:
                expect = [full]
            for name, shape in zip(st.sources, expect):
                if name in seen:
                    continue
                seen.add(name)
                got = tuple(source.shape(name))
                if got != tuple(shape):
                    raise ConversionError(f"tensor {name!r} has shape {list(got)}, expected {list(shape)}")


def produce(step: Step, source: TensorSource, dims: Dims, mapping: Mapping, rank: int,
            dtype: torch.dtype) -> torch.Tensor:
    """Build one target tensor of `rank` from its sources, split for tp and cast to `dtype`."""
    t, r = mapping.tp_size, mapping.tp_rank(rank)
    if step.split == "qkv":
        q, k, v = (source.get(n) for n in step.sources)
        out = split_qkv(q.to(dtype), k.to(dtype), v.to(dtype), dims.num_kv_heads, t, r)
    else:
        w = source.get(step.sources[0]).to(dtype)
        if step.split == "replicate":
            out = w
        elif step.split == "column":
            out = split(w, t, r, 0)
        elif step.split == "row":
            out = split(w, t, r, 1)
        else:  # "vocab"
            out = split(pad_rows(w, pad_vocab_size(w.shape[0], t)), t, r, 0)
    if tuple(out.shape) != step.shape:
        raise ConversionError(f"tensor {step.target!r} came out {list(out.shape)}, expected {list(step.shape)}")
    return out.contiguous()


def iter_rank(steps: list[Step], source: TensorSource, dims: Dims, mapping: Mapping, rank: int,
              dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for one rank file, one tensor at a time."""
    for st in steps:
        yield st.target, produce(st, source, dims, mapping, rank, dtype)


def _short(names: list[str], n: int = 8) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
