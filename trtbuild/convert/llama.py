"""Llama family (LlamaForCausalLM, MistralForCausalLM): HF names -> TensorRT-LLM names, config.json.

The gate/up trap: TensorRT-LLM's GatedMLP computes `proj(act(fc(x)) * gate(x))`, so HF
`gate_proj` (the activated branch) becomes `mlp.fc` and HF `up_proj` becomes `mlp.gate`.
"""

from __future__ import annotations

from trtbuild.convert.hf import hf_field
from trtbuild.common.layout import Dims, Mapping
from trtbuild.convert.rules import Family, Rule
from trtbuild.common.errors import ConfigError
from trtbuild.common.rope_scaling import check_scaling, scaling_kind

L = "model.layers.{}."
T = "transformer.layers.{}."

LLAMA_RULES: tuple[Rule, ...] = (
    Rule("transformer.vocab_embedding.weight", ("model.embed_tokens.weight",), "replicate"),
    Rule(T + "input_layernorm.weight", (L + "input_layernorm.weight",), "replicate"),
    Rule(T + "attention.qkv.weight",
         (L + "self_attn.q_proj.weight", L + "self_attn.k_proj.weight", L + "self_attn.v_proj.weight"), "qkv"),
    Rule(T + "attention.dense.weight", (L + "self_attn.o_proj.weight",), "row"),
    Rule(T + "post_layernorm.weight", (L + "post_attention_layernorm.weight",), "replicate"),
    Rule(T + "mlp.fc.weight", (L + "mlp.gate_proj.weight",), "column"),
    Rule(T + "mlp.gate.weight", (L + "mlp.up_proj.weight",), "column"),
    Rule(T + "mlp.proj.weight", (L + "mlp.down_proj.weight",), "row"),
    Rule("transformer.ln_f.weight", ("model.norm.weight",), "replicate"),
    Rule("lm_head.weight", ("lm_head.weight",), "vocab"),
)

# Buffers some HF checkpoints carry; recomputed from rotary_base, never converted.
DROPPED: tuple[str, ...] = (L + "self_attn.rotary_emb.inv_freq",)

def hf_dims(hf: dict, qkv_bias: bool = False) -> Dims:
    """Model dimensions from a HF config.json, with HF's defaults for optional fields."""
    H, nh = hf_field(hf, "hidden_size", int), hf_field(hf, "num_attention_heads", int)
    if H < 1 or nh < 1:
        raise ConfigError("config.json has a non-positive hidden_size or num_attention_heads")
    dims = Dims(
        hidden_size=H,
        num_layers=hf_field(hf, "num_hidden_layers", int),
        num_heads=nh,
        num_kv_heads=hf_field(hf, "num_key_value_heads", int, nh),
        head_size=hf_field(hf, "head_dim", int, H // nh),
        intermediate_size=hf_field(hf, "intermediate_size", int),
        vocab_size=hf_field(hf, "vocab_size", int),
        qkv_bias=qkv_bias,
    )
    if min(dims.num_layers, dims.num_kv_heads, dims.head_size, dims.intermediate_size, dims.vocab_size) < 1:
        raise ConfigError("config.json has a non-positive model dimension")
    return dims


def rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """(rotary_base, rotary_scaling) from either HF config style.

    transformers < 5 writes `rope_theta` + `rope_scaling`; transformers >= 5 writes one
    `rope_parameters` dict holding `rope_theta` and the scaling fields. `rotary_scaling` is the
    full scaling dict (every field kept; `type` and `rope_type` both set, as TensorRT-LLM reads
    `type` first), or None for plain RoPE.
    """
    params = hf.get("rope_parameters")
    if isinstance(params, dict):
        scaling: object = {k: v for k, v in params.items() if k != "rope_theta"}
        theta = hf_field(params, "rope_theta", float, hf_field(hf, "rope_theta", float, 10000.0))
    else:
        scaling = hf.get("rope_scaling")
        theta = hf_field(hf, "rope_theta", float, 10000.0)
    scaling = check_scaling(scaling)
    if scaling is None or scaling_kind(scaling) == "default":
        return theta, None
    kind = scaling_kind(scaling)
    return theta, {**scaling, "rope_type": kind, "type": kind}


def check_common(hf: dict) -> None:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"unsupported hidden_act {act!r}: the Llama family uses 'silu'")
    if hf.get("mlp_bias"):
        raise ConfigError("mlp_bias=true is not supported")


def base_config(hf: dict, dims: Dims, dtype: str, mapping: Mapping, architecture: str) -> dict:
    """The config.json fields shared by the Llama family, as TensorRT-LLM's LLaMAConfig writes them."""
    theta, scaling = rope_from_hf(hf)
    return {
        "architecture": architecture,
        "dtype": dtype,
        "logits_dtype": "float32",
        "vocab_size": dims.vocab_size,
        "hidden_size": dims.hidden_size,
        "num_hidden_layers": dims.num_layers,
        "num_attention_heads": dims.num_heads,
        "num_key_value_heads": dims.num_kv_heads,
        "head_size": dims.head_size,
        "rotary_embedding_dim": dims.head_size,
        "intermediate_size": dims.intermediate_size,
        "hidden_act": "silu",
        "norm_epsilon": hf_field(hf, "rms_norm_eps", float, 1e-6),
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": theta,
        "rotary_scaling": scaling,
        "max_position_embeddings": hf_field(hf, "max_position_embeddings", int, 2048),
        "mapping": mapping.to_dict(),
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "qk_layernorm": False,
        "runtime_defaults": None,
        "mlp_bias": False,
        "attn_bias": dims.qkv_bias,
        "residual_mlp": False,
        "moe": {"num_experts": 0, "shared_expert_intermediate_size": 0, "top_k": 0,
                "normalization_mode": None, "sparse_mixer_epsilon": 0.01, "tp_mode": 0},
        "fc_after_embed": False,
        "use_input_layernorm_in_first_layer": True,
        "use_last_layernorm": True,
        "layer_idx_offset": 0,
    }


def llama_dims(hf: dict) -> Dims:
    check_common(hf)
    if hf.get("attention_bias"):
        raise ConfigError("LlamaForCausalLM with attention_bias=true is not supported")
    return hf_dims(hf)


def llama_config(hf: dict, dims: Dims, dtype: str, mapping: Mapping) -> dict:
    cfg = base_config(hf, dims, dtype, mapping, "LlamaForCausalLM")
    cfg["model_type"] = "llama"
    return cfg


def mistral_config(hf: dict, dims: Dims, dtype: str, mapping: Mapping) -> dict:
    cfg = base_config(hf, dims, dtype, mapping, "MistralForCausalLM")
    cfg["model_type"] = "mistral"
    # TensorRT-LLM applies the window at build/run time (max_attention_window_size); the reference
    # runtime reads it from here so Mistral attends exactly as transformers does.
    cfg["sliding_window"] = hf_field(hf, "sliding_window", int, None)
    return cfg


LLAMA = Family("LlamaForCausalLM", LLAMA_RULES, DROPPED, llama_config, llama_dims)
MISTRAL = Family("MistralForCausalLM", LLAMA_RULES, DROPPED, mistral_config, llama_dims)
