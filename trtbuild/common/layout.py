"""The TensorRT-LLM checkpoint layout for the Llama family: names, shapes, splits and merges.

Pure functions shared by the converter (split HF tensors into rank files), the reference runtime
(merge rank files back into whole tensors) and the tests (expected `{name: shape}` for any
layout, on the meta device). Notation follows the formats sheet: H hidden, nh heads, nkv kv heads,
d head size, I intermediate, V vocab, t tp size, r tp rank.

Per-rank rules (TensorRT-LLM `models/llama/convert.py`):
- fused qkv rows are `[q_r; k_r; v_r]`; when nkv < t every kv head is repeated t/nkv times first;
- column-parallel weights split dim 0, row-parallel weights split dim 1;
- `lm_head` is zero-padded to ceil(V/t)*t rows, then split on dim 0;
- pp rank p holds layers `tensor_split(arange(L), pp)[p]`, numbered from 0 in its file; the
  embedding lives on the first pp rank, `ln_f` and `lm_head` on the last.
Every uneven split is an error, never a silent `torch.chunk`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trtbuild.common.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Mapping:
    """Parallel layout of a checkpoint: world_size = tp_size * pp_size; rank = pp_rank * tp + tp_rank."""

    tp_size: int = 1
    pp_size: int = 1

    def __post_init__(self) -> None:
        if self.tp_size < 1 or self.pp_size < 1:
            raise ConfigError(f"tp and pp must be >= 1, got tp={self.tp_size} pp={self.pp_size}")

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp_size

    def pp_rank(self, rank: int) -> int:
        return rank // self.tp_size

    def to_dict(self) -> dict[str, int]:
        """The `mapping` entry of config.json. Minimal on purpose: TensorRT-LLM's `Mapping(**d)`
        accepts these three in every release, while its other keys changed between releases."""
        return {"world_size": self.world_size, "tp_size": self.tp_size, "pp_size": self.pp_size}

    @classmethod
    def from_dict(cls, d: dict) -> Mapping:
        m = cls(tp_size=int(d.get("tp_size", 1)), pp_size=int(d.get("pp_size", 1)))
        if int(d.get("world_size", m.world_size)) != m.world_size:
            raise ConfigError(f"mapping world_size {d['world_size']} != tp_size*pp_size {m.world_size}")
        return m


@dataclass(frozen=True)
class Dims:
    """The model dimensions the layout depends on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    intermediate_size: int
    vocab_size: int
    qkv_bias: bool = False
    medusa_heads: int = 0  # K heads, each medusa_layers ResBlocks (H -> H) and an lm_head (H -> V)
    medusa_layers: int = 0


