"""The reference Llama-family forward pass over merged TensorRT-LLM weights, with a static KV cache.

Small on purpose: no nn.Module tree, one loop over layer records, fused qkv and fc/gate matmuls,
RoPE applied to q and k together, GQA by folding the query groups into the sequence axis (no kv
repeat). Semantics are TensorRT-LLM's: `fc` is the SiLU-activated branch, `gate` the linear one.

Decoding one token is a chain of matrix-vector products bound by memory bandwidth, so on CPU the
float32 and bfloat16 weights go through the runtime's own kernel where it builds (x86-64 with
AVX-512: kernels.KernelLinear, row-invariant); otherwise they are prepacked once for oneDNN
(`Linear`), which streams them about twice as fast as `F.linear`'s default kernel on these
machines; elsewhere (CUDA, or a CPU/dtype oneDNN cannot pack) `F.linear` is used.

Quantized checkpoints (ModelOpt's export) run on dequantized weights; an activation-quantized
linear is a `quant.QuantLinear` (input fake-quantized first, same interface), and with an FP8 KV
cache k and v are rounded to its fp8 grid as they are written (runtime/quant.py).

Shapes: B batch, T new tokens this call, S cache slots, H hidden, nh/nkv heads, d head size.
The caller owns the token -> slot bookkeeping: `start` is the first cache slot written by this
call, `mask[b, 0, t, s]` says whether new token t of row b may attend to slot s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from trtbuild.common.rope_scaling import scaling_kind
from trtbuild.common.errors import ConfigError
from trtbuild.runtime import kernels
from trtbuild.runtime.checkpoint import ModelConfig, Weights, load_weights, read_config
from trtbuild.runtime.kernels import KernelLinear
from trtbuild.runtime.quant import ConcatLinear, Int4Weight, Int8Weight, QuantLinear, QuantWeight, fake_fp8
from trtbuild.runtime.rope import cos_sin_table


@dataclass
class KVCache:
    """Per-layer key and value slots: k, v each [L, B, nkv, S, d]; `layers[i]` = (k[i], v[i])."""

    k: torch.Tensor
    v: torch.Tensor

    def __post_init__(self) -> None:
        self.layers = list(zip(self.k.unbind(0), self.v.unbind(0)))



def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, w.shape, w, eps)


def normed_linear(lin, x: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """lin(rms_norm(x, g, eps)), the norm inside the kernel's call when lin is a KernelLinear."""
    return lin.normed(x, g, eps) if isinstance(lin, KernelLinear) else lin(rms_norm(x, g, eps))


def swiglu_add_to(lin, residual: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """residual + lin(silu(fc) * gate), fc, gate = fg.chunk(2, -1) (fused into a KernelLinear's call)."""
    if isinstance(lin, KernelLinear):
        return lin.swiglu_add_to(residual, fg)
    fc, gate = fg.chunk(2, dim=-1)
    return lin.add_to(residual, F.silu(fc) * gate)


_PACKABLE: dict[torch.dtype, bool] = {}


def can_pack(dtype: torch.dtype, device: str) -> bool:
    """Whether oneDNN can prepack `dtype` linear weights here (probed once per dtype)."""
    if device != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype not in _PACKABLE:
        try:
            w, x = torch.randn(8, 16, dtype=dtype), torch.randn(2, 16, dtype=dtype)
            y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 1),
                                                   None, "none", [], "")
            _PACKABLE[dtype] = bool(torch.allclose(y.float(), F.linear(x, w).float(), atol=1e-2, rtol=1e-2))
        except (RuntimeError, AttributeError):  # e.g. fp16 needs avx512_fp16 / avx_ne_convert
            _PACKABLE[dtype] = False
    return _PACKABLE[dtype]


# oneDNN picks the packed layout for an expected batch of rows. Measured here (SmolLM2 layers,
# fp32): a layout for 16 rows runs 1 row ~15% faster than one packed for 1 row, and up to ~16 rows
# (a Medusa tree) at the same cost, while a 1-row layout costs ~25% more at 6 rows.
PACK_ROWS = 16


