"""Lookahead decoding on SmolLM2: losslessness, compression ratio and wall-clock speed, one run.

    .venv/bin/python benchmarks/lookahead_eval.py --hf demo/hf --work /tmp/lookahead-eval

- converts the HF model to an fp32 checkpoint (the CPU compute dtype);
- code-completion prompts: the start of functions (def line + the next line, 256 tokens of file
  before it) from the local standard library; calibration and evaluation prompts differ (seeds);
- sweep: `tune-lookahead`'s grid on the calibration prompts (tokens/s, acceptance, compression);
- lossless: 20 prompts x 64 new tokens, greedy, batch 1 and batch 4, for the fastest setting of the
  sweep and TensorRT-LLM's default (4, 3, 4), against plain greedy decoding of the same runtime;
- speed: batch-1 tokens/s of plain and of both settings on the 20 prompts, alternating,
  `--repeats` times; medians, and the median of the per-round ratios to plain.
Prints (and writes to WORK/report.json) one JSON report.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    from trtbuild.convert import convert
    from trtbuild.common.lookahead.spec import LookaheadSpec
    from trtbuild.tuning.tune_lookahead import measure, sweep
    from trtbuild.common.corpus import stdlib_files
    from trtbuild.common.corpus import code_prompts
    from trtbuild.runtime import Model, Request, generate
    from trtbuild.runtime import lookahead_generate
    from trtbuild.runtime.tokenizer import load_tokenizer

    ckpt = convert(a.hf, a.work / "ckpt", dtype="float32", force=True)
    model = Model.load(ckpt, dtype="float32", device="cpu")
    tok = load_tokenizer(ckpt)
    calib = code_prompts(stdlib_files(), tok, 8, 256, seed=7)
    held = code_prompts(stdlib_files(), tok, a.prompts, 256, seed=123)

    swept = sweep(model, calib, a.tokens)
    f = swept["fastest"]
    specs = {"fastest": LookaheadSpec(f["W"], f["N"], f["G"]), "trtllm_default_4_3_4": LookaheadSpec(4, 3, 4)}

    reqs = [Request(tuple(p), a.tokens) for p in held]
    plain = [generate(model, [r])[0].output_ids for r in reqs]
    lossless, compression = {}, {}
    for name, spec in specs.items():
        b1 = [lookahead_generate(model, [r], spec)[0] for r in reqs]
        b4 = [x for i in range(0, len(reqs), 4) for x in lookahead_generate(model, reqs[i:i + 4], spec)]
        lossless[name] = {"batch1_identical": sum(r.output_ids == p for r, p in zip(b1, plain)),
                          "batch4_identical": sum(r.output_ids == p for r, p in zip(b4, plain)),
                          "prompts": len(reqs)}
        tokens, steps = sum(len(r.output_ids) for r in b1), sum(r.num_steps for r in b1)
        compression[name] = {"spec": list(spec.as_tuple()), "max_draft_len": spec.max_draft_len,
                             "compression_ratio": round(tokens / (steps + len(b1)), 3),
                             "acceptance_length": round((tokens - len(b1)) / steps, 3)}

    speed: dict[str, list[float]] = {"plain": [], **{k: [] for k in specs}}
    for _ in range(a.repeats):
        speed["plain"].append(measure(model, held, a.tokens, None).tokens_per_s)
        for name, spec in specs.items():
            speed[name].append(measure(model, held, a.tokens, spec).tokens_per_s)
    med = {k: statistics.median(v) for k, v in speed.items()}
    report = {
        "prompts": len(held), "new_tokens": a.tokens, "sweep_on_calibration": swept,
        "lossless": lossless, "heldout": compression,
        "tokens_per_s_median": {k: round(v, 2) for k, v in med.items()},
        "tokens_per_s_runs": {k: [round(x, 2) for x in v] for k, v in speed.items()},
        "speedup_median_of_ratios": {k: round(statistics.median(x / p for x, p in zip(v, speed["plain"])), 3)
                                     for k, v in speed.items() if k != "plain"},
    }
    (a.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
