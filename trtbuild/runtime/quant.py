"""Quantized linears of the reference runtime: ModelOpt 0.37's TensorRT-LLM export, dequantized.

The runtime does not run low-precision kernels; it reproduces their numerics. Each rank's stored
weight is dequantized with that rank's own scales to fp32 (`read_shard`), shards are merged like
unquantized ones (`merge`), and `finish` turns a merged linear into what the model multiplies
with: a plain weight tensor when activations are not quantized (the AWQ pre-quant scale folded
into its columns), else a `QuantWeight`, whose activation transform `ActQuant` fake-quantizes
the input from the stored per-tensor activation scale. This module knows the formats of
common/quant.py's docstring and the fake-quant arithmetic; it knows nothing of checkpoint files,
the tp layout or the model.

Semantics, as ModelOpt's export writes and its fake-quant model computes them (M =
nvidia-modelopt==0.37.0:modelopt/torch/; every scale is amax / maxbound, M export/quant_utils.py:224,
maxbound 448 for fp8, 127 for int8, 7 for int4, M quantization/nn/modules/tensor_quantizer.py:188-194):

- FP8 weight: stored = (W / s).to(float8_e4m3fn) (M export/quant_utils.py:752); W = stored * s.
- INT8 SQ weight: stored = round(W / s[:, None]).clamp(-128, 127) (M export/quant_utils.py:755);
  W = stored * s[:, None], s per output channel.
- INT4 AWQ weight: stored = round(W / s_group).clamp(-8, 7), two per byte along the OUTPUT dim,
  row 2j in the low nibble and row 2j+1 in the high one (M export/quant_utils.py:680-721);
  W = int4 * s_group, s [O, I/g].
- W4A8 AWQ weight: the fake-quant weight is int4 block quantization followed by per-tensor FP8
  (M quantization/config.py:243-252, W4A8_AWQ_BETA_CFG); `weights_scaling_factor` is the int4
  quantizer's (M export/quant_utils.py:263) and `weights_scaling_factor_2` the FP8 one's (:308), the
  stored int4 is packed with the first alone (:765-766). So W = fp8(int4 * s_group / s2) * s2.
- Activations: x * prequant_scaling_factor first (M quantization/nn/modules/tensor_quantizer.py:901-902,
  applied even where the input quantizer is disabled: int4_awq), then fp8: x / s -> float8_e4m3fn
  -> * s (M quantization/tensor_quant.py:45-54; clamped to ±448 here, as TensorRT-LLM saturates:
  torch's cast saturates on some builds and gives NaN on others); int8: round-half-even(x / s)
  clamped to [-128, 127] (narrow_range False by default, M quantization/config.py:760-764;
  M quantization/tensor_quant.py:595,603) -> * s.
- FP8 KV cache: k after RoPE and v are fake-quantized where HF's attention receives them
  (M quantization/plugins/huggingface.py:64-66), here when written to the cache, with
  `kv_cache_scaling_factor`, the one TensorRT-LLM reads. ModelOpt exports it as max(amax / 448, 1)
  (M export/quant_utils.py:336-358) while its fake-quant model uses amax / 448 itself.

Folding, exact up to rounding, so that a token pays only the rounding itself: the activation
scale s moves into the weight (fq(x) @ W.T = q(x / s) @ (s W).T), the pre-quant scale p joins 1 / s
(one multiply per input, x * p / s), and that multiply moves further into what produces the input
where it is a per-channel scaling: an RMSNorm weight (`fold_into_norm`) or the rows of the gate
that multiplies into proj's input (`fold_into_gate`). A weight-only pre-quant scale goes into the
weight's columns. Only attention.dense keeps its multiply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from trtbuild.common.errors import CheckpointError

if TYPE_CHECKING:
    from trtbuild.common.quant import QuantConfig

FP8_MAX = 448.0  # float8_e4m3fn's largest finite value
# torch's packed int4 CPU kernel takes these group sizes and output features in multiples of 16
# (its own checks: "expect qGroupSize to be 32, 64, 128 or 256", "expect N to be dividable by 16")
INT4_KERNEL_GROUPS = (32, 64, 128, 256)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[O/2, I] int8 bytes -> [O, I] int8 in [-8, 7]; byte j holds rows 2j (low nibble), 2j+1 (high)."""
    p = packed.to(torch.int16)
    lo, hi = p & 0xF, (p >> 4) & 0xF
    rows = torch.stack([lo, hi], dim=1)  # [O/2, 2, I]
    return ((rows ^ 8) - 8).reshape(-1, packed.shape[1]).to(torch.int8)  # two's complement of a nibble


