"""Medusa trees (`medusa_choices`): parse, validate, render, and the preset lists.

A tree is a set of paths; a path `(i0, i1, ..., ik)` is the candidate that takes the i0-th most
likely token of head 0, then the i1-th of head 1, and so on (depth k+1 uses heads 0..k). The root
(the base model's own next token) is implicit and never listed.

Three spellings are accepted: a preset name (`mc_sim_7b_63`, ...), a JSON list of paths
(`[[0], [0, 0], [1]]`), and Triton's brace form (`{0}, {0, 0}, {1}`). `parse_choices` returns the
canonical form: a tuple of paths sorted by (depth, path), every prefix present. TensorRT-LLM's C++
runtime (and so Triton) wants every prefix node listed; missing prefixes are added and reported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from trtbuild.common.errors import ConfigError

Path_ = tuple[int, ...]
Choices = tuple[Path_, ...]

# A node at depth d with last index i is the i-th candidate of head d-1's top-k, so head d-1 needs
# top-k = (max index at depth d) + 1 (TensorRT-LLM's get_medusa_topks:
#   NVIDIA/TensorRT-LLM@27712aa7720aa3e6a594ad3cc678625490cb479d:tensorrt_llm/runtime/medusa_utils.py:103-109).
# Its Medusa layer samples the heads with the top-k kernels, whose workspace is sized for TOP_K_MAX
#   NVIDIA/TensorRT-LLM@015884d6f9c477bf3c3928c61f5b5a143c7630c5:cpp/tensorrt_llm/layers/medusaDecodingLayer.cpp:55-60
# and which support K in [1, 1024] ("Supported K is in range [1; 1024]":
#   NVIDIA/TensorRT-LLM@e41b05cdc69021efb4116ed5f32eeb1840a47981:cpp/tensorrt_llm/kernels/samplingTopKKernels.h:51-52).
# A head cannot propose more candidates than the vocabulary has tokens either (torch.topk's bound here).
TOP_K_MAX = 1024


@cache
def presets() -> dict[str, Choices]:
    """The FasterDecoding/Medusa presets (medusa/model/medusa_choices.py), as data."""
    raw = json.loads(resources.files("trtbuild.common.medusa").joinpath("presets.json").read_text())
    return {name: tuple(tuple(p) for p in paths) for name, paths in raw.items() if not name.startswith("_")}


@dataclass(frozen=True)
class ParsedChoices:
    choices: Choices  # canonical: sorted by (depth, path), prefix-closed
    added_prefixes: Choices  # prefixes that were missing from the input and were added


def _paths_from_text(spec: str) -> list[list[int]]:
    text = spec.strip()
    if not text:
        raise ConfigError("medusa choices are empty")
    if text in presets():
        return [list(p) for p in presets()[text]]
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"medusa choices: invalid JSON ({e.msg} at position {e.pos})") from None
        if not isinstance(value, list):
            raise ConfigError("medusa choices: expected a JSON list of paths")
        return value
    if text.startswith("{"):
        if not re.fullmatch(r"\{\s*\d+(\s*,\s*\d+)*\s*\}(\s*,\s*\{\s*\d+(\s*,\s*\d+)*\s*\})*", text):
            raise ConfigError(f"medusa choices: malformed brace form {text[:60]!r} (expected '{{0}}, {{0, 1}}, ...')")
        return [[int(x) for x in grp.split(",")] for grp in re.findall(r"\{([^}]*)\}", text)]
    raise ConfigError(f"medusa choices: {text[:60]!r} is not a preset name ({', '.join(presets())}), "
                      "a JSON list of paths or the brace form")


def parse_choices(spec: str | list, num_heads: int | None = None, max_draft_len: int | None = None,
                  vocab_size: int | None = None) -> ParsedChoices:
    """Parse and validate a tree; see the module docstring for the accepted spellings. Every index
    is < TOP_K_MAX (and < vocab_size when given): the candidate a head can propose."""
    paths = _paths_from_text(spec) if isinstance(spec, str) else list(spec)
    if not paths:
        raise ConfigError("medusa choices are empty")
    seen: set[Path_] = set()
    for p in paths:
        if (not isinstance(p, (list, tuple)) or not p
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in p)):
            raise ConfigError(f"medusa choices: each path must be a non-empty list of non-negative integers, got {p!r}")
        t = tuple(p)
        limit = min(TOP_K_MAX, vocab_size) if vocab_size is not None else TOP_K_MAX
        if max(t) >= limit:
            d = t.index(max(t))
            bound = (f"the vocabulary has {vocab_size} tokens" if vocab_size is not None and vocab_size < TOP_K_MAX
                     else f"a head proposes at most TensorRT-LLM's top-k limit of {TOP_K_MAX}")
            raise ConfigError(f"medusa choices: path {list(t)} takes candidate {t[d]} of head {d}, but {bound} "
                              f"(indices must be < {limit})")
        if t in seen:
            raise ConfigError(f"medusa choices: duplicate path {list(t)}")
        seen.add(t)
    added = {p[:k] for p in seen for k in range(1, len(p))} - seen
    full = sorted(seen | added, key=lambda p: (len(p), p))
    depth = max(len(p) for p in full)
    if num_heads is not None and depth > num_heads:
        raise ConfigError(f"medusa choices: tree depth {depth} exceeds the {num_heads} Medusa heads")
    if max_draft_len is not None and len(full) > max_draft_len:
        raise ConfigError(f"medusa choices: {len(full)} nodes exceed max_draft_len {max_draft_len}")
    return ParsedChoices(tuple(full), tuple(sorted(added, key=lambda p: (len(p), p))))


def to_brace(choices: Choices) -> str:
    """Triton's `medusa_choices` parameter form: `{0}, {0, 0}, {1}`."""
    return ", ".join("{" + ", ".join(map(str, p)) + "}" for p in choices)


def to_json(choices: Choices) -> str:
    """The JSON list form: `[[0], [0, 0], [1]]`."""
    return json.dumps([list(p) for p in choices])


@dataclass(frozen=True)
class MedusaSpec:
    """Medusa decoding with one tree: canonical choices (`parse_choices(...).choices`); written as
    the brace form (`str`) only where a file or command line needs text."""

    choices: Choices

    def __str__(self) -> str:
        return to_brace(self.choices)

    @property
    def nodes(self) -> int:
        """Tree nodes verified per step, the root included (TensorRT-LLM: max_draft_len + 1 at most)."""
        return len(self.choices) + 1
