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

from trtbuild.errors import ConfigError

Path_ = tuple[int, ...]
Choices = tuple[Path_, ...]


@cache
def presets() -> dict[str, Choices]:
    """The FasterDecoding/Medusa presets (medusa/model/medusa_choices.py), as data."""
    raw = json.loads(resources.files("trtbuild.medusa").joinpath("presets.json").read_text())
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


def parse_choices(spec: str | list, num_heads: int | None = None, max_draft_len: int | None = None) -> ParsedChoices:
    """Parse and validate a tree; see the module docstring for the accepted spellings."""
    paths = _paths_from_text(spec) if isinstance(spec, str) else list(spec)
    if not paths:
        raise ConfigError("medusa choices are empty")
    seen: set[Path_] = set()
    for p in paths:
        if (not isinstance(p, (list, tuple)) or not p
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in p)):
            raise ConfigError(f"medusa choices: each path must be a non-empty list of non-negative integers, got {p!r}")
        t = tuple(p)
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
