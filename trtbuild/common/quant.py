"""Quantized TensorRT-LLM checkpoints: the recipes, config.json's `quantization` block, the layout.

Pure (no torch at import). A quantized checkpoint is what NVIDIA ModelOpt 0.37's
`export_tensorrt_llm_checkpoint` writes; `quant_rank_layout` names every tensor of one rank file
with its dtype and shape, as ModelOpt writes it (checked against its exports in
tests/test_quantize.py), so the driver can account for an export strictly and the reference
runtime can load one. Per quantized linear (`{module}.` prefix; O out, I in features of the rank's
shard, g the AWQ group size):

- FP8: `weight` float8_e4m3fn [O, I], `weights_scaling_factor` f32 [1], `activation_scaling_factor` f32 [1]
- W8A8_SQ_PER_CHANNEL (int8_sq): `weight` int8 [O, I], `weights_scaling_factor` f32 [O],
  `activation_scaling_factor` f32 [1], `prequant_scaling_factor` dtype [I]
- W4A16_AWQ (int4_awq): `weight` int8 [O/2, I] (two int4 per byte along O),
  `weights_scaling_factor` f32 [O, I/g], `prequant_scaling_factor` dtype [I]
- W4A8_AWQ: as W4A16_AWQ plus `weights_scaling_factor_2` f32 [1] and `activation_scaling_factor` f32 [1]
- FP8 KV cache: `attention.{kv,k,v}_cache_scaling_factor` f32 [1] per layer.

Biases and norms stay in the checkpoint dtype. Unlike trtbuild's unquantized checkpoints, ModelOpt
splits the embedding across tp ranks (use_parallel_embedding, embedding_sharding_dim 0:
nvidia-modelopt==0.37.0:modelopt/torch/export/postprocess.py:95-98, tensorrt_llm_utils.py:159).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from trtbuild.common.errors import ConfigError
from trtbuild.common.layout import Dims, Mapping, pad_vocab_size, rank_layout


@dataclass(frozen=True)
class Recipe:
    name: str  # trtbuild's --quantize value
    quant_algo: str  # config.json quantization.quant_algo (TensorRT-LLM's QuantAlgo)
    weight_bits: int  # 8 or 4
    activations: str | None  # "fp8", "int8" or None (weight-only)
    fp8_hardware: bool  # needs compute capability >= 8.9
    grouped: bool  # AWQ: per-group scales along the input features


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("fp8", "FP8", 8, "fp8", True, False),
    Recipe("int4_awq", "W4A16_AWQ", 4, None, False, True),
    Recipe("int8_sq", "W8A8_SQ_PER_CHANNEL", 8, "int8", False, False),
    Recipe("w4a8_awq", "W4A8_AWQ", 4, "fp8", True, True),
)}
BY_ALGO = {r.quant_algo: r for r in RECIPES.values()}
KV_CACHE = ("fp8",)
DEFAULT_GROUP_SIZE = 128  # ModelOpt's INT4_AWQ_CFG block size (modelopt/torch/quantization/config.py:230)
AWQ_VOCAB_MULTIPLE = 64  # ModelOpt pads an AWQ export's vocabulary to this (model_config_export.py:375-384)


@dataclass(frozen=True)
class QuantConfig:
    """config.json's `quantization` block, parsed. algo None: unquantized weights."""

    algo: str | None = None
    kv_cache: str | None = None  # "FP8" or None
    group_size: int = DEFAULT_GROUP_SIZE
    exclude_modules: tuple[str, ...] = ()

    @property
    def recipe(self) -> Recipe | None:
        return BY_ALGO.get(self.algo) if self.algo else None

    @property
    def enabled(self) -> bool:
        return self.algo is not None or self.kv_cache is not None

    @classmethod
    def from_dict(cls, block: dict | None) -> QuantConfig:
        block = block or {}
        if not isinstance(block, dict):
            raise ConfigError("config.json quantization must be an object")
        algo, kv = block.get("quant_algo"), block.get("kv_cache_quant_algo")
        if algo is not None and algo not in BY_ALGO:
            raise ConfigError(f"quant_algo {algo!r} is not supported (supported: {', '.join(BY_ALGO)})")
        if kv is not None and kv != "FP8":
            raise ConfigError(f"kv_cache_quant_algo {kv!r} is not supported (supported: FP8)")
        if algo and BY_ALGO[algo].grouped and block.get("has_zero_point"):
            raise ConfigError("AWQ with zero points (has_zero_point) is not supported")
        group = block.get("group_size", DEFAULT_GROUP_SIZE)
        if not isinstance(group, int) or isinstance(group, bool) or group < 1:
            raise ConfigError(f"quantization group_size must be a positive integer, got {group!r}")
        excl = block.get("exclude_modules") or []
        if not isinstance(excl, list) or not all(isinstance(e, str) for e in excl):
            raise ConfigError("quantization exclude_modules must be a list of strings")
        # a set to ModelOpt (its export unions the ranks' lists: modelopt/torch/export/model_config_export.py:528)
        return cls(algo, kv, group, tuple(sorted(excl)))

    def quantized(self, module: str) -> bool:
        """Whether linear `module` (e.g. `transformer.layers.0.mlp.fc`, `lm_head`) is quantized: not
        matched by exclude_modules (fnmatch patterns, as TensorRT-LLM's QuantConfig reads them)."""
        return self.algo is not None and not any(fnmatch.fnmatchcase(module, p) for p in self.exclude_modules)