def fake_fp8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x rounded to the fp8 grid of `scale`: clamp(x / scale, ±448) -> e4m3 -> * scale, in x's dtype."""
    if scale == 1.0:
        return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype)
    return ((x / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale)


@dataclass(frozen=True)
class Shard:
    """One linear, dequantized (or as stored when unquantized), before `finish`: one rank's or merged."""

    weight: torch.Tensor  # [O, I]: fp32 when dequantized, else the stored dtype
    act: str | None = None  # activation quantization: "fp8", "int8" or None
    act_scale: torch.Tensor | None = None  # [1] fp32
    prequant: torch.Tensor | None = None  # [I] fp32
    group_scale: torch.Tensor | None = None  # [O, I/g] fp32: weight-only int4 AWQ (weight = ints * scale)
    channel_scale: torch.Tensor | None = None  # [O] fp32: int8 SmoothQuant (weight = ints * scale[:, None])


def read_shard(t: dict[str, torch.Tensor], module: str, q: QuantConfig) -> Shard:
    """One rank's linear `module` (e.g. `transformer.layers.0.mlp.fc`) from its tensors `t`, which
    hold exactly the layout of common.quant.quant_rank_layout (checked by the loader)."""
    w = t[module + ".weight"]
    r = q.recipe
    if r is None or not q.quantized(module):
        return Shard(w)
    s = t[module + ".weights_scaling_factor"].float()
    if r.grouped:  # int4 AWQ: [O, I/g] group scales
        ints = unpack_int4(w).float()
        W = ints * s.repeat_interleave(ints.shape[1] // s.shape[1], dim=1)
        if r.activations == "fp8":  # W4A8: then the per-tensor fp8 weight quantizer
            W = fake_fp8(W, float(t[module + ".weights_scaling_factor_2"]))
    elif w.dtype == torch.float8_e4m3fn:
        W = w.float() * s
    else:  # int8 SmoothQuant, per output channel
        W = w.float() * s[:, None]
    pre = t.get(module + ".prequant_scaling_factor")
    act = t.get(module + ".activation_scaling_factor")
    group = s if r.grouped and r.activations is None else None
    channel = s if w.dtype == torch.int8 and not r.grouped else None
    return Shard(W, r.activations, None if act is None else act.float(), None if pre is None else pre.float(),
                 group, channel)


def _same(shards: list[Shard], field: str, module: str) -> torch.Tensor | None:
    first = getattr(shards[0], field)
    for i, s in enumerate(shards[1:], 1):
        other = getattr(s, field)
        if (first is None) != (other is None) or (first is not None and not torch.equal(first, other)):
            raise CheckpointError(f"{module}: {field} differs between tp ranks 0 and {i}")
    return first


def merge(shards: list[Shard], weight: torch.Tensor, split_dim: int, module: str,
          group_scale: torch.Tensor | None = None, channel_scale: torch.Tensor | None = None) -> Shard:
    """The whole linear from its tp shards, `weight` (and `group_scale`, `channel_scale`) being their
    merged weights (and int4 group scales, int8 channel scales of a column-parallel linear, merged as
    the weights are). Activation scales are per tensor and the same on every rank; pre-quant scales
    (over the input features) too for a column-parallel linear (split_dim 0), concatenated for a
    row-parallel one (split_dim 1). A row-parallel int8 linear keeps one channel scale only where
    every rank has the same (else it runs dequantized)."""
    act_scale = _same(shards, "act_scale", module)
    if split_dim == 1 and shards[0].prequant is not None:
        pre = torch.cat([s.prequant for s in shards])
    else:
        pre = _same(shards, "prequant", module)
    if split_dim == 1 and shards[0].channel_scale is not None:
        first = shards[0].channel_scale
        channel_scale = first if all(torch.equal(first, s.channel_scale) for s in shards) else None
    return Shard(weight, shards[0].act, act_scale, pre, group_scale, channel_scale)


def _weight_only(s: Shard) -> Shard:
    return s if s.prequant is None else Shard(s.weight * s.prequant)  # (x * p) W.T = x (W p).T


def int4_kernel_fits(s: Shard) -> bool:
    """Whether a merged linear is weight-only int4 of a shape torch's packed int4 CPU kernel takes."""
    if s.group_scale is None:
        return False
    return s.weight.shape[1] // s.group_scale.shape[1] in INT4_KERNEL_GROUPS and s.weight.shape[0] % 16 == 0


def int8_kernel_fits(s: Shard) -> bool:
    """Whether a merged linear is int8 SmoothQuant of a shape torch's int8 weight kernel reads right:
    it reads past the row for input features not a multiple of 16 (measured: garbage or a crash at 24,
    72, 5)."""
    return s.channel_scale is not None and s.weight.shape[1] % 16 == 0


def fuse(a: Shard, b: Shard, int4: bool = False) -> Shard | tuple[Shard, Shard]:
    """Two linears of one input as one ([a; b] rows) when their input transforms are identical or
    fold away (weight-only, unless `int4` keeps the weights on their int4 grid for `Int4Weight`);
    else the pair (ModelOpt unifies fc/gate inputs only for FP8: M export/layer_utils.py:815-823;
    AWQ and SmoothQuant scale each linear's own)."""
    if a.act is None and b.act is None and not (int4 and int4_kernel_fits(a) and int4_kernel_fits(b)):
        a, b = _weight_only(a), _weight_only(b)
    same = all(x is None and y is None or x is not None and y is not None and torch.equal(x, y)
               for x, y in ((a.act_scale, b.act_scale), (a.prequant, b.prequant)))
    if not same:
        return a, b
    group = None if a.group_scale is None else torch.cat([a.group_scale, b.group_scale])
    channel = None if a.channel_scale is None or b.channel_scale is None else torch.cat([a.channel_scale, b.channel_scale])
    return Shard(torch.cat([a.weight, b.weight]), a.act, a.act_scale, a.prequant, group, channel)


@dataclass(frozen=True)
class ActQuant:
    """The input transform of an activation-quantized linear: x -> q(x * in_scale), on the integer or
    fp8 grid; the activation scale itself is folded into the weight. Kind None (an `Int4Weight`'s
    AWQ pre-quant scale, which cannot move into int4 columns): x -> x * in_scale."""

    kind: str | None  # "fp8", "int8" or None
    in_scale: torch.Tensor | None  # [I] prequant / s, or [1] 1 / s; None: folded into the input's producer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_scale is not None:
            x = x * self.in_scale
        if self.kind is None:
            return x
        if self.kind == "fp8":  # (the cast saturates on some builds, not on all: clamp)
            return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype)
        return x.round().clamp_(-128, 127)


@dataclass(frozen=True)
class Int4Weight:
    """A merged weight-only int4 AWQ linear kept on its grid: W = ints * scale (per group of g inputs),
    for torch's packed int4 CPU kernel (model.Int4Linear)."""

    ints: torch.Tensor  # [O, I] int8 in [-8, 7]
    scale: torch.Tensor  # [O, I/g] fp32

    @property
    def shape(self) -> torch.Size:
        return self.ints.shape

    def scale_rows(self, start: int, c: torch.Tensor) -> Int4Weight:
        """Output rows start: multiplied by c [O - start, 1] (or [1, 1]): through their group scales."""
        return Int4Weight(self.ints, torch.cat([self.scale[:start], self.scale[start:] * c]))


@dataclass(frozen=True)
class Int8Weight:
    """A merged int8 SmoothQuant linear kept on its grid, its activation scale folded into the
    channel scales: s_a * W = ints * scale[:, None], for torch's int8 weight kernel (model.Int8Linear)."""

    ints: torch.Tensor  # [O, I] int8
    scale: torch.Tensor  # [O] fp32

    @property
    def shape(self) -> torch.Size:
        return self.ints.shape

    def scale_rows(self, start: int, c: torch.Tensor) -> Int8Weight:
        """Output rows start: multiplied by c [O - start, 1] (or [1, 1]): through their channel scales."""
        return Int8Weight(self.ints, torch.cat([self.scale[:start], self.scale[start:] * c.reshape(-1)]))


@dataclass(frozen=True)
class QuantWeight:
    """A merged linear ready to run behind an input transform: an activation-quantized one (weight =
    s * dequantized W), or an `Int4Weight` with its pre-quant scale."""

    weight: torch.Tensor | Int4Weight | Int8Weight  # [O, I]
    act: ActQuant


Weight = torch.Tensor | QuantWeight  # a merged linear as `finish` returns it
Pair = tuple[Weight, Weight]  # (fc, gate) when their input transforms differ


def finish(s: Shard, dtype: torch.dtype, device: str, int4: bool = False, int8: bool = False) -> Weight:
    """The runtime form of a merged linear, in `dtype` on `device` (see the module docstring);
    `int4`: a weight-only int4 AWQ linear stays on its grid (`Int4Weight`), pre-quant scale apart;
    `int8`: an int8 SmoothQuant one too (`Int8Weight`)."""
    def put(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype).contiguous()

    if int4 and int4_kernel_fits(s):  # (else dequantized)
        g = s.weight.shape[1] // s.group_scale.shape[1]
        ints = (s.weight / s.group_scale.repeat_interleave(g, dim=1)).round().to(torch.int8)  # exact: W = ints * s
        w = Int4Weight(ints.to(device), s.group_scale.to(device))
        return QuantWeight(w, ActQuant(None, None if s.prequant is None else put(s.prequant)))
    if s.act is None:
        return put(_weight_only(s).weight)
    scale = s.act_scale.float()
    in_scale = 1.0 / scale if s.prequant is None else s.prequant / scale
    if int8 and int8_kernel_fits(s):  # (else dequantized)
        ints = (s.weight / s.channel_scale[:, None]).round().to(torch.int8)  # exact: W = ints * s[:, None]
        return QuantWeight(Int8Weight(ints.to(device), (s.channel_scale * scale).to(device)),
                           ActQuant(s.act, put(in_scale)))
    return QuantWeight(put(s.weight * scale), ActQuant(s.act, put(in_scale)))


def _folded(w: QuantWeight) -> QuantWeight:
    return QuantWeight(w.weight, ActQuant(w.act.kind, None))


def fold_into_norm(norm: torch.Tensor, w: Weight | Pair) -> tuple[torch.Tensor, Weight | Pair]:
    """(norm', w') for a linear `w` whose input is rms_norm(x) * norm [H]: its input multiply
    moves into the norm weight; for a pair (fc, gate), fc's does and gate keeps the ratio. A plain
    weight is returned as it is."""
    if isinstance(w, QuantWeight) and w.act.in_scale is not None:
        return norm * w.act.in_scale, _folded(w)
    if isinstance(w, tuple) and all(isinstance(x, QuantWeight) and x.act.in_scale is not None for x in w):
        a, b = w
        gate = QuantWeight(b.weight, ActQuant(b.act.kind, b.act.in_scale / a.act.in_scale))
        return norm * a.act.in_scale, (_folded(a), gate)
    return norm, w


def fold_into_gate(fc_gate: Weight | Pair, proj: Weight) -> tuple[Weight | Pair, Weight]:
    """(fc_gate', proj') for proj's input silu(fc) * gate: proj's input multiply [I] moves into
    gate's output rows (fc_gate: fused [2 I, H] rows [fc; gate], or the pair (fc, gate))."""
    if not (isinstance(proj, QuantWeight) and proj.act.in_scale is not None):
        return fc_gate, proj
    c = proj.act.in_scale.reshape(-1, 1)  # [I, 1] or [1, 1]

    def scale_rows(w: Weight, start: int) -> Weight:
        full = w.weight if isinstance(w, QuantWeight) else w
        if isinstance(full, (Int4Weight, Int8Weight)):
            out = full.scale_rows(start, c)
        else:
            out = torch.cat([full[:start], full[start:] * c])
        return QuantWeight(out, w.act) if isinstance(w, QuantWeight) else out

    if isinstance(fc_gate, tuple):
        return (fc_gate[0], scale_rows(fc_gate[1], 0)), _folded(proj)
    rows = (fc_gate.weight if isinstance(fc_gate, QuantWeight) else fc_gate).shape[0]
    return scale_rows(fc_gate, rows // 2), _folded(proj)


class LinearLike(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...


class QuantLinear:
    """model.Linear's interface over a linear whose input is fake-quantized first."""

    __slots__ = ("inner", "act")

    def __init__(self, inner: LinearLike, act: ActQuant) -> None:
        self.inner, self.act = inner, act

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.act(x))

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.inner.add_to(residual, self.act(x))


class ConcatLinear:
    """Linears of one input with different input transforms, outputs concatenated: [..., sum O]."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[LinearLike]) -> None:
        self.parts = parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)
