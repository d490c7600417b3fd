"""`trtbuild plan MODEL`: the memory plan of a HF directory or config.json, and its report (with
notes on what the plan cannot show, such as where a speculative engine stops paying)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trtbuild.builder.gpus import gpu as gpu_for
from trtbuild.builder.plan import Plan, dims_from_config, model_positions, plan, with_medusa
from trtbuild.common.errors import ConfigError


@dataclass(frozen=True)
class ModelPlan:
    plan: Plan
    tp: int
    pp: int
    dtype: str
    max_seq_len: int
    positions: int  # the model's positions, RoPE scaling included
    max_position_embeddings: int | None
    notes: tuple[str, ...] = ()
    unquantized: Plan | None = None  # the same plan without quantization, when quantized

    def to_dict(self) -> dict:
        d = {**self.plan.to_dict(), "model_positions": self.positions, "notes": list(self.notes)}
        if self.unquantized is not None:
            u = self.unquantized
            d["unquantized"] = {"weights_bytes": u.weights_bytes, "kv_cache_bytes_per_token": u.kv_cache_bytes_per_token,
                                "max_kv_tokens": u.max_kv_tokens}
        return d

    def lines(self) -> list[str]:
        p, gib = self.plan, 1 << 30
        out = []
        if self.max_seq_len > self.positions:  # build refuses it whatever the memory says
            scaled = ", RoPE scaling included" if self.positions != self.max_position_embeddings else ""
            out.append(f"max_seq_len {self.max_seq_len} exceeds the model's {self.positions} positions "
                       f"(max_position_embeddings{scaled}): build refuses it")
        fits = p.fits and self.max_seq_len <= self.positions
        u = self.unquantized
        quant = "".join(f", {x}" for x in (p.quantization, p.kv_cache_dtype and f"{p.kv_cache_dtype} KV cache") if x)

        def saving(new: int, old: int, unit: str) -> str:
            was = f"{old / gib:.2f} GiB" if unit == "GiB" else f"{old} bytes"
            return f"  (unquantized {was}: {1 - new / old:.0%} less)" if old != new else ""
        return out + [
            f"{p.device} x {self.tp * self.pp} (tp={self.tp}, pp={self.pp}), {self.dtype}{quant}",
            f"weights per GPU:            {p.weights_bytes / gib:8.2f} GiB"
            + (saving(p.weights_bytes, u.weights_bytes, "GiB") if u else ""),
            f"KV cache per token per GPU: {p.kv_cache_bytes_per_token:8d} bytes"
            + (saving(p.kv_cache_bytes_per_token, u.kv_cache_bytes_per_token, "bytes") if u else ""),
            f"activations + logits:       {(p.activation_bytes + p.logits_bytes) / gib:8.2f} GiB",
            f"KV tokens that fit:         {p.max_kv_tokens:8d}  ({p.kv_cache_free_gpu_mem_fraction:.0%} of what is left)"
            + (f"  (unquantized {u.max_kv_tokens})" if u is not None else ""),
            f"fits: {'yes' if fits else 'no'}; max_batch_size x max_seq_len: "
            f"{'fits' if p.full_batch_fits else 'does not fit'}; recommended: {json.dumps(p.recommended)}",
            *self.notes]


# TensorRT-LLM takes Medusa's choices once per server (DecodingConfig::setMedusaChoices, from the model's
# medusa_choices: tensorrtllm_backend@c2e65b8:inflight_batcher_llm/src/model_instance_state.cc:596-609) and
# has nothing per request for Medusa, so its engine verifies the whole tree every step, at any load
MEDUSA_FIXED = ("note: on the tensorrt-llm backend TensorRT-LLM runs Medusa at a fixed draft size at every load; "
                "run `trtbuild bench sweep` on this build and a plain one to find the concurrency above which it "
                "is slower than plain")


def plan_model(model: Path, *, gpu: str, tp: int, pp: int, dtype: str, max_batch_size: int, max_seq_len: int,
               max_num_tokens: int, medusa_heads: int, medusa_layers: int, max_draft_len: int,
               quantization: str = "none", kv_cache: str | None = None, group_size: int | None = None) -> ModelPlan:
    """Plan `model` (a HF directory or its config.json) on `gpu`; one ConfigError line for an unreadable
    config. `quantization` / `kv_cache`: the quantized layout build would write (checked by build's rules)."""
    path = model / "config.json" if model.is_dir() else model
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    dims = with_medusa(dims_from_config(cfg), medusa_heads, medusa_layers)
    device = gpu_for(gpu)
    args = dict(tp=tp, pp=pp, dtype=dtype, max_batch_size=max_batch_size, max_seq_len=max_seq_len,
                max_num_tokens=max_num_tokens, max_draft_len=max_draft_len)
    notes: list[str] = [MEDUSA_FIXED] if medusa_heads > 0 and gpu != "cpu" else []  # a GPU plan: a tensorrt-llm engine
    quant = None
    if quantization != "none" or kv_cache is not None:
        from trtbuild.builder.validate import check_quantization
        from trtbuild.common.layout import Mapping
        from trtbuild.common.spec import BuildSpec

        if dtype not in ("float16", "bfloat16"):
            raise ConfigError(f"plan --quantize needs --dtype float16 or bfloat16 (the unquantized tensors), not {dtype}")
        spec = BuildSpec(model=str(model), tp=tp, pp=pp, quantization=quantization, kv_cache=kv_cache,
                         group_size=group_size, backend="tensorrt-llm" if device else "torch")
        quant, _ = check_quantization(spec, dims, Mapping(tp, pp), device, dtype,
                                      "medusa" if medusa_heads else None, notes)
    p = plan(dims, device, quant=quant, **args)
    base = plan(dims, device, **args) if quant is not None else None
    return ModelPlan(p, tp, pp, dtype, max_seq_len, model_positions(cfg), cfg.get("max_position_embeddings"),
                     tuple(notes), base)