def linear_modules(names) -> list[str]:
    """The linear modules among a rank's unquantized tensor names (each `{module}.weight`, 2-D)."""
    return [n[: -len(".weight")] for n, shape in names.items() if n.endswith(".weight") and len(shape) == 2
            and not n.startswith("transformer.vocab_embedding")]


def quant_rank_layout(dims: Dims, mapping: Mapping, rank: int, q: QuantConfig,
                      dtype: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (torch dtype name, shape)} of every tensor in `rank{rank}.safetensors` of a quantized
    checkpoint (see the module docstring). `dims.vocab_size` is config.json's (already padded by
    ModelOpt for AWQ)."""
    base = rank_layout(dims, mapping, rank)
    t = mapping.tp_size
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    linears = set(linear_modules(base))
    r = q.recipe
    for name, shape in base.items():
        if name == "transformer.vocab_embedding.weight":
            out[name] = (dtype, (pad_vocab_size(dims.vocab_size, t) // t, dims.hidden_size))
            continue
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module not in linears or not q.quantized(module):
            out[name] = (dtype, shape)
            if q.kv_cache and name.endswith("attention.qkv.weight"):
                pre = name[: -len("qkv.weight")]
                for k in ("kv", "k", "v"):
                    out[f"{pre}{k}_cache_scaling_factor"] = ("float32", (1,))
            continue
        O, I = shape
        if r.grouped:
            if O % 2 or I % q.group_size:
                raise ConfigError(f"{module}: shape {O}x{I} does not fit int4 packing with group size {q.group_size}")
            out[name] = ("int8", (O // 2, I))
            out[module + ".weights_scaling_factor"] = ("float32", (O, I // q.group_size))
            out[module + ".prequant_scaling_factor"] = (dtype, (I,))
            if r.activations == "fp8":
                out[module + ".weights_scaling_factor_2"] = ("float32", (1,))
                out[module + ".activation_scaling_factor"] = ("float32", (1,))
        elif r.activations == "fp8":
            out[name] = ("float8_e4m3fn", (O, I))
            out[module + ".weights_scaling_factor"] = ("float32", (1,))
            out[module + ".activation_scaling_factor"] = ("float32", (1,))
        else:  # int8 SmoothQuant, per output channel
            out[name] = ("int8", (O, I))
            out[module + ".weights_scaling_factor"] = ("float32", (O,))
            out[module + ".activation_scaling_factor"] = ("float32", (1,))
            out[module + ".prequant_scaling_factor"] = (dtype, (I,))
        if q.kv_cache and module.endswith("attention.qkv"):
            pre = module[: -len("qkv")]
            for k in ("kv", "k", "v"):
                out[f"{pre}{k}_cache_scaling_factor"] = ("float32", (1,))
    return dict(sorted(out.items()))
