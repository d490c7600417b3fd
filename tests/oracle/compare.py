"""Compare two TensorRT-LLM checkpoints tensor by tensor and config.json key by key, modulo listed rules.

Used by tests/test_modelopt_oracle.py (in the project's venv; export_modelopt.py next to this file
runs in the oracle's). The rules are data that the test owns:

- `TensorRule`: how the oracle's tensor follows from trtbuild's (e.g. an embedding split across tp
  ranks); everything else must be torch.equal with the same dtype and shape.
- `ConfigRule`: a config.json key (dotted path into nested dicts) whose value differs, or that only
  one side writes; each side's value is given (or computed from a `Ctx`), so a listed difference
  is itself checked. Every other key must be present on both sides with equal values.
- `FileRule`: a file (other than config.json and rank{r}.safetensors) that only one side writes.

`compare_checkpoints` returns every unlisted difference, each named by where it is
(`rank1.safetensors:<tensor>`, `config.json:<key>`, `files:<name>`), and which rules applied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

ABSENT = object()  # the key is not written by that side


@dataclass(frozen=True)
class Ctx:
    """What a rule's value may depend on: the case, the source HF config, both flattened config.json."""

    case: object
    hf: dict
    trt: dict
    oracle: dict


@dataclass(frozen=True)
class TensorRule:
    pattern: str  # regex over tensor names
    expect: Callable[[torch.Tensor, int, int], torch.Tensor]  # (trtbuild's tensor, tp, tp rank) -> the oracle's
    reason: str
    source: str


@dataclass(frozen=True)
class ConfigRule:
    key: str  # dotted path in the flattened config.json
    trtbuild: object  # ABSENT, a value, or a callable(Ctx) giving the value
    oracle: object
    reason: str
    source: str


@dataclass(frozen=True)
class FileRule:
    side: str  # "trtbuild" | "oracle": the one side that writes the file
    reason: str
    source: str
    check: Callable[[Path], str | None] | None = None  # a complaint about the file's content, or None


@dataclass(frozen=True)
class Mismatch:
    where: str  # "rank1.safetensors:<tensor>", "config.json:<dotted key>" or "files:<name>"
    detail: str


@dataclass
class Comparison:
    mismatches: list[Mismatch] = field(default_factory=list)
    rules_seen: set[str] = field(default_factory=set)  # "config:<key>", "tensor:<pattern>", "file:<name>"

    def add(self, where: str, detail: str) -> None:
        self.mismatches.append(Mismatch(where, detail))


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys; lists, None and empty dicts are leaves."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a, b) -> bool:
    if a is ABSENT or b is ABSENT:
        return a is b
    return a == b and isinstance(a, bool) == isinstance(b, bool)  # true != 1 in a config


def _show(v) -> str:
    return "absent" if v is ABSENT else repr(v)


def compare_configs(ctx: Ctx, rules: tuple[ConfigRule, ...], out: Comparison) -> None:
    by_key = {r.key: r for r in rules}
    for key in sorted(ctx.trt.keys() | ctx.oracle.keys()):
        got = (ctx.trt.get(key, ABSENT), ctx.oracle.get(key, ABSENT))
        rule = by_key.get(key)
        if rule is None:
            if not _same(*got):
                out.add(f"config.json:{key}",
                        f"trtbuild {_show(got[0])}, oracle {_show(got[1])} (no listed difference)")
            continue
        want = tuple(v(ctx) if callable(v) else v for v in (rule.trtbuild, rule.oracle))
        if _same(want[0], got[0]) and _same(want[1], got[1]):
            out.rules_seen.add(f"config:{key}")
        else:
            out.add(f"config.json:{key}", f"trtbuild {_show(got[0])}, oracle {_show(got[1])}; the listed "
                    f"difference says trtbuild {_show(want[0])}, oracle {_show(want[1])}")


def tensor_diff(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """None when a and b are the same tensor bit for bit (dtype, shape, values), else how they differ."""
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    if a.shape != b.shape:
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    if torch.equal(a, b):
        return None
    bad = (a != b).nonzero()
    i = tuple(bad[0].tolist())
    return f"{len(bad)} of {a.numel()} values differ, first at {list(i)}: {a[i].item()} vs {b[i].item()}"


def compare_ranks(trt_dir: Path, oracle_dir: Path, tp: int, rules: tuple[TensorRule, ...], out: Comparison) -> None:
    files = sorted({p.name for d in (trt_dir, oracle_dir) for p in d.glob("rank*.safetensors")})
    for fname in files:
        if not ((trt_dir / fname).is_file() and (oracle_dir / fname).is_file()):
            side = "trtbuild" if (trt_dir / fname).is_file() else "the oracle"
            out.add(f"files:{fname}", f"only written by {side}")
            continue
        a, b = load_file(trt_dir / fname), load_file(oracle_dir / fname)
        tp_rank = int(fname[len("rank"):-len(".safetensors")]) % tp
        for name in sorted(a.keys() | b.keys()):
            if name not in a or name not in b:
                out.add(f"{fname}:{name}", "only in " + ("trtbuild's" if name in a else "the oracle's") + " file")
                continue
            expected = a[name]
            rule = next((r for r in rules if re.match(r.pattern, name)), None)
            if rule is not None:
                expected = rule.expect(a[name], tp, tp_rank)
                if tensor_diff(expected, a[name]) is not None:  # the listed difference is real here
                    out.rules_seen.add(f"tensor:{rule.pattern}")
            diff = tensor_diff(expected, b[name])
            if diff is not None:
                mapped = " (as the rule maps it)" if rule else ""
                out.add(f"{fname}:{name}", f"trtbuild's{mapped} vs the oracle's: {diff}")


def compare_files(trt_dir: Path, oracle_dir: Path, rules: dict[str, FileRule], out: Comparison) -> None:
    def others(d: Path) -> set[str]:
        return {p.name for p in d.iterdir()
                if p.name != "config.json" and not re.fullmatch(r"rank\d+\.safetensors", p.name)}

    trt, oracle = others(trt_dir), others(oracle_dir)
    for name in sorted(trt | oracle):
        side = "both" if name in trt and name in oracle else "trtbuild" if name in trt else "oracle"
        rule = rules.get(name)
        if rule is None or rule.side != side:
            out.add(f"files:{name}", f"written by {side} (no listed difference)")
            continue
        complaint = rule.check((trt_dir if side == "trtbuild" else oracle_dir) / name) if rule.check else None
        if complaint:
            out.add(f"files:{name}", complaint)
        else:
            out.rules_seen.add(f"file:{name}")


def compare_checkpoints(trt_dir: Path, oracle_dir: Path, *, case: object, hf_config: dict, tp: int,
                        config_rules: tuple[ConfigRule, ...], tensor_rules: tuple[TensorRule, ...],
                        file_rules: dict[str, FileRule]) -> Comparison:
    """Every difference between trtbuild's and the oracle's checkpoint that the rules do not list."""
    out = Comparison()
    trt_cfg = json.loads((trt_dir / "config.json").read_text())
    oracle_cfg = json.loads((oracle_dir / "config.json").read_text())
    compare_configs(Ctx(case, hf_config, flatten(trt_cfg), flatten(oracle_cfg)), config_rules, out)
    compare_ranks(trt_dir, oracle_dir, tp, tensor_rules, out)
    compare_files(trt_dir, oracle_dir, file_rules, out)
    return out
