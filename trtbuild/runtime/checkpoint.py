"""Load a TensorRT-LLM checkpoint of any tp/pp layout into whole (unsharded) runtime weights.

Every rank file must hold exactly the tensors `layout.rank_layout` names, with those shapes (a
quantized checkpoint: `quant.quant_rank_layout`, with those dtypes too); shards are merged back
(qkv per rank `[q_r; k_r; v_r]`, duplicated kv heads collapsed, row/column splits concatenated,
a split embedding (`use_parallel_embedding`) and the padded lm_head trimmed to the real
vocabulary). The runtime keeps fused tensors: `qkv` = [q; k; v] over all heads and `fc_gate` =
[fc; gate]. Quantized linears are dequantized shard by shard first (runtime/quant.py); fc and
gate stay two linears when their input quantization differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from trtbuild.common.layout import Dims, Mapping, merge_qkv, pad_vocab_size, pp_layers, rank_layout
from trtbuild.common.quant import QuantConfig, quant_rank_layout
from trtbuild.common.rope_scaling import check_scaling
from trtbuild.common.engine_config import EngineConfig
from trtbuild.common.errors import CheckpointError, ConfigError
from trtbuild.common.lookahead.spec import LookaheadSpec

if TYPE_CHECKING:
    import torch

    from trtbuild.runtime.quant import QuantWeight

    # a linear's weight [out, in]: a tensor, or for an activation-quantized linear a QuantWeight
    LinearWeight = torch.Tensor | QuantWeight

RUNTIME_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "MedusaForCausalLM")


@dataclass(frozen=True)
class ModelConfig:
    """What the reference runtime needs from a checkpoint's config.json."""

    architecture: str
    dims: Dims
    dtype: str  # storage dtype of the checkpoint
    norm_epsilon: float
    rotary_base: float
    rotary_scaling: dict | None
    max_position_embeddings: int
    sliding_window: int | None
    mapping: Mapping
    medusa_choices: tuple[tuple[int, ...], ...] | None = None  # the tree stored with the checkpoint
    max_draft_len: int = 0
    lookahead: LookaheadSpec | None = None  # the (W, N, G) stored with the checkpoint
    # an engine directory's build limits (its build_config; max_seq_len less max_draft_len, as the
    # server applies them); None for a checkpoint, which has only max_position_embeddings
    max_input_len: int | None = None
    max_seq_len: int | None = None
    quant: QuantConfig = QuantConfig()  # config.json's `quantization` (ModelOpt's export)
    parallel_embedding: bool = False  # use_parallel_embedding: the embedding split over tp on dim 0

    @classmethod
    def from_dict(cls, cfg: dict) -> ModelConfig:
        if not isinstance(cfg, dict):
            raise ConfigError("checkpoint config.json must be a JSON object")
        if "architecture" not in cfg and "architectures" in cfg:
            raise ConfigError("this is a Hugging Face model directory, not a TensorRT-LLM checkpoint: "
                              "run `trtbuild convert` on it first")
        arch = cfg.get("architecture")
        if arch not in RUNTIME_ARCHITECTURES:
            raise ConfigError(f"the reference runtime cannot run architecture {arch!r}")
        if cfg.get("hidden_act", "silu") != "silu" or cfg.get("position_embedding_type") != "rope_gpt_neox":
            raise ConfigError("the reference runtime needs hidden_act 'silu' and position_embedding_type 'rope_gpt_neox'")
        quant = QuantConfig.from_dict(cfg.get("quantization"))
        parallel_embedding = bool(cfg.get("use_parallel_embedding"))
        if parallel_embedding and cfg.get("embedding_sharding_dim", 0) != 0:
            raise ConfigError(f"embedding_sharding_dim {cfg['embedding_sharding_dim']!r} is not supported (only 0)")
        try:
            nh = int(cfg["num_attention_heads"])
            dims = Dims(
                hidden_size=int(cfg["hidden_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=nh,
                num_kv_heads=int(cfg.get("num_key_value_heads") or nh),
                head_size=int(cfg.get("head_size") or int(cfg["hidden_size"]) // nh),
                intermediate_size=int(cfg["intermediate_size"]),
                vocab_size=int(cfg["vocab_size"]),
                qkv_bias=bool(cfg.get("attn_bias")) or cfg.get("qwen_type") == "qwen2",
                medusa_heads=int(cfg.get("num_medusa_heads") or 0) if arch == "MedusaForCausalLM" else 0,
                medusa_layers=int(cfg.get("num_medusa_layers") or 0) if arch == "MedusaForCausalLM" else 0,
            )
            if arch == "MedusaForCausalLM" and dims.medusa_heads < 1:
                raise ConfigError("MedusaForCausalLM checkpoint without num_medusa_heads")
            choices = cfg.get("medusa_choices")
            return cls(
                architecture=arch,
                dims=dims,
                dtype=str(cfg["dtype"]),
                norm_epsilon=float(cfg.get("norm_epsilon", 1e-5)),
                rotary_base=float(cfg.get("rotary_base", 10000.0)),
                rotary_scaling=check_scaling(cfg.get("rotary_scaling")),
                max_position_embeddings=int(cfg.get("max_position_embeddings") or 2048),
                sliding_window=int(cfg["sliding_window"]) if cfg.get("sliding_window") else None,
                mapping=Mapping.from_dict(cfg.get("mapping") or {}),
                medusa_choices=tuple(tuple(int(i) for i in p) for p in choices) if choices else None,
                max_draft_len=int(cfg.get("max_draft_len") or 0),
                lookahead=LookaheadSpec.from_dict(cfg["lookahead_config"]) if cfg.get("lookahead_config") else None,
                quant=quant,
                parallel_embedding=parallel_embedding,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"checkpoint config.json is missing or has a bad field: {e}") from None


@dataclass(frozen=True)
class LayerWeights:
    """One layer. For a quantized checkpoint a norm weight, or gate's rows, may carry the next
    linear's input scaling (runtime/quant.py, folding)."""

    attn_norm: torch.Tensor  # [H]
    qkv: LinearWeight  # [(nh + 2 nkv) d, H]
    qkv_bias: torch.Tensor | None  # [(nh + 2 nkv) d]
    dense: LinearWeight  # [H, nh d]
    mlp_norm: torch.Tensor  # [H]
    # [2 I, H]: rows [:I] = fc (activated), rows [I:] = gate (linear); or (fc, gate) when their
    # inputs are quantized differently
    fc_gate: LinearWeight | tuple[LinearWeight, LinearWeight]
    proj: LinearWeight  # [H, I]
    kv_scale: float | None = None  # FP8 KV cache: kv_cache_scaling_factor


@dataclass(frozen=True)
class MedusaHeadWeights:
    layers: tuple[tuple[LinearWeight, torch.Tensor], ...]  # ResBlocks: (weight [H, H], bias [H])
    lm_head: LinearWeight  # [V, H]


@dataclass(frozen=True)
class Weights:
    embedding: torch.Tensor  # [V, H]
    layers: tuple[LayerWeights, ...]
    final_norm: torch.Tensor  # [H]
    lm_head: LinearWeight  # [V, H]
    medusa: tuple[MedusaHeadWeights, ...] = ()


def read_config(ckpt_dir: Path) -> ModelConfig:
    """A checkpoint's config.json, or an engine directory's `pretrained_config`."""
    path = Path(ckpt_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a TensorRT-LLM checkpoint (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("pretrained_config"), dict):
        config = ModelConfig.from_dict(cfg["pretrained_config"])
        if not isinstance(cfg.get("build_config"), dict):
            return config
        # the server's limits (triton_repo.parameters, the scheduler): max_seq_len counts the drafts
        engine = EngineConfig.from_dict(cfg, where=str(path))
        return replace(config, max_input_len=engine.max_input_len, max_seq_len=engine.usable_seq_len)
    return ModelConfig.from_dict(cfg)


def weights_dir(ckpt_dir: Path) -> Path:
    """Where the rank files are: the directory itself, or for an engine directory built by trtbuild
    the checkpoint its `trtbuild.json` points to (`../checkpoint`)."""
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / "trtbuild.json"
    if (ckpt_dir / "rank0.safetensors").is_file() or not marker.is_file():
        return ckpt_dir
    try:
        link = json.loads(marker.read_text()).get("checkpoint")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return ckpt_dir
    if not isinstance(link, str):
        return ckpt_dir
    target = (ckpt_dir / link).resolve()
    if not (target / "rank0.safetensors").is_file():
        raise CheckpointError(f"{ckpt_dir}: its checkpoint {target} is missing (rebuild the engine)")
    return target


def _expected(cfg: ModelConfig, rank: int) -> dict[str, tuple[str | None, tuple[int, ...]]]:
    """{name: (torch dtype name or None: unchecked, shape)} of one rank file."""
    d, m = cfg.dims, cfg.mapping
    emb = "transformer.vocab_embedding.weight"
    if cfg.quant.enabled:  # ModelOpt always splits the embedding (common/quant.py)
        if m.tp_size > 1 and not cfg.parallel_embedding:
            raise CheckpointError("a quantized checkpoint with tp > 1 must split the embedding "
                                  "(use_parallel_embedding: true), as ModelOpt writes it")
        return quant_rank_layout(d, m, rank, cfg.quant, cfg.dtype)
    out = {name: (None, shape) for name, shape in rank_layout(d, m, rank).items()}
    if cfg.parallel_embedding and emb in out:
        out[emb] = (None, (pad_vocab_size(d.vocab_size, m.tp_size) // m.tp_size, d.hidden_size))
    return out


def _load_rank(ckpt_dir: Path, rank: int,
               expected: dict[str, tuple[str | None, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    import torch
    from safetensors.torch import load_file

    path = ckpt_dir / f"rank{rank}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint is missing {path.name}")
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"corrupted safetensors file {path.name}: {e}") from None
    names = set(tensors)
    if "lm_head.weight" in expected and "lm_head.weight" not in names and "transformer.vocab_embedding.weight" in names:
        tensors["lm_head.weight"] = tensors["transformer.vocab_embedding.weight"]  # shared embedding table
        names.add("lm_head.weight")
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path.name}: missing {missing[:5]} / unexpected {extra[:5]} tensors")
    for name, (dtype, shape) in expected.items():
        if dtype is not None and tensors[name].dtype != getattr(torch, dtype):
            raise CheckpointError(f"{path.name}: {name} has dtype {str(tensors[name].dtype).removeprefix('torch.')}, "
                                  f"expected {dtype}")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{path.name}: {name} has shape {list(tensors[name].shape)}, expected {list(shape)}")
    return tensors


def load_weights(ckpt_dir: Path, cfg: ModelConfig, dtype: torch.dtype, device: str = "cpu",
                 int4: bool = False, int8: bool = False) -> Weights:
    """Read all rank files of `ckpt_dir` and merge them into whole tensors of `dtype` on `device`;
    `int4` / `int8`: weight-only int4 AWQ / int8 SmoothQuant linears stay on their grid
    (runtime.quant.Int4Weight / Int8Weight)."""
    import torch

    from trtbuild.runtime.quant import Shard, finish, fold_into_gate, fold_into_norm, fuse, merge, read_shard

    ckpt_dir = weights_dir(ckpt_dir)
    d, m, q = cfg.dims, cfg.mapping, cfg.quant
    t = m.tp_size
    ranks = [_load_rank(ckpt_dir, r, _expected(cfg, r)) for r in range(m.world_size)]

    def put(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype).contiguous()

    def linear(shards: list[dict], module: str, split: int | str) -> Shard:
        """Merge a linear over its tp shards; split: 0 column-parallel, 1 row-parallel, "qkv"."""
        parts = [read_shard(s, module, q) for s in shards]
        grouped, channel = parts[0].group_scale is not None, parts[0].channel_scale is not None
        if split == "qkv":
            group = torch.cat(merge_qkv([p.group_scale for p in parts], d), dim=0) if grouped else None
            ch = torch.cat(merge_qkv([p.channel_scale for p in parts], d), dim=0) if channel else None
            return merge(parts, torch.cat(merge_qkv([p.weight for p in parts], d), dim=0), 0, module, group, ch)
        group = torch.cat([p.group_scale for p in parts], dim=split) if grouped else None
        ch = torch.cat([p.channel_scale for p in parts]) if channel and split == 0 else None  # 1: merge decides
        return merge(parts, torch.cat([p.weight for p in parts], dim=split), split, module, group, ch)

    def lin(shard: Shard | tuple[Shard, Shard]) -> LinearWeight | tuple[LinearWeight, LinearWeight]:
        if isinstance(shard, tuple):
            return tuple(finish(s, dtype, device, int4, int8) for s in shard)
        return finish(shard, dtype, device, int4, int8)

    def same(shards: list[dict], name: str) -> torch.Tensor:
        if any(not torch.equal(s[name], shards[0][name]) for s in shards[1:]):
            raise CheckpointError(f"{name} differs between tp ranks")
        return shards[0][name]

    layers: list[LayerWeights] = []
    for p in range(m.pp_size):
        shards = ranks[p * t:(p + 1) * t]
        for i, _ in enumerate(pp_layers(d.num_layers, m.pp_size, p)):
            pre = f"transformer.layers.{i}."
            bias = None
            if d.qkv_bias:
                bias = put(torch.cat(merge_qkv([s[pre + "attention.qkv.bias"] for s in shards], d), dim=0))
            kv = float(same(shards, pre + "attention.kv_cache_scaling_factor")) if q.kv_cache else None
            attn_norm, qkv = fold_into_norm(put(shards[0][pre + "input_layernorm.weight"]),
                                            lin(linear(shards, pre + "attention.qkv", "qkv")))
            mlp_norm, fc_gate = fold_into_norm(put(shards[0][pre + "post_layernorm.weight"]), lin(
                fuse(linear(shards, pre + "mlp.fc", 0), linear(shards, pre + "mlp.gate", 0), int4)))
            fc_gate, proj = fold_into_gate(fc_gate, lin(linear(shards, pre + "mlp.proj", 1)))
            layers.append(LayerWeights(attn_norm=attn_norm, qkv=qkv, qkv_bias=bias,
                                       dense=lin(linear(shards, pre + "attention.dense", 1)),
                                       mlp_norm=mlp_norm, fc_gate=fc_gate, proj=proj, kv_scale=kv))
    last = ranks[(m.pp_size - 1) * t:]

    def head(module: str):  # a column-parallel lm_head: merged, its padded rows trimmed
        s = linear(last, module, 0)
        group = None if s.group_scale is None else s.group_scale[: d.vocab_size]
        ch = None if s.channel_scale is None else s.channel_scale[: d.vocab_size]
        return lin(replace(s, weight=s.weight[: d.vocab_size], group_scale=group, channel_scale=ch))

    medusa = tuple(
        MedusaHeadWeights(
            layers=tuple((lin(linear(last, f"medusa_heads.{h}.medusa_layers.{j}.linear", 0)),
                          put(torch.cat([s[f"medusa_heads.{h}.medusa_layers.{j}.linear.bias"] for s in last])))
                         for j in range(d.medusa_layers)),
            lm_head=head(f"medusa_heads.{h}.lm_head"))
        for h in range(d.medusa_heads))
    first = ranks[:t]
    emb = "transformer.vocab_embedding.weight"
    embedding = torch.cat([s[emb] for s in first])[: d.vocab_size] if cfg.parallel_embedding else first[0][emb]
    return Weights(
        embedding=put(embedding),
        layers=tuple(layers),
        final_norm=put(last[0]["transformer.ln_f.weight"]),
        lm_head=head("lm_head"),
        medusa=medusa,
    )
