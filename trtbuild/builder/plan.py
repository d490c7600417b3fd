"""Memory planner: does a model fit a GPU at a given tp/pp, dtype and set of limits?

Per GPU (the fullest rank):
- weights: exact, from the checkpoint layout (`rank_layout`), Medusa heads included;
- KV cache per token: 2 (k, v) * layers on the rank * kv heads on the rank * head size * bytes;
- buffers (estimates): activations for max_num_tokens tokens in flight, fp32 logits for every
  sequence's max_draft_len + 1 positions, and a fixed runtime reserve (CUDA context, cuBLAS
  workspaces);
- KV tokens: what kv_cache_free_gpu_mem_fraction of the memory left after weights and buffers holds.
`fits` means weights and buffers fit and the KV cache holds at least one max_seq_len sequence;
`full_batch_fits` means it holds max_batch_size of them. Pure functions: no GPU is touched.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace

from trtbuild.builder.gpus import GiB, Gpu
from trtbuild.common.layout import Dims, Mapping, kv_heads_per_rank, pp_layers, rank_layout, validate_dims
from trtbuild.common.errors import ConfigError
from trtbuild.common.quant import QuantConfig, quant_rank_layout

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}
# bytes per element of the dtypes a quantized checkpoint stores (common.quant.quant_rank_layout);
# int4 weights are two per int8 byte, so the layout's int8 shapes already count them packed
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int8": 1}
RUNTIME_RESERVE = 1 * GiB  # CUDA context, cuBLAS/cuDNN workspaces, the decoder's own buffers
KV_FRACTION = 0.9  # TensorRT-LLM's default kv_cache_free_gpu_mem_fraction


@dataclass(frozen=True)
class Plan:
    device: str
    memory_bytes: int
    tp: int
    pp: int
    dtype: str
    weights_bytes: int  # per GPU (fullest rank)
    kv_cache_bytes_per_token: int  # per GPU
    activation_bytes: int
    logits_bytes: int
    reserve_bytes: int
    kv_cache_free_gpu_mem_fraction: float
    max_kv_tokens: int
    tokens_per_sequence: int  # max_seq_len + max_draft_len
    max_batch_size: int
    fits: bool
    full_batch_fits: bool
    recommended: dict
    quantization: str | None = None  # quant_algo of the weights (None: unquantized)
    kv_cache_dtype: str | None = None  # "fp8", or None: the weights' dtype

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for error messages."""
        return (f"weights {self.weights_bytes / GiB:.1f} GiB + buffers "
                f"{(self.activation_bytes + self.logits_bytes + self.reserve_bytes) / GiB:.1f} GiB per GPU of "
                f"{self.memory_bytes / GiB:.0f} GiB ({self.device}, tp={self.tp}, pp={self.pp}); KV cache room for "
                f"{self.max_kv_tokens} tokens, one sequence needs {self.tokens_per_sequence}")


def weights_bytes(dims: Dims, mapping: Mapping, dtype: str, quant: QuantConfig | None = None) -> int:
    """Bytes of the fullest rank's weights; quantized: every tensor of the quantized layout (packed
    weights, their scales, the unquantized rest in `dtype`)."""
    if quant is not None and quant.algo:
        return max(sum(math.prod(s) * ELEMENT_BYTES[d] for d, s in quant_rank_layout(dims, mapping, r, quant, dtype).values())
                   for r in range(mapping.world_size))
    per_rank = [sum(math.prod(s) for s in rank_layout(dims, mapping, r).values()) for r in range(mapping.world_size)]
    return max(per_rank) * DTYPE_BYTES[dtype]


def kv_bytes_per_token(dims: Dims, mapping: Mapping, dtype: str, kv_cache: str | None = None) -> int:
    """KV-cache bytes per token on the fullest rank; kv_cache "fp8": one byte per element."""
    layers = max(len(pp_layers(dims.num_layers, mapping.pp_size, p)) for p in range(mapping.pp_size))
    nbytes = 1 if kv_cache == "fp8" else DTYPE_BYTES[dtype]
    return 2 * layers * kv_heads_per_rank(dims.num_kv_heads, mapping.tp_size) * dims.head_size * nbytes


