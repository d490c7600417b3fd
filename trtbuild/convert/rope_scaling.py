"""The `rotary_scaling` entry of a TensorRT-LLM checkpoint config: its kinds and required fields.

Shared by the converter (which validates what it writes) and the runtime (which validates what it
reads), so a scaling the runtime cannot apply is refused at conversion time with a clear message.
"""

from __future__ import annotations

from trtbuild.errors import ConfigError

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


def max_sequence_length(max_positions: int, scaling: dict | None) -> int:
    """Longest sequence the runtime accepts: max_position_embeddings, times the factor of a
    linear or dynamic scaling (TensorRT-LLM's default max_seq_len, and what the scaling is for)."""
    if scaling_kind(scaling) in ("linear", "dynamic"):
        return int(max_positions * float(scaling["factor"]))
    return max_positions
