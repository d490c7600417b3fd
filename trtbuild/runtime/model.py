"""The reference Llama-family forward pass over merged TensorRT-LLM weights, with a static KV cache.

Small on purpose: no nn.Module tree, one loop over layer weight records, fused qkv and fc/gate
matmuls, RoPE applied to q and k in one op, GQA by folding the query groups into the sequence
axis (no kv repeat). Semantics are TensorRT-LLM's: `fc` is the SiLU-activated branch, `gate` the
linear one; RMSNorm is computed in fp32 as transformers does.

Shapes: B batch, T new tokens this call, S cache slots, H hidden, nh/nkv heads, d head size.
The caller owns the token -> slot bookkeeping: `start` is the first cache slot written by this
call, `mask[b, 0, t, s]` says whether new token t of row b may attend to slot s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trtbuild.errors import ConfigError
from trtbuild.runtime.checkpoint import LayerWeights, ModelConfig, Weights, load_weights, read_config
from trtbuild.runtime.rope import cos_sin_table


@dataclass
class KVCache:
    """Per-layer key and value slots: k, v each [L, B, nkv, S, d]."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, w.shape, w, eps)
    return F.rms_norm(x.float(), w.shape, None, eps).to(x.dtype) * w


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    return device


class Model:
    """A loaded checkpoint ready to run: `forward` over new tokens with a KV cache."""

    def __init__(self, cfg: ModelConfig, weights: Weights, dtype: torch.dtype, device: str) -> None:
        self.cfg, self.w, self.dtype, self.device = cfg, weights, dtype, device
        d = cfg.dims
        self.nh, self.nkv, self.hd = d.num_heads, d.num_kv_heads, d.head_size
        self._rope_len, self._rope_key = 0, 0
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def load(cls, ckpt_dir: Path, dtype: str | None = None, device: str | None = None) -> Model:
        """Load `ckpt_dir`; dtype defaults to float32 on CPU and the checkpoint's dtype on CUDA."""
        cfg = read_config(Path(ckpt_dir))
        device = resolve_device(device)
        name = dtype or ("float32" if device == "cpu" else cfg.dtype)
        if name not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"unsupported runtime dtype {name!r}")
        tdtype = getattr(torch, name)
        return cls(cfg, load_weights(Path(ckpt_dir), cfg, tdtype, device), tdtype, device)

    def new_cache(self, batch: int, slots: int) -> KVCache:
        shape = (len(self.w.layers), batch, self.nkv, slots, self.hd)
        return KVCache(torch.zeros(shape, dtype=self.dtype, device=self.device),
                       torch.zeros(shape, dtype=self.dtype, device=self.device))

    def rope(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables [>= seq_len, d] for a forward pass reaching `seq_len` positions.

        Static scalings grow one cached table. Dynamic NTK depends on the length itself (as in
        transformers: recomputed for every longer pass, reset for a short one), so a pass beyond
        max_position_embeddings gets a table computed for exactly its length.
        """
        c = self.cfg
        kind = (c.rotary_scaling or {}).get("rope_type", "default")
        key = seq_len if kind == "dynamic" and seq_len > c.max_position_embeddings else 0
        if self._rope is None or key != self._rope_key or seq_len > self._rope_len:
            n = seq_len if key else max(seq_len, 2 * self._rope_len if self._rope_key == 0 else 0, 256)
            self._rope = cos_sin_table(self.hd, c.rotary_base, c.rotary_scaling, c.max_position_embeddings,
                                       key or seq_len, n, self.dtype, self.device)
            self._rope_len, self._rope_key = n, key
        return self._rope

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int,
                mask: torch.Tensor, logits_for: torch.Tensor | None = None) -> torch.Tensor:
        """tokens, positions: [B, T]; mask: [B, 1, T, start + T] bool.

        Returns logits [B, T, V] in fp32, or [B, V] at the per-row token index `logits_for` [B].
        """
        B, T = tokens.shape
        cos, sin = self.rope(int(positions.max()) + 1)
        cos, sin = cos[positions].unsqueeze(2), sin[positions].unsqueeze(2)  # [B, T, 1, d]
        x = F.embedding(tokens, self.w.embedding)  # [B, T, H]
        for i, lw in enumerate(self.w.layers):
            x = self._layer(i, lw, x, cos, sin, cache, start, mask)
        if logits_for is not None:
            x = x[torch.arange(B, device=x.device), logits_for]  # [B, H]
        x = rms_norm(x, self.w.final_norm, self.cfg.norm_epsilon)
        return F.linear(x, self.w.lm_head).float()

    def _layer(self, i: int, lw: LayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               cache: KVCache, start: int, mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        nh, nkv, hd = self.nh, self.nkv, self.hd
        qkv = F.linear(rms_norm(x, lw.attn_norm, self.cfg.norm_epsilon), lw.qkv, lw.qkv_bias)
        qk = qkv[..., : (nh + nkv) * hd].view(B, T, nh + nkv, hd)
        half = hd // 2
        rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
        qk = qk * cos + rotated * sin  # [B, T, nh + nkv, d]
        end = start + T
        cache.k[i, :, :, start:end] = qk[:, :, nh:].transpose(1, 2)
        cache.v[i, :, :, start:end] = qkv[..., (nh + nkv) * hd:].view(B, T, nkv, hd).transpose(1, 2)
        g = nh // nkv
        # fold the g query heads that share a kv head into the sequence axis: [B, nkv, g*T, d]
        q = qk[:, :, :nh].reshape(B, T, nkv, g, hd).permute(0, 2, 3, 1, 4).reshape(B, nkv, g * T, hd)
        m = mask if g == 1 else mask.unsqueeze(2).expand(B, 1, g, T, end).reshape(B, 1, g * T, end)
        o = F.scaled_dot_product_attention(q, cache.k[i, :, :, :end], cache.v[i, :, :, :end], attn_mask=m)
        o = o.view(B, nkv, g, T, hd).permute(0, 3, 1, 2, 4).reshape(B, T, nh * hd)
        x = x + F.linear(o, lw.dense)
        fc, gate = F.linear(rms_norm(x, lw.mlp_norm, self.cfg.norm_epsilon), lw.fc_gate).chunk(2, dim=-1)
        return x + F.linear(F.silu(fc) * gate, lw.proj)