def plan(dims: Dims, device: Gpu | None, *, tp: int = 1, pp: int = 1, dtype: str = "float16",
         max_batch_size: int = 8, max_seq_len: int = 2048, max_num_tokens: int = 8192, max_draft_len: int = 0,
         kv_fraction: float = KV_FRACTION, quant: QuantConfig | None = None) -> Plan:
    """The memory plan for one configuration (device None: this machine's RAM, the CPU runtime);
    `quant`: the checkpoint's quantization (weights in its layout, an FP8 KV cache at one byte)."""
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r} for the planner")
    mapping = Mapping(tp, pp)
    validate_dims(dims, mapping)
    nbytes = DTYPE_BYTES[dtype]
    memory = device.memory_bytes if device else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    weights = weights_bytes(dims, mapping, dtype, quant)
    kv_cache = "fp8" if quant is not None and quant.kv_cache == "FP8" else None
    kv_token = kv_bytes_per_token(dims, mapping, dtype, kv_cache)
    H, I, d = dims.hidden_size, dims.intermediate_size, dims.head_size
    qkv = (dims.num_heads // tp + 2 * kv_heads_per_rank(dims.num_kv_heads, tp)) * d
    activations = max_num_tokens * (4 * H + qkv + 2 * I // tp) * nbytes
    logits = max_batch_size * (max_draft_len + 1) * math.ceil(dims.vocab_size / tp) * 4
    reserve = RUNTIME_RESERVE if device else 0
    free = memory - weights - activations - logits - reserve
    kv_tokens = max(int(free * kv_fraction) // kv_token, 0) if free > 0 else 0
    per_seq = max_seq_len + max_draft_len
    fits = free > 0 and kv_tokens >= per_seq
    full = fits and kv_tokens >= max_batch_size * per_seq
    recommended: dict = {"kv_cache_free_gpu_mem_fraction": kv_fraction}
    if fits:
        recommended["max_batch_size"] = min(max_batch_size, kv_tokens // per_seq) if not full else max_batch_size
    else:
        for t in (1, 2, 4, 8, 16, 32, 64):
            if t <= tp:
                continue
            try:
                p = plan(dims, device, tp=t, pp=pp, dtype=dtype, max_batch_size=max_batch_size,
                         max_seq_len=max_seq_len, max_num_tokens=max_num_tokens, max_draft_len=max_draft_len,
                         kv_fraction=kv_fraction, quant=quant)
            except ConfigError:
                continue
            if p.fits:
                recommended["tp"] = t
                break
    return Plan(device.sku if device else "cpu", memory, tp, pp, dtype, weights, kv_token, activations, logits,
                reserve, kv_fraction, kv_tokens, per_seq, max_batch_size, fits, full, recommended,
                quant.algo if quant is not None else None, kv_cache)


def dims_from_config(cfg: dict) -> Dims:
    """Dims from a Hugging Face config.json or a TensorRT-LLM checkpoint/engine config.json."""
    if "pretrained_config" in cfg:
        cfg = cfg["pretrained_config"]
    if "architecture" in cfg:  # TensorRT-LLM checkpoint
        from trtbuild.runtime.checkpoint import ModelConfig

        return ModelConfig.from_dict(cfg).dims
    from trtbuild.convert import family_for

    return family_for(cfg).dims(cfg)


def with_medusa(dims: Dims, heads: int, layers: int = 1) -> Dims:
    return replace(dims, medusa_heads=heads, medusa_layers=layers if heads else 0)


def model_positions(cfg: dict) -> int:
    """The longest sequence a model takes (max_position_embeddings, scaled by a linear/dynamic RoPE
    scaling), from a HF config.json or a TensorRT-LLM checkpoint/engine config.json; what `build`
    caps max_seq_len at."""
    from trtbuild.common.rope_scaling import check_scaling, hf_rope_scaling, max_sequence_length

    if "pretrained_config" in cfg:
        cfg = cfg["pretrained_config"]
    scaling = check_scaling(cfg.get("rotary_scaling")) if "architecture" in cfg else hf_rope_scaling(cfg)
    return max_sequence_length(int(cfg.get("max_position_embeddings") or 2048), scaling)
