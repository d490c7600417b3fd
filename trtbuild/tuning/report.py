"""The tune commands on a checkpoint directory: calibrate (tune-medusa: the tree; tune-lookahead:
the (W, N, G) sweep), write the JSON report, and format it as the tables the CLI prints.

The report never overwrites the prompts or a file of the checkpoint (`check_inputs`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from trtbuild.common.errors import ConfigError
from trtbuild.common.lookahead.spec import LookaheadSpec


def _calibration(ckpt_dir: Path, prompts_file: Path, chat: bool, out_file: Path | None):
    from trtbuild.common.corpus import read_prompts
    from trtbuild.common.fsutil import check_inputs
    from trtbuild.runtime import Model
    from trtbuild.runtime.tokenizer import load_tokenizer

    if out_file is not None:
        check_inputs(out_file, [ckpt_dir, prompts_file])
    model = Model.load(ckpt_dir)
    return model, lambda: read_prompts(prompts_file, load_tokenizer(ckpt_dir, required=False), chat)


def write_report(report: dict, out_file: Path | None) -> None:
    if out_file is not None:
        out_file.write_text(json.dumps(report, indent=2) + "\n")


def tune_medusa_checkpoint(ckpt_dir: Path, prompts_file: Path, *, chat: bool = False, nodes: int | None = None,
                           candidates: Sequence[int] = (), max_tokens: int = 64,
                           out_file: Path | None = None) -> dict:
    """tune-medusa: the report of `tune` with the best tree's brace form ("brace"), written to `out_file`."""
    from trtbuild.common.medusa.choices import to_brace
    from trtbuild.tuning.tune_medusa import tune

    model, prompts = _calibration(ckpt_dir, prompts_file, chat, out_file)
    if not model.medusa:
        raise ConfigError(f"{ckpt_dir} has no Medusa heads (convert with --medusa)")
    report = tune(model, prompts(), max_tokens, nodes, tuple(candidates), model.cfg.max_draft_len or None)
    report["brace"] = to_brace(tuple(tuple(p) for p in report["choices"]))
    write_report(report, out_file)
    return report


def tune_lookahead_checkpoint(ckpt_dir: Path, prompts_file: Path, *, chat: bool = False,
                              grid: Sequence[LookaheadSpec] = (), max_tokens: int = 64,
                              out_file: Path | None = None) -> dict:
    """tune-lookahead: the sweep's report over `grid` (default: DEFAULT_GRID), written to `out_file`."""
    from trtbuild.tuning.tune_lookahead import DEFAULT_GRID, sweep

    model, prompts = _calibration(ckpt_dir, prompts_file, chat, out_file)
    if model.medusa:
        raise ConfigError(f"{ckpt_dir} is a Medusa checkpoint: lookahead runs on a plain one")
    report = sweep(model, prompts(), max_tokens, tuple(grid) or DEFAULT_GRID, model.cfg.lookahead)
    write_report(report, out_file)
    return report


def medusa_table(report: dict) -> list[str]:
    lines = ["nodes  expected  measured  tokens/s  speedup"]
    lines += [f"{r['nodes']:>5}  {r['expected_length']:>8.2f}  {r['acceptance_length']:>8.2f}  "
              f"{r['tokens_per_s']:>8.1f}  {r['speedup']:>6.2f}x" for r in report["runs"]]
    return lines + [f"best: {report['best_nodes']} nodes: {report['brace']}"]


def lookahead_table(report: dict) -> list[str]:
    lines = [f"plain greedy: {max(report['plain_tokens_per_s']):.1f} tokens/s (best of two runs)",
             " W  N  G  draft  accept  compress  tokens/s  speedup"]
    lines += [f"{r['W']:>2} {r['N']:>2} {r['G']:>2}  {r['max_draft_len']:>5}  {r['acceptance_length']:>6.2f}  "
              f"{r['compression_ratio']:>8.2f}  {r['tokens_per_s']:>8.1f}  {r['speedup']:>6.2f}x"
              for r in report["runs"]]
    best, rec = report["best_compression"], report["recommended"]
    lines.append(f"best compression: ({best['W']},{best['N']},{best['G']}) {best['compression_ratio']:.2f}")
    if rec:
        lines.append(f"recommended here: --lookahead {rec['W']},{rec['N']},{rec['G']} "
                     f"(max_draft_len {rec['max_draft_len']}, {report['fastest']['speedup']:.2f}x plain)")
    else:
        f = report["fastest"]
        lines.append(f"no lookahead setting beat plain greedy decoding on this machine (fastest: "
                     f"({f['W']},{f['N']},{f['G']}) at {f['speedup']:.2f}x); none recommended")
    return lines