class Linear:
    """y = x @ w.T (+ b); w [out, in] is prepacked for oneDNN when `pack` (the raw copy is dropped)."""

    __slots__ = ("w", "b", "packed")

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, pack: bool) -> None:
        self.b = b
        self.packed = pack
        self.w = torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS) if pack else w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.w, self.b, "none", [], "")
        return F.linear(x, self.w, self.b)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + x @ w.T (+ b), the add fused into the matmul when packed."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.w, self.b, "add")
        return residual + F.linear(x, self.w, self.b)


class RowInvariant:
    """A linear whose every row's result does not depend on how many rows run with it: the rows go
    through in blocks of exactly PACK_ROWS (the last block zero-padded), so oneDNN runs one kernel
    shape for a decode step, a speculative step and a prefill alike. (Its packed GEMM otherwise
    picks its blocking by row count: at 1536 input features one row differs in the last bits
    between a 1-row and a 10-row call.) Decode pays nothing for the padding: the packed layout is
    made for PACK_ROWS rows; a prefill streams the weights once per block."""

    __slots__ = ("inner",)

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [M, I]
        M = flat.shape[0]
        if M % PACK_ROWS:
            flat = torch.cat([flat, flat.new_zeros(PACK_ROWS - M % PACK_ROWS, flat.shape[1])])
        out = torch.cat([self.inner(flat[i:i + PACK_ROWS]) for i in range(0, flat.shape[0], PACK_ROWS)])
        return out[:M].reshape(*x.shape[:-1], out.shape[-1])

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return residual + self(x)


def int4_kernel_available(device: str) -> bool:
    """Whether torch's packed int4 CPU kernel (weight-only int4 AWQ as stored, bf16 activations) is here."""
    return device == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class IntegerLinear:
    """A linear through one of torch's integer-weight CPU kernels (bf16 in, bf16 out): subclasses give
    `_mm(x [M, I] bf16) -> [M, O] bf16`; the result is read back in x's dtype, the bias added after."""

    __slots__ = ()
    b: torch.Tensor | None

    def _mm(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self._mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16)).to(x.dtype)  # [M, O]
        if self.b is not None:
            y = y + self.b
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return residual + self(x)


class Int4Linear(IntegerLinear):
    """y = x @ (ints * scale).T (+ b) through torch's packed int4 CPU kernel: the weight stays at half a
    byte per value (a weight-only int4 AWQ checkpoint's, exactly). The kernel takes bf16 inputs and
    gives bf16 outputs (accumulating in fp32), like TensorRT-LLM's W4A16 GEMM on fp16/bf16: so in a
    float32 model x is rounded to bf16 first and y read back. Its result for a row does not depend on
    how many rows run with it (tests/test_quant_runtime.py), so it needs no RowInvariant."""

    __slots__ = ("w", "sz", "group", "b")

    def __init__(self, w: Int4Weight, b: torch.Tensor | None) -> None:
        self.group = w.ints.shape[1] // w.scale.shape[1]
        # the kernel's nibbles are unsigned, dequantized as (q - 8) * scale + zero
        self.w = torch.ops.aten._convert_weight_to_int4pack_for_cpu((w.ints.to(torch.int32) + 8), 1)  # [O, I/2] u8
        scale = w.scale.t().to(torch.bfloat16)  # [I/g, O]
        self.sz = torch.stack([scale, torch.zeros_like(scale)], dim=-1).contiguous()  # [I/g, O, 2]
        self.b = b

    def _mm(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.w, self.group, self.sz)


def int8_kernel_available(device: str) -> bool:
    """Whether torch's int8 weight kernel (int8 SmoothQuant as stored, bf16 activations) is here."""
    return device == "cpu" and hasattr(torch, "_weight_int8pack_mm")


