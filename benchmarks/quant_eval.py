"""Quantized SmolLM2 (issue 18): calibration time, size, top-1 agreement, decode speed, Medusa acceptance.

    TRTBUILD_MODELOPT_PYTHON=.cache/modelopt-venv/bin/python \
    .venv/bin/python benchmarks/quant_eval.py --hf demo/hf --heads demo/heads --work /tmp/quant-eval

- every recipe (fp8 + FP8 KV, int8_sq, int4_awq, w4a8_awq + FP8 KV; AWQ group 64, SmolLM2's hidden
  576 takes no 128) quantized through trtbuild's driver with its default calibration (32 x 256
  tokens of the local corpus's training split); a checkpoint already in WORK with the same recipe
  is reused, its recorded calibration time reported;
- top-1 agreement with the unquantized model computed in fp32 (the demo's bf16 weights), teacher
  forced over held-out text (the corpus's other split), every position;
- checkpoint size (rank files) against the bf16 checkpoint;
- decode tokens/s in the reference runtime (batch 1, greedy, `--tokens` new tokens, prefill
  excluded by timing the generate call minus a 1-token generate), the builds alternating in each
  of `--repeats` rounds; medians and the ratio to bf16 (the runtime's CPU default, float32
  compute) measured in the same round; also the bf16 checkpoint computed in bf16, and int4_awq /
  int8_sq dequantized (`-dequantized`: fp32 numerics, no integer kernels);
- Medusa: the demo heads on the fp8 base (heads unquantized) vs the bf16 base: acceptance length with
  the demo tree and mc_sim_7b_63 on held-out prompts, and lossless vs the same quantized model decoding plainly.
Prints one JSON report (also WORK/report.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RECIPES = {"fp8": ("fp8", "fp8", "bfloat16"), "int8_sq": ("int8_sq", None, "bfloat16"),
           "int4_awq": ("int4_awq", None, "bfloat16"), "w4a8_awq": ("w4a8_awq", "fp8", "float16")}
DEMO_TREE = "{0}, {1}, {0, 0}"


def quantized(hf: Path, out: Path, recipe: str, heads: Path | None = None) -> Path:
    from trtbuild.quantize import QuantizeSpec, quantize

    name, kv, dtype = RECIPES[recipe]
    marker = out / "trtbuild.json"
    if marker.is_file() and json.loads(marker.read_text())["options"].get("quantization", {}).get("recipe") == name:
        return out
    return quantize(hf, out, QuantizeSpec(name, kv, group_size=64), dtype=dtype, force=True, medusa=heads,
                    medusa_choices=DEMO_TREE if heads else None)


def agreement(model, ref, seqs) -> float:
    """Share of positions where `model`'s argmax equals `ref`'s (teacher forced)."""
    from trtbuild.quantize.driver import _prefill_logits

    same = total = 0
    for ids in seqs:
        a, b = _prefill_logits(model, ids).argmax(-1), _prefill_logits(ref, ids).argmax(-1)
        same += int((a == b).sum())
        total += len(ids)
    return same / total


def decode_tps(model, prompts, tokens: int) -> float:
    from trtbuild.runtime import Request, generate

    t0 = time.perf_counter()
    for p in prompts:
        generate(model, [Request(tuple(p), tokens)])
    t1 = time.perf_counter()
    for p in prompts:
        generate(model, [Request(tuple(p), 1)])
    t2 = time.perf_counter()
    return len(prompts) * (tokens - 1) / ((t1 - t0) - (t2 - t1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", type=Path, required=True)
    ap.add_argument("--heads", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--held", type=int, default=16, help="held-out sequences for the agreement")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-medusa", action="store_true")
    a = ap.parse_args()

    import torch

    from trtbuild.common.corpus import corpus_prompts, split_files, stdlib_files
    from trtbuild.common.medusa.choices import parse_choices, presets
    from trtbuild.convert import convert
    from trtbuild.runtime import Model, Request, generate, medusa_generate
    from trtbuild.runtime.tokenizer import load_tokenizer

    torch.set_num_threads(torch.get_num_threads())
    a.work.mkdir(parents=True, exist_ok=True)
    recipes = a.recipes.split(",")
    base = convert(a.hf, a.work / "bf16", dtype="bfloat16", force=True)
    ckpts = {r: quantized(a.hf, a.work / r, r) for r in recipes}
    tok = load_tokenizer(base)
    held = corpus_prompts(split_files(stdlib_files())[1], tok, a.held, 128, seed=321, chat=False)
    prompts = held[:4]
    ref = Model.load(base, dtype="float32")
    models = {"bf16": ref, **{r: Model.load(c, dtype="float32") for r, c in ckpts.items()}}
    # the same baseline computed in bf16, and the integer-kernel recipes dequantized (their fp32 numerics)
    extra = {"bf16@bf16": Model.load(base, dtype="bfloat16"),
             **{f"{r}-dequantized": Model.load(c, dtype="float32", int4=False, int8=False)
                for r, c in ckpts.items() if r in ("int4_awq", "int8_sq")}}
    report: dict = {"recipes": {}}
    size = lambda d: sum(p.stat().st_size for p in d.glob("rank*.safetensors"))  # noqa: E731
    for r, c in ckpts.items():
        m = json.loads((c / "trtbuild.json").read_text())["options"]["quantization"]
        report["recipes"][r] = {"kv_cache": m["kv_cache"], "calibrate_s": m["seconds"]["calibrate"],
                                "total_s": m["seconds"]["total"], "calibration_sequences": m["calibration"]["sequences"],
                                "bytes": size(c), "bytes_vs_bf16": round(size(c) / size(base), 3),
                                "top1_agreement": round(agreement(models[r], ref, held), 4)}
    print(json.dumps({"recipes": report["recipes"]}), flush=True)  # the slow parts follow
    models.update(extra)
    rounds: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(a.repeats):
        for k, m in models.items():
            rounds[k].append(decode_tps(m, prompts, a.tokens))
    for r in [*recipes, *(k for k in extra if k != "bf16@bf16")]:
        report["recipes"].setdefault(r, {})
        report["recipes"][r]["decode_tok_s"] = round(statistics.median(rounds[r]), 2)
        report["recipes"][r]["decode_vs_bf16"] = round(statistics.median(
            [x / y for x, y in zip(rounds[r], rounds["bf16"])]), 3)
    report["bf16"] = {"bytes": size(base), "decode_tok_s": round(statistics.median(rounds["bf16"]), 2)}
    report["bf16@bf16"] = {"decode_tok_s": round(statistics.median(rounds["bf16@bf16"]), 2),
                           "decode_vs_bf16": round(statistics.median(
                               [x / y for x, y in zip(rounds["bf16@bf16"], rounds["bf16"])]), 3)}
    print(json.dumps({"decode": {k: [round(x, 2) for x in v] for k, v in rounds.items()}}), flush=True)
    if a.skip_medusa:
        print(json.dumps(report, indent=2))
        return

    # Medusa: the demo heads on the fp8 base vs on the bf16 base
    med_bf16 = convert(a.hf, a.work / "medusa-bf16", dtype="bfloat16", medusa=a.heads, medusa_choices=DEMO_TREE,
                       force=True)
    med_q = quantized(a.hf, a.work / "medusa-fp8", "fp8", heads=a.heads)
    mb, mq = Model.load(med_bf16, dtype="float32"), Model.load(med_q, dtype="float32")
    demo = parse_choices(DEMO_TREE).choices
    mc_sim = parse_choices([list(p) for p in presets()["mc_sim_7b_63"] if len(p) <= len(mb.medusa)]).choices
    heads_prompts = corpus_prompts(split_files(stdlib_files())[1], tok, 20, 32, seed=123)
    med: dict = {}
    for label, model in (("bf16_base", mb), ("fp8_base", mq)):
        for tree_name, tree in (("demo_tree", demo), ("mc_sim_7b_63", mc_sim)):
            res = [medusa_generate(model, [Request(tuple(p), 64)], tree)[0] for p in heads_prompts]
            tokens, steps = sum(len(x.output_ids) - 1 for x in res), sum(x.num_steps for x in res)
            med[f"{label}/{tree_name}"] = round(tokens / steps, 3)
    same = sum(medusa_generate(mq, [Request(tuple(p), 64)], demo)[0].output_ids ==
               generate(mq, [Request(tuple(p), 64)])[0].output_ids for p in heads_prompts)  # its own plain decode
    med["fp8_lossless_vs_fp8_plain"] = f"{same}/{len(heads_prompts)}"
    report["medusa_acceptance_length"] = med
    (a.work / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
