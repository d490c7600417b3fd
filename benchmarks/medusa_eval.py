"""Medusa on SmolLM2: losslessness, acceptance length and wall-clock speed, all in one run.

    .venv/bin/python benchmarks/medusa_eval.py --hf demo/hf --heads HEADS_DIR --work /tmp/medusa-eval

- converts HF + heads into a MedusaForCausalLM checkpoint (default tree: mc_sim_7b_63);
- held-out prompts come from standard-library files the training split never saw (every 5th file),
  calibration prompts for tune-medusa from the training split;
- lossless: 20 held-out prompts x 64 new tokens, greedy, batch 1 and batch 4, Medusa (tuned tree and
  mc_sim_7b_63) against plain greedy decoding of the same runtime: token-identical counts;
- acceptance length (tokens per target forward pass) on the held-out prompts for both trees;
- speed: batch-1 tokens/s of plain, tuned and mc_sim_7b_63 decoding over the held-out prompts,
  alternating, `--repeats` times; medians and ratios to plain.
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
    ap.add_argument("--heads", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--candidates", default="1,2,3,4,5,6,8,10,12,16")
    ap.add_argument("--acceptance-only", action="store_true",
                    help="only the held-out acceptance length with mc_sim_7b_63 (to compare heads)")
    a = ap.parse_args()

    from trtbuild.convert import convert
    from trtbuild.common.medusa.choices import parse_choices, presets, to_brace
    from trtbuild.common.corpus import corpus_prompts, split_files, stdlib_files
    from trtbuild.tuning.tune_medusa import measure, tune
    from trtbuild.runtime import Model, Request, generate
    from trtbuild.runtime import medusa_generate
    from trtbuild.runtime.tokenizer import load_tokenizer

    ckpt = convert(a.hf, a.work / "ckpt", dtype="float32", medusa=a.heads, force=True)
    model = Model.load(ckpt, dtype="float32", device="cpu")
    tok = load_tokenizer(ckpt)
    train_files, held_files = split_files(stdlib_files())
    held = corpus_prompts(held_files, tok, a.prompts, 32, seed=123)
    calib = corpus_prompts(train_files, tok, 8, 32, seed=7)
    mc_sim = parse_choices([list(p) for p in presets()["mc_sim_7b_63"] if len(p) <= len(model.medusa)]).choices
    if a.acceptance_only:
        res = [medusa_generate(model, [Request(tuple(p), a.tokens)], mc_sim)[0] for p in held]
        tokens, steps = sum(len(r.output_ids) - 1 for r in res), sum(r.num_steps for r in res)
        print(json.dumps({"heads": str(a.heads), "prompts": len(held), "new_tokens": a.tokens,
                          "mc_sim_7b_63_mean_acceptance_length": round(tokens / steps, 3)}))
        return

    tuned = tune(model, calib, a.tokens, None, tuple(int(x) for x in a.candidates.split(",")),
                 model.cfg.max_draft_len)
    trees = {"tuned": tuple(tuple(p) for p in tuned["choices"]),
             "mc_sim_7b_63": mc_sim}

    reqs = [Request(tuple(p), a.tokens) for p in held]
    plain = [r.output_ids for r in generate(model, reqs)]  # reference, batched
    plain_b1 = [generate(model, [r])[0].output_ids for r in reqs]
    lossless, acceptance = {}, {}
    for name, tree in trees.items():
        b1 = [medusa_generate(model, [r], tree)[0] for r in reqs]
        b4 = [x for i in range(0, len(reqs), 4) for x in medusa_generate(model, reqs[i:i + 4], tree)]
        lossless[name] = {"batch1_identical": sum(r.output_ids == p for r, p in zip(b1, plain_b1)),
                          "batch4_identical": sum(r.output_ids == p for r, p in zip(b4, plain_b1)),
                          "prompts": len(reqs)}
        tokens, steps = sum(len(r.output_ids) - 1 for r in b1), sum(r.num_steps for r in b1)
        acceptance[name] = {"mean_acceptance_length": round(tokens / steps, 3),
                            "per_prompt_mean": round(statistics.mean(r.tokens_per_step for r in b1), 3)}
    batched_plain_matches_b1 = sum(x == y for x, y in zip(plain, plain_b1))

    speed: dict[str, list[float]] = {"plain": [], "tuned": [], "mc_sim_7b_63": []}
    for _ in range(a.repeats):
        speed["plain"].append(measure(model, held, a.tokens, None).tokens_per_s)
        for name, tree in trees.items():
            speed[name].append(measure(model, held, a.tokens, tree).tokens_per_s)
    med = {k: statistics.median(v) for k, v in speed.items()}
    report = {
        "prompts": len(held), "new_tokens": a.tokens,
        "tuned_tree": {"nodes": len(trees["tuned"]), "brace": to_brace(trees["tuned"]),
                       "calibration_runs": tuned["runs"], "head_rank_probs_top3": [r[:3] for r in tuned["head_rank_probs"]]},
        "lossless": lossless, "batched_plain_equals_batch1_plain": batched_plain_matches_b1,
        "acceptance_heldout": acceptance,
        "tokens_per_s_median": {k: round(v, 2) for k, v in med.items()},
        "tokens_per_s_runs": {k: [round(x, 2) for x in v] for k, v in speed.items()},
        "speedup_vs_plain": {k: round(v / med["plain"], 3) for k, v in med.items() if k != "plain"},
    }
    (a.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
