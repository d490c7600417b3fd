"""Read Medusa head files of every FasterDecoding generation into one canonical form.

Generations (formats sheet §3):
- Medusa-1 legacy `medusa_lm_head.pt` (a pickle: loaded with `weights_only=True` only) or
  `medusa_lm_head.safetensors`: keys `{h}.{l}.linear.weight|bias` and `{h}.{L}.weight` (the
  per-head lm_head, right after the L ResBlocks);
- "version 2" heads: the same without `{h}.{L}.weight`; logits go through the base lm_head;
- Medusa-2 full models: the same keys under a `medusa_head.` prefix, next to the base `model.*`.
Head and layer counts come from the tensor names (the configs shipped with heads are known to
understate them); a Medusa `config.json` next to the file is read only to report disagreement.

Canonical names: `medusa.{h}.{l}.linear.weight` [H, H], `medusa.{h}.{l}.linear.bias` [H],
`medusa.{h}.lm_head.weight` [V, H] (absent for version-2 heads).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtbuild.convert.hf import SafetensorsSource, load_bin
from trtbuild.common.errors import CheckpointError, ConfigError
from trtbuild.common.medusa.choices import parse_choices, presets

if TYPE_CHECKING:
    import torch

HEAD_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")
_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")
PREFIX = "medusa_head."


@dataclass(frozen=True)
class MedusaHeads:
    files: tuple[Path, ...]
    num_heads: int
    num_layers: int
    has_lm_head: bool  # False for version-2 heads (logits through the base model's lm_head)
    hidden_size: int
    vocab_size: int | None  # None when there is no per-head lm_head
    tensors: dict[str, torch.Tensor]  # canonical names, see the module docstring
    notes: tuple[str, ...] = ()

    def check_base(self, hidden_size: int, vocab_size: int) -> None:
        """Fail unless the heads fit a base model of this hidden size and vocabulary."""
        if self.hidden_size != hidden_size:
            raise ConfigError(f"Medusa heads have hidden size {self.hidden_size}, the base model {hidden_size}")
        if self.vocab_size is not None and self.vocab_size != vocab_size:
            raise ConfigError(f"Medusa heads' lm_head has vocabulary {self.vocab_size}, the base model {vocab_size}")


def _head_files(path: Path) -> tuple[tuple[Path, ...], bool]:
    """(files to read, whether keys carry the Medusa-2 `medusa_head.` prefix among other tensors)."""
    if path.is_file():
        return (path,), False
    if not path.is_dir():
        raise ConfigError(f"Medusa heads not found: {path}")
    for name in HEAD_FILES:
        if (path / name).is_file():
            return (path / name,), False
    full = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not full:
        raise ConfigError(f"{path} holds no Medusa head file ({' or '.join(HEAD_FILES)}) and no model weights")
    return tuple(full), True


def _read(files: tuple[Path, ...], prefixed: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(_read_file(f, prefixed))
        except CheckpointError as e:  # "NAME: reason" from the safetensors / weights-only readers
            raise CheckpointError(f"cannot read Medusa heads: {e}") from None
    if prefixed:
        out = {n[len(PREFIX):]: t for n, t in out.items()}
        if not out:
            raise ConfigError(f"no '{PREFIX}*' tensors in {', '.join(f.name for f in files)}: not a Medusa model")
    return out


def _read_file(f: Path, prefixed: bool) -> dict[str, torch.Tensor]:
    if f.suffix == ".safetensors":
        src = SafetensorsSource([f])
        try:
            return {n: src.get(n) for n in src.names() if not prefixed or n.startswith(PREFIX)}
        finally:
            src.close()
    if f.suffix in (".pt", ".bin", ".pth"):
        return {n: t for n, t in load_bin(f).items() if not prefixed or n.startswith(PREFIX)}
    raise ConfigError(f"unsupported Medusa head file {f.name} (expected .safetensors, .pt or .bin)")


def read_heads(path: Path) -> MedusaHeads:
    """Read and validate the Medusa heads at `path` (a head file or a directory)."""
    path = Path(path)
    files, prefixed = _head_files(path)
    raw = _read(files, prefixed)
    layers: dict[int, dict[int, set[str]]] = {}
    lm: dict[int, tuple[int, torch.Tensor]] = {}
    for name in raw:
        m = _KEY.match(name)
        if m is None:
            raise ConfigError(f"unexpected tensor {name!r} in Medusa heads (expected '{{h}}.{{l}}.linear.weight' ...)")
        h, j, kind = int(m.group(1)), int(m.group(2)), m.group(3)
        if kind == "weight":
            lm[h] = (j, raw[name])
        else:
            layers.setdefault(h, {}).setdefault(j, set()).add(kind)
    heads = sorted(set(layers) | set(lm))
    if not heads or heads != list(range(len(heads))):
        raise ConfigError(f"Medusa head indices must be 0..K-1, got {heads}")
    if set(lm) and set(lm) != set(heads):
        raise ConfigError(f"only heads {sorted(lm)} of {len(heads)} have an lm_head")
    counts = {h: len(layers.get(h, {})) for h in heads}
    L = counts[0]
    for h in heads:
        got = layers.get(h, {})
        if sorted(got) != list(range(L)) or any(v != {"linear.weight", "linear.bias"} for v in got.values()):
            raise ConfigError(f"Medusa head {h} does not have the same {L} ResBlock layers (weight + bias) as head 0")
        if h in lm and lm[h][0] != L:
            raise ConfigError(f"Medusa head {h}: lm_head at index {lm[h][0]}, expected {L} (after its layers)")
    if L < 1:
        raise ConfigError("Medusa heads have no ResBlock layers")
    tensors: dict[str, torch.Tensor] = {}
    H = raw["0.0.linear.weight"].shape[-1]
    for h in heads:
        for j in range(L):
            w, b = raw[f"{h}.{j}.linear.weight"], raw[f"{h}.{j}.linear.bias"]
            if tuple(w.shape) != (H, H) or tuple(b.shape) != (H,):
                raise ConfigError(f"Medusa head {h} layer {j}: shapes {list(w.shape)}/{list(b.shape)}, "
                                  f"expected [{H}, {H}]/[{H}]")
            tensors[f"medusa.{h}.{j}.linear.weight"], tensors[f"medusa.{h}.{j}.linear.bias"] = w, b
        if h in lm:
            w = lm[h][1]
            if w.ndim != 2 or w.shape[1] != H or w.shape[0] != lm[0][1].shape[0]:
                raise ConfigError(f"Medusa head {h}: lm_head shape {list(w.shape)}, expected [V, {H}]")
            tensors[f"medusa.{h}.lm_head.weight"] = w
    vocab = int(lm[0][1].shape[0]) if lm else None
    return MedusaHeads(files, len(heads), L, bool(lm), int(H), vocab, tensors,
                       _config_notes(path, len(heads), L))


def _config_notes(path: Path, heads: int, layers: int) -> tuple[str, ...]:
    cfg_path = (path if path.is_dir() else path.parent) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return (f"{cfg_path.name} next to the heads is not valid JSON: ignored",)
    if not isinstance(cfg, dict):
        return ()
    notes = []
    for key, counted in (("medusa_num_heads", heads), ("medusa_num_layers", layers)):
        if isinstance(cfg.get(key), int) and cfg[key] != counted:
            notes.append(f"config.json says {key}={cfg[key]}, the tensors hold {counted}: using {counted}")
    return tuple(notes)


def medusa_config(config: dict, heads: MedusaHeads, choices_spec: str | None,
                  max_draft_len: int | None) -> tuple[dict, dict]:
    """A MedusaForCausalLM config.json (and the manifest's options) from a base config and heads.

    Default tree: mc_sim_7b_63 restricted to depth <= the number of heads. Default max_draft_len:
    TensorRT-LLM's 63, raised to the tree's node count if that is larger. `config["vocab_size"]`, when
    present, bounds the tree's indices.
    """
    if choices_spec is None:
        parsed = parse_choices([list(p) for p in presets()["mc_sim_7b_63"] if len(p) <= heads.num_heads])
    else:
        parsed = parse_choices(choices_spec)
    draft = max_draft_len if max_draft_len is not None else max(63, len(parsed.choices))
    vocab = config.get("vocab_size")
    # the limits, now they are known (the vocabulary bounds each head's top-k)
    parse_choices([list(p) for p in parsed.choices], heads.num_heads, draft, int(vocab) if vocab else None)
    cfg = {**config, "architecture": "MedusaForCausalLM", "num_medusa_heads": heads.num_heads,
           "num_medusa_layers": heads.num_layers, "max_draft_len": draft,
           "medusa_choices": [list(p) for p in parsed.choices]}
    return cfg, {"medusa_heads": heads.num_heads, "medusa_layers": heads.num_layers,
                 "medusa_version": 1 if heads.has_lm_head else 2, "max_draft_len": draft,
                 "medusa_choices_added_prefixes": [list(p) for p in parsed.added_prefixes],
                 "medusa_notes": list(heads.notes)}
