"""Rotary position embeddings (GPT-NeoX rotate-half layout) with linear, dynamic-NTK and llama3 scaling.

The frequencies follow transformers' `ROPE_INIT_FUNCTIONS`, so the runtime matches HF models:
- linear: inv_freq / factor;
- dynamic (NTK): base scaled by ((factor * L / L0) - (factor - 1)) ** (d / (d - 2)) once the
  sequence length L exceeds L0 = max_position_embeddings (Model.rope rebuilds the table per
  length, as transformers does; keys already cached keep the frequencies they got);
- llama3: wavelength-dependent blend of inv_freq and inv_freq / factor.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from trtbuild.common.rope_scaling import scaling_kind
from trtbuild.common.errors import ConfigError

if TYPE_CHECKING:
    import torch


def inv_freq(dim: int, base: float, scaling: dict | None, max_positions: int, seq_len: int) -> torch.Tensor:
    """[dim / 2] fp32 inverse frequencies for a forward pass reaching `seq_len` positions."""
    import torch

    kind = scaling_kind(scaling)
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    if kind == "dynamic":
        factor = float(scaling["factor"])
        if seq_len > max_positions:  # transformers scales against max_position_embeddings
            base = base * ((factor * seq_len / max_positions) - (factor - 1)) ** (dim / (dim - 2))
    freq = 1.0 / (base ** exponent)
    if kind in ("default", "dynamic"):
        return freq
    if kind == "linear":
        return freq / float(scaling["factor"])
    if kind == "llama3":
        return _llama3(freq, scaling)
    raise ConfigError(f"unsupported rope scaling type {kind!r}")


def _llama3(freq: torch.Tensor, s: dict) -> torch.Tensor:
    import torch

    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def cos_sin_table(dim: int, base: float, scaling: dict | None, max_positions: int, seq_len: int,
                  rows: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [rows, dim], for positions 0..rows-1 of a pass reaching `seq_len` positions."""
    import torch

    f = inv_freq(dim, base, scaling, max_positions, seq_len)
    angles = torch.outer(torch.arange(rows, dtype=torch.float32), f)  # [rows, d/2]
    emb = torch.cat([angles, angles], dim=-1)  # [S, d]
    return emb.cos().to(device=device, dtype=dtype), emb.sin().to(device=device, dtype=dtype)
