"""Decode speed: the reference runtime vs transformers' generate on SmolLM2-135M, same run.

Greedy, batch 1, fixed prompt, a fixed number of new tokens (EOS ignored). Decode tokens/s
excludes the prefill: (new_tokens - 1) / (total time - time to first token), measured by
timing a 1-token generation separately for each side. Repeats alternate between the two
sides; medians and the ratio are printed as JSON.

    .venv/bin/python benchmarks/decode_speed.py --hf demo/hf --ckpt demo/ckpt [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trtbuild.runtime import Model, Request, generate

    dtype = getattr(torch, a.dtype)
    tok = AutoTokenizer.from_pretrained(a.hf)
    ids = tok("Once upon a time, in a small village by the sea,")["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(a.hf, dtype=dtype).eval()
    rt = Model.load(a.ckpt, dtype=a.dtype, device="cpu")
    x = torch.tensor([ids])

    def run_hf(n: int) -> list[int]:
        with torch.inference_mode():
            out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
        return out[0, len(ids):].tolist()

    def run_rt(n: int) -> list[int]:
        return list(generate(rt, [Request(tuple(ids), n)])[0].output_ids)

    def timed(fn, n: int) -> float:
        t = time.perf_counter()
        fn(n)
        return time.perf_counter() - t

    for fn in (run_hf, run_rt):  # warm-up
        fn(8)
    same = run_hf(a.tokens) == run_rt(a.tokens)
    rates: dict[str, list[float]] = {"transformers": [], "runtime": []}
    for _ in range(a.repeats):
        for name, fn in (("transformers", run_hf), ("runtime", run_rt)):
            first = timed(fn, 1)
            total = timed(fn, a.tokens)
            rates[name].append((a.tokens - 1) / (total - first))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({
        "dtype": a.dtype, "new_tokens": a.tokens, "repeats": a.repeats, "threads": torch.get_num_threads(),
        "identical_greedy_output": same,
        "decode_tokens_per_s_median": {k: round(v, 2) for k, v in med.items()},
        "all_runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "ratio_runtime_over_transformers": round(med["runtime"] / med["transformers"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