class Int8Linear(IntegerLinear):
    """y = x @ (ints * scale[:, None]).T (+ b) through torch's int8 weight kernel, for an int8
    SmoothQuant linear whose input is already on the integer grid (ActQuant "int8"): those integers
    are exact in bf16, the kernel sums their products in fp32 (exactly, below 2^24) and scales each
    output channel once, rounding to bf16 (an SQ engine's fp16/bf16 output). Exact sums make a row's
    result independent of how many rows run with it: no RowInvariant."""

    __slots__ = ("w", "scale", "b")

    def __init__(self, w: Int8Weight, b: torch.Tensor | None) -> None:
        self.w, self.scale, self.b = w.ints.contiguous(), w.scale.to(torch.bfloat16), b  # [O, I] int8, [O]

    def _mm(self, flat: torch.Tensor) -> torch.Tensor:  # flat: integers in [-128, 127]
        return torch._weight_int8pack_mm(flat, self.w, self.scale)


def row_invariant(lin):
    """`lin` made row-invariant: itself when every matmul in it is a KernelLinear, Int4Linear or
    Int8Linear (they are), else RowInvariant."""
    inner = [p.inner if isinstance(p, QuantLinear) else p
             for p in (lin.parts if isinstance(lin, ConcatLinear) else [lin])]
    return lin if all(isinstance(p, (KernelLinear, IntegerLinear)) for p in inner) else RowInvariant(lin)


# How a float weight runs: the runtime's kernel, oneDNN prepacked, or F.linear.
KERNEL, ONEDNN, PLAIN = "kernel", "onednn", "plain"


def require_kernel(dtype: torch.dtype, device: str) -> None:
    """ConfigError unless the runtime's CPU kernel can run `dtype` on `device` here."""
    if not kernels.usable(dtype, device):
        raise ConfigError(f"the runtime's CPU kernel cannot run {str(dtype).removeprefix('torch.')} on {device} "
                          f"here ({kernels.unavailable() or 'float32 and bfloat16 on cpu only'})")


def dense_linear(w: torch.Tensor, b: torch.Tensor | None, backend: str) -> KernelLinear | Linear:
    if backend == KERNEL:
        return KernelLinear(w, b)
    return Linear(w, b, backend == ONEDNN)


def make_linear(w: torch.Tensor | QuantWeight | tuple, b: torch.Tensor | None,
                backend: str) -> KernelLinear | Linear | IntegerLinear | QuantLinear | ConcatLinear:
    """The linear of a loaded weight (checkpoint.LayerWeights' field types)."""
    if isinstance(w, tuple):
        return ConcatLinear([make_linear(x, None, backend) for x in w])
    if isinstance(w, QuantWeight):
        if isinstance(w.weight, Int4Weight):
            inner = Int4Linear(w.weight, b)
        elif isinstance(w.weight, Int8Weight):
            inner = Int8Linear(w.weight, b)
        else:
            inner = dense_linear(w.weight, b, backend)
        return inner if w.act.kind is None and w.act.in_scale is None else QuantLinear(inner, w.act)
    return dense_linear(w, b, backend)


@dataclass(frozen=True)
class Layer:
    attn_norm: torch.Tensor  # [H]
    qkv: Linear | QuantLinear  # H -> (nh + 2 nkv) d
    dense: Linear | QuantLinear  # nh d -> H
    mlp_norm: torch.Tensor  # [H]
    fc_gate: Linear | QuantLinear | ConcatLinear  # H -> 2 I
    proj: Linear | QuantLinear  # I -> H
    kv_scale: float | None = None  # FP8 KV cache: k, v rounded to fp8 with this scale


