"""Qwen2 family (Qwen2ForCausalLM): Llama names plus q/k/v biases; TensorRT-LLM's QWenConfig fields.

TensorRT-LLM keeps `architecture: "Qwen2ForCausalLM"` (MODEL_MAP sends it to QWenForCausalLM) and
adds `qwen_type: "qwen2"`. The fused qkv bias is split per rank exactly like the weight.
"""

from __future__ import annotations

from trtbuild.common.layout import Dims, Mapping
from trtbuild.convert.llama import DROPPED, LLAMA_RULES, L, T, base_config, check_common, hf_dims
from trtbuild.convert.rules import Family, Rule
from trtbuild.common.errors import ConfigError

QWEN2_RULES: tuple[Rule, ...] = LLAMA_RULES + (
    Rule(T + "attention.qkv.bias",
         (L + "self_attn.q_proj.bias", L + "self_attn.k_proj.bias", L + "self_attn.v_proj.bias"), "qkv"),
)


def qwen2_dims(hf: dict) -> Dims:
    check_common(hf)
    if hf.get("use_sliding_window"):
        raise ConfigError("Qwen2 with use_sliding_window=true is not supported")
    return hf_dims(hf, qkv_bias=True)


def qwen2_config(hf: dict, dims: Dims, dtype: str, mapping: Mapping) -> dict:
    cfg = base_config(hf, dims, dtype, mapping, "Qwen2ForCausalLM")
    cfg.update({
        "qwen_type": "qwen2",
        "model_type": "qwen2",
        "use_logn_attn": False,
        "seq_length": 8192,
        "moe_intermediate_size": 0,
        "moe_shared_expert_intermediate_size": 0,
        "disable_weight_only_quant_plugin": False,
    })
    cfg["moe"]["normalization_mode"] = 0
    return cfg


QWEN2 = Family("Qwen2ForCausalLM", QWEN2_RULES, DROPPED, qwen2_config, qwen2_dims)
