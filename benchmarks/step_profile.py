"""Where a batch-1 decode step of the reference runtime goes: matmul kernels vs everything else.

    .venv/bin/python benchmarks/step_profile.py --ckpt CKPT [--dtype float32] [--steps 64]

Runs `--steps` decode steps through `Model.forward` (T = 1, a static cache, the slot advanced by
one each step) under torch.profiler and groups the CPU self time by operator: the linears
(the runtime's kernel, recorded as `trtbuild::kernel_linear` with what its call does around it;
oneDNN's packed `mkldnn::_linear_pointwise*`; or `aten::addmm`/`mm` when unpacked), attention,
and the rest; also the wall time per step without the profiler and the weight bytes streamed per
step, so the effective bandwidth of the matmuls and of the whole step can be compared.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

MATMUL = ("trtbuild::kernel_linear", "mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::linear",
          "aten::_weight_int")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=32, help="tokens already in the cache")
    a = ap.parse_args()

    from trtbuild.runtime import Model

    m = Model.load(a.ckpt, dtype=a.dtype, device="cpu")
    S = a.prompt + a.steps + 8
    cache = m.new_cache(1, S)
    ids = torch.randint(0, m.cfg.dims.vocab_size, (1, a.prompt))
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    m.forward(ids, torch.arange(a.prompt)[None], cache, 0, causal[None, None, :a.prompt, :a.prompt])

    def steps(n: int) -> None:
        tok = torch.tensor([[1]])
        for i in range(n):
            p = a.prompt + i
            logits = m.forward(tok, torch.tensor([[p]]), cache, p, causal[None, None, p:p + 1, :p + 1])
            tok = logits[:, -1].argmax(-1, keepdim=True)

    steps(4)  # warm-up
    t = time.perf_counter()
    steps(a.steps)
    wall = (time.perf_counter() - t) / a.steps
    from trtbuild.runtime.kernels import KernelLinear

    run = KernelLinear._run

    def recorded(self, *args, **kw):  # the kernel is a ctypes call: name it for the profiler
        with torch.profiler.record_function("trtbuild::kernel_linear"):
            return run(self, *args, **kw)

    KernelLinear._run = recorded
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            steps(a.steps)
    finally:
        KernelLinear._run = run
    groups: dict[str, float] = defaultdict(float)
    per_op: dict[str, tuple[float, int]] = {}
    for e in prof.key_averages():
        us = e.self_cpu_time_total / a.steps
        name = e.key
        kind = ("matmul" if name.startswith(MATMUL) else
                "attention" if "attention" in name or "sdpa" in name.lower() else "other")
        groups[kind] += us
        per_op[name] = (round(us, 1), e.count // a.steps)
    total = sum(groups.values())
    weight_bytes = sum(t.numel() * t.element_size() for lw in m.layers
                       for lin in (lw.qkv, lw.dense, lw.fc_gate, lw.proj) for t in _tensors(lin))
    weight_bytes += sum(t.numel() * t.element_size() for t in _tensors(m.lm_head))
    top = sorted(per_op.items(), key=lambda kv: -kv[1][0])[:15]
    print(json.dumps({
        "dtype": a.dtype, "threads": torch.get_num_threads(), "linears": getattr(m, "backend", "onednn"),
        "wall_ms_per_step": round(wall * 1e3, 2),
        "profiled_self_ms_per_step": {k: round(v / 1e3, 2) for k, v in groups.items()} | {"total": round(total / 1e3, 2)},
        "matmul_share": round(groups["matmul"] / total, 3),
        "weight_MB_per_step": round(weight_bytes / 1e6, 1),
        "GB_per_s_whole_step": round(weight_bytes / wall / 1e9, 1),
        "GB_per_s_matmuls_only": round(weight_bytes / (groups["matmul"] / 1e6) / 1e9, 1),
        "ops_per_step": sum(c for _, c in per_op.values()),
        "top_ops_us_per_step_and_calls": dict(top),
    }, indent=2))


def _tensors(lin) -> list[torch.Tensor]:
    """The weight tensors a linear streams (any wrapper: Linear, ConcatLinear, QuantLinear, ...)."""
    for attr in ("parts", "inner"):
        if hasattr(lin, attr):
            inner = getattr(lin, attr)
            return [t for p in (inner if isinstance(inner, list) else [inner]) for t in _tensors(p)]
    return [t for t in (getattr(lin, "w", None), getattr(lin, "b", None)) if isinstance(t, torch.Tensor)]


if __name__ == "__main__":
    main()