def resolve_device(device: str | None) -> str:
    """'auto' -> cuda when available else cpu; 'cpu', 'cuda' and 'cuda:N' are checked."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


class Model:
    """A loaded checkpoint ready to run: `forward` over new tokens with a KV cache."""

    def __init__(self, cfg: ModelConfig, weights: Weights, dtype: torch.dtype, device: str,
                 pack: bool | None = None, kernel: bool | None = None) -> None:
        self.cfg, self.dtype, self.device = cfg, dtype, device
        if kernel:
            require_kernel(dtype, device)
        elif kernel is None:
            kernel = pack is None and kernels.usable(dtype, device)
        if kernel:
            self.backend = KERNEL
        else:
            self.backend = ONEDNN if (can_pack(dtype, device) if pack is None else pack) else PLAIN
        be = self.backend
        self.embedding, self.final_norm = weights.embedding, weights.final_norm
        self.lm_head = make_linear(weights.lm_head, None, be)
        self.layers = [Layer(lw.attn_norm, make_linear(lw.qkv, lw.qkv_bias, be), make_linear(lw.dense, None, be),
                             lw.mlp_norm, make_linear(lw.fc_gate, None, be), make_linear(lw.proj, None, be),
                             lw.kv_scale)
                       for lw in weights.layers]
        # Medusa heads: ResBlocks x + silu(W x + b), then an lm_head. Version-2 heads carry copies
        # of the base lm_head: those share one matmul with it (bandwidth is the cost on CPU).
        self.medusa_shared_lm_head = all(
            isinstance(m.lm_head, torch.Tensor) and isinstance(weights.lm_head, torch.Tensor)
            and torch.equal(m.lm_head, weights.lm_head) for m in weights.medusa)
        self.medusa = [([make_linear(w, b, be) for w, b in m.layers],
                        None if self.medusa_shared_lm_head else make_linear(m.lm_head, None, be))
                       for m in weights.medusa]
        # Heads only propose: their top-k need not be exact (verification decides), so on CPU the
        # shared lm_head runs for them in bf16 when a kernel takes it (half the bytes to stream).
        self._proposal_head = None
        if self.medusa and self.medusa_shared_lm_head and dtype == torch.float32 and isinstance(weights.lm_head, torch.Tensor):
            head = weights.lm_head.to(torch.bfloat16)
            if be == KERNEL:
                self._proposal_head = KernelLinear(head, None)
            elif can_pack(torch.bfloat16, device):
                self._proposal_head = Linear(head, None, True)
        d = cfg.dims
        self.nh, self.nkv, self.hd = d.num_heads, d.num_kv_heads, d.head_size
        # Quantized activations or KV round every value to a coarse grid, which turns the last-bit
        # differences between attention over 1 and over T query tokens (or over a padded cache) into
        # whole grid steps: a speculative step would then disagree with plain decoding. Attention in
        # fp64 keeps those differences below float32's last bit (and the linears are made
        # row-invariant: the kernel's are, oneDNN's go through RowInvariant).
        q = cfg.quant
        self.exact_attention = bool(q.kv_cache or (q.recipe is not None and q.recipe.activations))
        if self.exact_attention:  # and every linear of the base model row-invariant
            self.lm_head = row_invariant(self.lm_head)
            self.layers = [replace(lw, qkv=row_invariant(lw.qkv), dense=row_invariant(lw.dense),
                                   fc_gate=row_invariant(lw.fc_gate), proj=row_invariant(lw.proj))
                           for lw in self.layers]
        self._rope_len, self._rope_key = 0, 0
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def load(cls, ckpt_dir: Path, dtype: str | None = None, device: str | None = None,
             pack: bool | None = None, int4: bool | None = None, int8: bool | None = None,
             kernel: bool | None = None) -> Model:
        """Load `ckpt_dir`; dtype defaults to float32 on CPU and the checkpoint's dtype on CUDA.

        `kernel`: run float32/bfloat16 linears through the runtime's CPU kernel (kernels.py; default:
        wherever it builds, unless `pack` is given). `pack`: otherwise prepack weights for oneDNN
        (default: wherever that works, i.e. on CPU); False: plain F.linear.
        `int4`: run weight-only int4 AWQ linears packed (Int4Linear: bf16 in and out, as a W4A16
        engine computes) rather than dequantized in `dtype` (ModelOpt's fake-quant numerics, which
        the parity tests check); default: wherever the kernel is, i.e. on CPU. `int8` likewise for
        int8 SmoothQuant linears (Int8Linear).
        """
        cfg = read_config(Path(ckpt_dir))
        device = resolve_device(device)
        name = dtype or ("float32" if device == "cpu" else cfg.dtype)
        if name not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"unsupported runtime dtype {name!r}")
        tdtype = getattr(torch, name)
        int4 = int4_kernel_available(device) if int4 is None else int4
        if int4 and not int4_kernel_available(device):
            raise ConfigError(f"no packed int4 kernel for {device} in this torch")
        int8 = int8_kernel_available(device) if int8 is None else int8
        if int8 and not int8_kernel_available(device):
            raise ConfigError(f"no int8 weight kernel for {device} in this torch")
        if kernel:  # before the weights are read
            require_kernel(tdtype, device)
        return cls(cfg, load_weights(Path(ckpt_dir), cfg, tdtype, device, int4, int8), tdtype, device, pack, kernel)

    def new_cache(self, batch: int, slots: int) -> KVCache:
        shape = (len(self.layers), batch, self.nkv, slots, self.hd)
        return KVCache(torch.zeros(shape, dtype=self.dtype, device=self.device),
                       torch.zeros(shape, dtype=self.dtype, device=self.device))

    def rope(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin_signed) tables [>= seq_len, d] for a forward pass reaching `seq_len` positions.

        Static scalings grow one cached table. Dynamic NTK depends on the length itself (as in
        transformers: recomputed for every longer pass, reset for a short one), so a pass beyond
        max_position_embeddings gets a table computed for exactly its length.
        """
        c = self.cfg
        dynamic = scaling_kind(c.rotary_scaling) == "dynamic" and seq_len > c.max_position_embeddings
        key = seq_len if dynamic else 0  # 0: the one static table
        if self._rope is None or key != self._rope_key or seq_len > self._rope_len:
            if dynamic:
                rows = seq_len
            else:  # grow the static table geometrically
                rows = max(seq_len, 256, 2 * self._rope_len if self._rope_key == 0 else 0)
            cos, sin = cos_sin_table(self.hd, c.rotary_base, c.rotary_scaling, c.max_position_embeddings,
                                     seq_len, rows, self.dtype, self.device)
            half = self.hd // 2
            self._rope = cos, torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)  # sin_signed, see _layer
            self._rope_len, self._rope_key = rows, key
        return self._rope

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, slots: int | torch.Tensor,
                mask: torch.Tensor, logits_for: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] in fp32, or [B, V] at the per-row token index `logits_for` [B].

        See `hidden` for the arguments.
        """
        h = self.hidden(tokens, positions, cache, slots, mask)
        if logits_for is not None:
            h = h[torch.arange(h.shape[0], device=h.device), logits_for]  # [B, H]
        return self.logits(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states [..., H] -> fp32 logits [..., V]."""
        return self.lm_head(h).float()

    @torch.inference_mode()
    def medusa_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states [..., H] -> fp32 logits of every Medusa head [..., K, V] (proposals)."""
        xs = []
        for blocks, _ in self.medusa:
            x = h
            for lin in blocks:
                x = x + F.silu(lin(x))
            xs.append(x)
        if self._proposal_head is not None:
            return self._proposal_head(torch.stack(xs, dim=1).to(torch.bfloat16)).float()
        if self.medusa_shared_lm_head:
            return self.logits(torch.stack(xs, dim=1))
        return torch.stack([head(x).float() for (_, head), x in zip(self.medusa, xs)], dim=1)

    @torch.inference_mode()
    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, slots: int | torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [B, T, H] of new tokens, written to the cache as they go.

        tokens, positions: [B, T]. slots: the cache slot of each new token, either one int (token
        t of every row goes to slot `slots + t`) or a LongTensor [B, T]. mask: [B, 1, T, S] bool,
        query token t may attend to cache slot s < S (S covers every slot written so far).
        """
        B, T = tokens.shape
        S = mask.shape[-1]
        cos, sin = self.rope(int(positions.max()) + 1)
        cos, sin = cos[positions].unsqueeze(2), sin[positions].unsqueeze(2)  # [B, T, 1, d]
        x = F.embedding(tokens, self.embedding)  # [B, T, H]
        g = self.nh // self.nkv
        if g > 1 and T > 1:  # one mask row per folded query row (T = 1 broadcasts as is)
            mask = mask.unsqueeze(2).expand(B, 1, g, T, S).reshape(B, 1, g * T, S)
        if not isinstance(slots, int):
            rows = torch.arange(B, device=tokens.device)[:, None].expand(B, T)
            slots = (rows, slots)
        if not self.exact_attention:  # SDPA's own bool -> additive conversion, once rather than per layer
            mask = torch.zeros(mask.shape, dtype=self.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        for i, layer in enumerate(self.layers):
            x = self._layer(i, layer, x, cos, sin, cache, slots, mask)
        return rms_norm(x, self.final_norm, self.cfg.norm_epsilon)

    def _layer(self, i: int, lw: Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               cache: KVCache, slots: int | tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        nh, nkv, hd = self.nh, self.nkv, self.hd
        qkv = normed_linear(lw.qkv, x, lw.attn_norm, self.cfg.norm_epsilon)
        qk = qkv[..., : (nh + nkv) * hd].view(B, T, nh + nkv, hd)
        # rotate-half: x*cos + cat(-x2, x1)*sin == x*cos + roll(x, d/2)*sin_signed, sin_signed = cat(-s1, s2)
        qk = qk * cos + qk.roll(hd // 2, dims=-1) * sin  # [B, T, nh + nkv, d]
        k, v = qk[:, :, nh:], qkv[..., (nh + nkv) * hd:].view(B, T, nkv, hd)  # [B, T, nkv, d]
        if lw.kv_scale is not None:  # FP8 KV cache: what is stored is on the fp8 grid
            k, v = fake_fp8(k, lw.kv_scale), fake_fp8(v, lw.kv_scale)
        k_cache, v_cache = cache.layers[i]  # [B, nkv, S, d]
        if isinstance(slots, int):
            k_cache[:, :, slots:slots + T] = k.transpose(1, 2)
            v_cache[:, :, slots:slots + T] = v.transpose(1, 2)
        else:  # per-row slots: scatter through a [B, S, nkv, d] view
            k_cache.transpose(1, 2)[slots] = k
            v_cache.transpose(1, 2)[slots] = v
        g = nh // nkv
        # fold the g query heads that share a kv head into the sequence axis: [B, nkv, g*T, d]
        if T == 1:
            q = qk[:, 0, :nh].view(B, nkv, g, hd)
        else:
            q = qk[:, :, :nh].reshape(B, T, nkv, g, hd).permute(0, 2, 3, 1, 4).reshape(B, nkv, g * T, hd)
        S = mask.shape[-1]
        if self.exact_attention:  # see __init__: fp64, so the rounding below cannot tell the batch shapes apart
            o = F.scaled_dot_product_attention(q.double(), k_cache[:, :, :S].double(), v_cache[:, :, :S].double(),
                                               attn_mask=mask).to(q.dtype)
        else:
            o = F.scaled_dot_product_attention(q, k_cache[:, :, :S], v_cache[:, :, :S], attn_mask=mask)
        o = o.view(B, nkv, g, T, hd).permute(0, 3, 1, 2, 4).reshape(B, T, nh * hd)
        x = lw.dense.add_to(x, o)
        return swiglu_add_to(lw.proj, x, normed_linear(lw.fc_gate, x, lw.mlp_norm, self.cfg.norm_epsilon))