def pp_layers(num_layers: int, pp_size: int, pp_rank: int) -> range:
    """Global layer indices held by `pp_rank`: `torch.tensor_split(arange(L), pp)`; first L % pp ranks get one more."""
    if num_layers < pp_size:
        raise ConfigError(f"pp={pp_size} exceeds the number of layers ({num_layers})")
    base, extra = divmod(num_layers, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    return range(start, start + base + (1 if pp_rank < extra else 0))


def pad_vocab_size(vocab_size: int, tp_size: int) -> int:
    """`tensorrt_llm._utils.pad_vocab_size`: ceil(V / t) * t."""
    return int(math.ceil(vocab_size / tp_size) * tp_size)


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> int:
    """KV heads in each rank's qkv after duplication (1 when nkv < t)."""
    return max(num_kv_heads // tp_size, 1)


def validate_dims(dims: Dims, mapping: Mapping) -> None:
    """Raise ConfigError for any layout TensorRT-LLM would split unevenly."""
    t = mapping.tp_size
    if dims.num_heads % t:
        raise ConfigError(f"tp={t} does not divide num_attention_heads={dims.num_heads}")
    nkv = dims.num_kv_heads
    if dims.num_heads % nkv:
        raise ConfigError(f"num_key_value_heads={nkv} does not divide num_attention_heads={dims.num_heads}")
    if nkv % t and t % nkv:
        raise ConfigError(f"tp={t} and num_key_value_heads={nkv}: one must divide the other")
    if dims.intermediate_size % t:
        raise ConfigError(f"tp={t} does not divide intermediate_size={dims.intermediate_size}")
    if dims.num_layers < mapping.pp_size:
        raise ConfigError(f"pp={mapping.pp_size} exceeds num_hidden_layers={dims.num_layers}")
    if dims.medusa_heads and dims.hidden_size % t:
        raise ConfigError(f"tp={t} does not divide hidden_size={dims.hidden_size} (Medusa head layers)")
    if dims.medusa_heads and mapping.pp_size > 1:
        raise ConfigError("Medusa with pipeline parallelism (pp > 1) is not supported by TensorRT-LLM")


def rank_layout(dims: Dims, mapping: Mapping, rank: int) -> dict[str, tuple[int, ...]]:
    """Every tensor name in `rank{rank}.safetensors` with its shape, in file order."""
    validate_dims(dims, mapping)
    t, p = mapping.tp_size, mapping.pp_rank(rank)
    H, d = dims.hidden_size, dims.head_size
    qkv_rows = (dims.num_heads // t + 2 * kv_heads_per_rank(dims.num_kv_heads, t)) * d
    out: dict[str, tuple[int, ...]] = {}
    if p == 0:
        out["transformer.vocab_embedding.weight"] = (dims.vocab_size, H)
    for i, _ in enumerate(pp_layers(dims.num_layers, mapping.pp_size, p)):
        pre = f"transformer.layers.{i}."
        out[pre + "input_layernorm.weight"] = (H,)
        out[pre + "attention.qkv.weight"] = (qkv_rows, H)
        if dims.qkv_bias:
            out[pre + "attention.qkv.bias"] = (qkv_rows,)
        out[pre + "attention.dense.weight"] = (H, dims.num_heads * d // t)
        out[pre + "post_layernorm.weight"] = (H,)
        out[pre + "mlp.fc.weight"] = (dims.intermediate_size // t, H)
        out[pre + "mlp.gate.weight"] = (dims.intermediate_size // t, H)
        out[pre + "mlp.proj.weight"] = (H, dims.intermediate_size // t)
    if p == mapping.pp_size - 1:
        out["transformer.ln_f.weight"] = (H,)
        out["lm_head.weight"] = (pad_vocab_size(dims.vocab_size, t) // t, H)
        for h in range(dims.medusa_heads):  # column-parallel like lm_head (gather_output=True)
            for layer in range(dims.medusa_layers):
                out[f"medusa_heads.{h}.medusa_layers.{layer}.linear.weight"] = (H // t, H)
                out[f"medusa_heads.{h}.medusa_layers.{layer}.linear.bias"] = (H // t,)
            out[f"medusa_heads.{h}.lm_head.weight"] = (pad_vocab_size(dims.vocab_size, t) // t, H)
    return out


# --- splits (HF whole tensor -> one rank's shard) -------------------------------------------------


def split(w: torch.Tensor, tp_size: int, tp_rank: int, dim: int) -> torch.Tensor:
    """Even split along `dim`; an uneven one raises instead of chunking silently."""
    if w.shape[dim] % tp_size:
        raise ConfigError(f"cannot split dim {dim} of size {w.shape[dim]} evenly across tp={tp_size}")
    n = w.shape[dim] // tp_size
    return w.narrow(dim, tp_rank * n, n)


def dup_kv(w: torch.Tensor, num_kv_heads: int, tp_size: int) -> torch.Tensor:
    """Repeat each kv head t/nkv times when nkv < t. w: [nkv*d, ...] -> [t*d, ...]."""
    if num_kv_heads >= tp_size:
        return w
    reps = tp_size // num_kv_heads
    head = w.reshape(num_kv_heads, w.shape[0] // num_kv_heads, *w.shape[1:])  # [nkv, d, ...]
    return head.repeat_interleave(reps, dim=0).reshape(tp_size * head.shape[1], *w.shape[1:])


def split_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_kv_heads: int,
              tp_size: int, tp_rank: int) -> torch.Tensor:
    """Fused per-rank qkv `[q_r; k_r; v_r]`. q: [nh*d, ...], k/v: [nkv*d, ...] (weight or bias)."""
    import torch

    k, v = dup_kv(k, num_kv_heads, tp_size), dup_kv(v, num_kv_heads, tp_size)
    parts = [split(x, tp_size, tp_rank, 0) for x in (q, k, v)]
    return torch.cat(parts, dim=0).contiguous()


def pad_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero-pad dim 0 of w up to `rows`."""
    import torch

    if w.shape[0] == rows:
        return w
    return torch.cat([w, w.new_zeros(rows - w.shape[0], *w.shape[1:])], dim=0)


# --- merges (rank shards -> whole tensor), the inverse used by the runtime loader ---------------


def merge_qkv(shards: list[torch.Tensor], dims: Dims) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of split_qkv over all tp ranks: -> (q [nh*d, ...], k [nkv*d, ...], v [nkv*d, ...]).

    Duplicated kv heads must be identical across the ranks that share them; otherwise the
    checkpoint is inconsistent and this raises.
    """
    import torch

    t, d = len(shards), dims.head_size
    nq, nkv_r = dims.num_heads // t * d, kv_heads_per_rank(dims.num_kv_heads, t) * d
    qs, ks, vs = zip(*(torch.split(s, [nq, nkv_r, nkv_r], dim=0) for s in shards))
    q = torch.cat(qs, dim=0)
    if dims.num_kv_heads >= t:
        return q, torch.cat(ks, dim=0), torch.cat(vs, dim=0)
    reps = t // dims.num_kv_heads
    for group in range(dims.num_kv_heads):
        first = group * reps
        for r in range(first + 1, first + reps):
            if not (torch.equal(ks[r], ks[first]) and torch.equal(vs[r], vs[first])):
                raise ConfigError(f"duplicated kv head {group} differs between tp ranks {first} and {r}")
    return q, torch.cat(ks[::reps], dim=0), torch.cat(vs[::reps], dim=0)
