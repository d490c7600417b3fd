"""Medusa on SmolLM2: losslessness, acceptance length and wall-clock speed, for one or more sets
of heads in one run (so Medusa-1 and Medusa-2 are compared on the same prompts and the same plain).

    .venv/bin/python benchmarks/medusa_eval.py --run m1:demo/hf:M1_DIR --run m2:M2_DIR --work /tmp/medusa-eval
    .venv/bin/python benchmarks/medusa_eval.py --hf demo/hf --heads HEADS_DIR --work /tmp/medusa-eval

- `--run NAME:HF:HEADS` (Medusa-1: a base and a train-medusa output) or `--run NAME:DIR` (a Medusa-2
  directory, the fine-tuned base and its heads in one); `--hf/--heads` is one run named "medusa";
- held-out prompts come from standard-library files the training split never saw (every 5th file),
  calibration prompts for tune-medusa from the training split;
- lossless: 20 held-out prompts x 64 new tokens, greedy, batch 1 and batch 4, Medusa (tuned tree and
  mc_sim_7b_63) against plain greedy decoding of the same run's base: token-identical counts;
- acceptance length (tokens per target forward pass) on the held-out prompts for both trees;
- speed: batch-1 tokens/s of plain (the first run's base; every base has the same shape) and of
  each run's `--speed-trees`, alternating, `--repeats` times; medians and ratios to plain;
- each run's base-quality report (train-medusa's manifest), where it has one.
Prints (and writes to WORK/report.json) one JSON report.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def parse_run(text: str) -> tuple[str, Path, Path]:
    """NAME:HF:HEADS or NAME:DIR (Medusa-2: DIR is both)."""
    parts = text.split(":")
    if len(parts) == 2:
        return parts[0], Path(parts[1]), Path(parts[1])
    if len(parts) == 3:
        return parts[0], Path(parts[1]), Path(parts[2])
    raise SystemExit(f"--run {text!r}: expected NAME:HF:HEADS or NAME:DIR")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", default=[], type=parse_run)
    ap.add_argument("--hf", type=Path)
    ap.add_argument("--heads", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--candidates", default="1,2,3,4,5,6,8,10,12,16")
    ap.add_argument("--speed-trees", default="tuned", help="comma-separated: tuned, mc_sim_7b_63")
    ap.add_argument("--acceptance-only", action="store_true",
                    help="only the held-out acceptance length with mc_sim_7b_63 (to compare heads)")
    a = ap.parse_args()
    runs = list(a.run) + ([("medusa", a.hf, a.heads)] if a.hf and a.heads else [])
    if not runs or len({n for n, _, _ in runs}) != len(runs):
        raise SystemExit("give --run NAME:HF:HEADS (names distinct) or --hf and --heads")

    from trtbuild.common.corpus import corpus_prompts, split_files, stdlib_files
    from trtbuild.common.medusa.choices import MedusaSpec, parse_choices, presets, to_brace
    from trtbuild.convert import convert
    from trtbuild.runtime import Model, Request, generate, medusa_generate
    from trtbuild.runtime.tokenizer import load_tokenizer
    from trtbuild.tuning.tune_medusa import measure, tune

    models = {}
    for name, hf, heads in runs:
        ckpt = convert(hf, a.work / name / "ckpt", dtype="float32", medusa=heads, force=True)
        models[name] = Model.load(ckpt, dtype="float32", device="cpu")
    tok = load_tokenizer(a.work / runs[0][0] / "ckpt")
    train_files, held_files = split_files(stdlib_files())
    held = corpus_prompts(held_files, tok, a.prompts, 32, seed=123)
    calib = corpus_prompts(train_files, tok, 8, 32, seed=7)
    reqs = [Request(tuple(p), a.tokens) for p in held]

    report: dict = {"prompts": len(held), "new_tokens": a.tokens, "runs": {}}
    trees: dict[str, dict[str, tuple]] = {}
    for name, hf, heads in runs:
        model = models[name]
        mc_sim = parse_choices([list(p) for p in presets()["mc_sim_7b_63"] if len(p) <= len(model.medusa)]).choices
        if a.acceptance_only:
            res = [medusa_generate(model, [r], mc_sim)[0] for r in reqs]
            tokens, steps = sum(len(r.output_ids) - 1 for r in res), sum(r.num_steps for r in res)
            report["runs"][name] = {"mc_sim_7b_63_mean_acceptance_length": round(tokens / steps, 3)}
            continue
        tuned = tune(model, calib, a.tokens, None, tuple(int(x) for x in a.candidates.split(",")),
                     model.cfg.max_draft_len)
        trees[name] = {"tuned": tuple(tuple(p) for p in tuned["choices"]), "mc_sim_7b_63": mc_sim}
        plain_b1 = [generate(model, [r])[0].output_ids for r in reqs]  # this run's own base
        lossless, acceptance = {}, {}
        for tree_name, tree in trees[name].items():
            b1 = [medusa_generate(model, [r], tree)[0] for r in reqs]
            b4 = [x for i in range(0, len(reqs), 4) for x in medusa_generate(model, reqs[i:i + 4], tree)]
            lossless[tree_name] = {"batch1_identical": sum(r.output_ids == p for r, p in zip(b1, plain_b1)),
                                   "batch4_identical": sum(r.output_ids == p for r, p in zip(b4, plain_b1)),
                                   "prompts": len(reqs)}
            tokens, steps = sum(len(r.output_ids) - 1 for r in b1), sum(r.num_steps for r in b1)
            acceptance[tree_name] = {"mean_acceptance_length": round(tokens / steps, 3),
                                     "per_prompt_mean": round(statistics.mean(r.tokens_per_step for r in b1), 3)}
        manifest = heads / "config.json"
        meta = json.loads(manifest.read_text()).get("trtbuild", {}) if manifest.is_file() else {}
        report["runs"][name] = {
            "hf": str(hf), "heads": str(heads),
            "tuned_tree": {"nodes": len(trees[name]["tuned"]), "brace": to_brace(trees[name]["tuned"]),
                           "calibration_runs": tuned["runs"],
                           "head_rank_probs_top3": [r[:3] for r in tuned["head_rank_probs"]]},
            "lossless": lossless, "acceptance_heldout": acceptance,
            "base_quality": meta.get("base_quality"),
        }
    if a.acceptance_only:
        print(json.dumps(report, indent=2))
        return

    plain_model = models[runs[0][0]]
    speed: dict[str, list[float]] = {"plain": []}
    measure(plain_model, held[:1], 8, None)  # warm-up
    for _ in range(a.repeats):
        speed["plain"].append(measure(plain_model, held, a.tokens, None).tokens_per_s)
        for name, _, _ in runs:
            for tree_name in a.speed_trees.split(","):
                key = f"{name}/{tree_name}"
                spec = MedusaSpec(trees[name][tree_name])
                speed.setdefault(key, []).append(measure(models[name], held, a.tokens, spec).tokens_per_s)
    med = {k: statistics.median(v) for k, v in speed.items()}
    report.update({
        "tokens_per_s_median": {k: round(v, 2) for k, v in med.items()},
        "tokens_per_s_runs": {k: [round(x, 2) for x in v] for k, v in speed.items()},
        "speedup_vs_plain": {k: round(v / med["plain"], 3) for k, v in med.items() if k != "plain"},
    })
    (a.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
