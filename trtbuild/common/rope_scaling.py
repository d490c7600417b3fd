"""The `rotary_scaling` entry of a TensorRT-LLM checkpoint config: its kinds and required fields.

Shared by the converter (which validates what it writes) and the runtime (which validates what it
reads), so a scaling the runtime cannot apply is refused at conversion time with a clear message.
"""

from __future__ import annotations

from trtbuild.common.errors import ConfigError

SCALING_TYPES = ("default", "linear", "dynamic", "llama3")


def scaling_kind(scaling: dict | None) -> str:
    """The scaling type of a `rotary_scaling` dict (`rope_type`, or the older `type`)."""
    if not scaling:
        return "default"
    return str(scaling.get("rope_type") or scaling.get("type") or "default")


def check_scaling(scaling: object) -> dict | None:
    """Validate a `rotary_scaling` value; return it (None for plain RoPE) or raise ConfigError."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ConfigError(f"rope scaling must be a JSON object or null, got {scaling!r}")
    kind = scaling_kind(scaling)
    if kind not in SCALING_TYPES:
        raise ConfigError(f"unsupported rope scaling type {kind!r} (supported: {', '.join(SCALING_TYPES)})")
    if kind == "default":
        return scaling
    need = ("factor",) + (("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                          if kind == "llama3" else ())
    for key in need:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{kind} rope scaling needs a positive number {key!r}, got {value!r}")
    if kind == "llama3" and scaling["low_freq_factor"] >= scaling["high_freq_factor"]:
        raise ConfigError("llama3 rope scaling needs low_freq_factor < high_freq_factor")
    return scaling


def hf_rope_scaling(hf_config: dict) -> dict | None:
    """The RoPE scaling of a HF config.json, validated, or None for plain RoPE.

    Both forms: transformers >= 5 writes one `rope_parameters` dict (`rope_type`, `rope_theta` and the
    scaling fields; `rope_type` "default" when there is no scaling), older versions `rope_scaling`
    next to `rope_theta`. `rope_parameters` wins where both are present, as in the converter."""
    params = hf_config.get("rope_parameters")
    if isinstance(params, dict):
        scaling: object = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        scaling = hf_config.get("rope_scaling")
    scaling = check_scaling(scaling)
    if scaling is None or scaling_kind(scaling) == "default":
        return None
    return scaling


def max_sequence_length(max_positions: int, scaling: dict | None) -> int:
    """Longest sequence the runtime accepts: max_position_embeddings, times the factor of a
    linear or dynamic scaling (TensorRT-LLM's default max_seq_len, and what the scaling is for).

    TensorRT-LLM scales by `factor` for every type but su/longrope/llama3 and warns above
    max_position_embeddings * factor: NVIDIA/TensorRT-LLM@008b2b8d23af95e4e19fa6f354f9c5f6349b2bfc:
    tensorrt_llm/builder.py:874-883, 914 (of those types trtbuild supports linear, dynamic, llama3)."""
    if scaling_kind(scaling) in ("linear", "dynamic"):
        return int(max_positions * float(scaling["factor"]))
    return max_positions
