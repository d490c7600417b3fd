"""Decoding speed before/after: the reference runtime's decoders timed for two (or more) source trees,
alternating round by round in one run, on the same checkpoints and prompt ids.

Each round runs, for each tree in turn (the order reversed every other round, so machine noise hits
every tree alike), one child process: the same interpreter with `PYTHONPATH=SRC_DIR` and the tree as
its working directory (so `trtbuild` is that tree's; the child checks and prints where it came from).
The child imports only `trtbuild.runtime.*`, loads the checkpoints its cases need, sets the torch
threads (default 2), and times every case greedily, end ids ignored, N new tokens per request:

    plain-b1, plain-b4          generate(model, [Request(ids, N), ...])
    medusa-b1, medusa-b4        medusa.medusa_generate(model, reqs, --medusa-choices or model.cfg.medusa_choices)
    lookahead-b1, lookahead-b4  lookahead.lookahead_generate(model, reqs, --lookahead or model.cfg.lookahead)
    sched-plain, sched-medusa,  scheduler.Scheduler(model, max_batch_size=4) + schedule_all(..., mode=...),
    sched-lookahead             4 requests submitted at once

No entry point can leave the prefill out, so it is subtracted: after a warm-up, each case runs with
max_new_tokens=1 (prefill and first token) and with N, --repeats times each (the fastest kept);
decode tokens/s is (tokens(N) - tokens(1)) / (seconds(N) - seconds(1)). `e2e_tok_s` (prefill
included) is given too. The Medusa tree is the checkpoint's (convert's default: TensorRT-LLM's
63-node tree) unless --medusa-choices. The 1-minute load average before each child is printed:
on a shared machine other work swings a run several-fold, so measure when it is near zero.
Each child prints one JSON line per case: tok_s, e2e_tok_s, tokens, seconds, steps (target forward
passes of the decode phase: acceptance unchanged?) and a hash of the output ids. The parent prints,
per case, each tree's median tok/s over --rounds, the ratio of every tree to the first (the baseline),
and whether all trees and rounds produced identical greedy output (and, greedy speculative decoding
being lossless, the same ids as plain decoding of the same batch); -o writes the same as JSON.

The old tree and the artefacts (all offline; demo/ is git-ignored):

    git worktree add /tmp/ab/before 7f70447
    .venv/bin/trtbuild demo-model -o demo/hf --force
    .venv/bin/trtbuild train-medusa demo/hf -o demo/heads --steps 300 --sequences 96 --seq-tokens 96 --batch 32
    .venv/bin/trtbuild convert demo/hf -o demo/ckpt
    .venv/bin/trtbuild convert demo/hf --medusa demo/heads -o demo/ckpt-medusa
    .venv/bin/trtbuild convert demo/hf --lookahead 4,3,4 -o demo/ckpt-lookahead

    .venv/bin/python benchmarks/decoding_ab.py --tree before=/tmp/ab/before --tree after=. \\
        --rounds 3 --tokens 64 -o /tmp/ab/decoding_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CASES = ("plain-b1", "plain-b4", "medusa-b1", "medusa-b4", "lookahead-b1", "lookahead-b4",
         "sched-plain", "sched-medusa", "sched-lookahead")

# Four prompts (batch 1 takes the first), tokenized once by the parent so every tree gets the same ids.
PROMPTS = (
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Here is a short list of tips for staying healthy: 1.",
)

CHILD = r"""
import hashlib, json, sys, time, traceback
cfg = json.loads(sys.stdin.read())
import torch
torch.set_num_threads(cfg["threads"])
import trtbuild
from trtbuild.runtime import Model, Request, generate
import trtbuild.runtime.scheduler as sc
try:  # before issue 15: one module per decoder
    import trtbuild.runtime.lookahead as la
    import trtbuild.runtime.medusa as md
except ImportError:  # after: every decoder through the decoding core, offline entry points in the scheduler
    la = md = sc

print(json.dumps({"trtbuild": trtbuild.__file__, "threads": torch.get_num_threads()}), flush=True)
N, prompts = cfg["tokens"], [tuple(p) for p in cfg["prompts"]]
models = {}

def model(kind):
    if kind not in models:
        models[kind] = Model.load(cfg["ckpt"][kind], dtype=cfg["dtype"], device="cpu")
    return models[kind]

def lookahead_spec(m):
    if cfg["lookahead"] is None:
        if m.cfg.lookahead is None:
            raise SystemExit("the lookahead checkpoint stores no (W, N, G): give --lookahead")
        return m.cfg.lookahead
    cls = getattr(la, "LookaheadSpec", None) or type(m.cfg.lookahead)
    return cls(*cfg["lookahead"])

def reqs(batch, n):
    return [Request(prompts[i], n) for i in range(batch)]

def runner(case):
    # -> (run(n) -> list[Result], setup(n) run untimed before each run)
    kind, batch = case.rsplit("-b", 1) if "-b" in case else (case, "4")
    batch = int(batch)
    if kind == "plain":
        m = model("plain")
        return (lambda n, _: generate(m, reqs(batch, n))), None
    if kind == "medusa":
        m = model("medusa")
        choices = tuple(tuple(c) for c in cfg["medusa_choices"]) if cfg["medusa_choices"] else m.cfg.medusa_choices
        if not choices:
            raise SystemExit("the Medusa checkpoint stores no medusa_choices")
        return (lambda n, _: md.medusa_generate(m, reqs(batch, n), choices)), None
    if kind == "lookahead":
        m = model("lookahead")
        spec = lookahead_spec(m)
        return (lambda n, _: la.lookahead_generate(m, reqs(batch, n), spec)), None
    mode = kind.split("-", 1)[1]  # sched-plain | sched-medusa | sched-lookahead
    m = model("plain" if mode == "plain" else mode)
    kw = ({"lookahead": lookahead_spec(m)} if mode == "lookahead" else
          {"medusa_choices": tuple(tuple(c) for c in cfg["medusa_choices"])} if mode == "medusa" and cfg["medusa_choices"]
          else {})
    longest = max(len(p) for p in prompts[:batch]) + N
    if hasattr(sc, "decode"):  # after issue 15: one typed decoding instead of mode + settings
        from trtbuild.common.medusa.choices import MedusaSpec
        kw = {"decoding": kw["lookahead"] if "lookahead" in kw else MedusaSpec(kw["medusa_choices"])
              if "medusa_choices" in kw else "engine" if mode == "medusa" else None}
        def setup(n):
            return sc.Scheduler(m, max_batch_size=batch, max_seq_len=longest, **kw)
        return (lambda n, s: sc.schedule_all(s, reqs(batch, n))), setup
    def setup(n):  # a fresh scheduler (its KV cache allocated) outside the timed region
        return sc.Scheduler(m, max_batch_size=batch, max_seq_len=longest, **kw)
    return (lambda n, s: sc.schedule_all(s, reqs(batch, n), mode=mode)), setup

def timed(run, setup, n):
    state = setup(n) if setup else None
    t = time.perf_counter()
    out = run(n, state)
    return time.perf_counter() - t, out

for case in cfg["cases"]:
    try:
        run, setup = runner(case)
        timed(run, setup, min(N, 4))  # warm-up (first-call allocations, oneDNN primitives)
        t1s, tns, hashes = [], [], set()
        for _ in range(cfg["repeats"]):  # the fastest of each: interference only ever slows a run down
            t1, r1 = timed(run, setup, 1)
            tn, rn = timed(run, setup, N)
            t1s.append(t1)
            tns.append(tn)
            hashes.add(hashlib.sha256(json.dumps([list(r.output_ids) for r in rn]).encode()).hexdigest()[:16])
        t1, tn = min(t1s), min(tns)
        tok1, tokn = sum(len(r.output_ids) for r in r1), sum(len(r.output_ids) for r in rn)
        print(json.dumps({
            "case": case, "tok_s": (tokn - tok1) / (tn - t1) if tn > t1 else None,
            "e2e_tok_s": tokn / tn, "tokens": tokn, "seconds": tn, "prefill_seconds": t1,
            "steps": sum(r.num_steps for r in rn), "hash": hashes.pop() if len(hashes) == 1 else "varies",
        }), flush=True)
    except SystemExit as e:
        print(json.dumps({"case": case, "error": str(e)}), flush=True)
    except Exception as e:
        print(json.dumps({"case": case, "error": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc()[-1500:]}), flush=True)
"""


def parse_tree(text: str) -> tuple[str, Path]:
    name, sep, src = text.partition("=")
    if not sep or not name or not src:
        raise SystemExit(f"--tree {text!r}: expected NAME=SRC_DIR")
    path = Path(src).resolve()
    if not (path / "trtbuild" / "runtime" / "__init__.py").is_file():
        raise SystemExit(f"--tree {text!r}: {path} has no trtbuild/runtime package")
    return name, path


def parse_lookahead(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        w, n, g = (int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--lookahead {text!r}: expected W,N,G (three integers)") from None
    return [w, n, g]


def parse_choices(text: str | None) -> list[list[int]] | None:
    if text is None:
        return None
    try:
        choices = json.loads(text)
        if not (isinstance(choices, list) and choices and all(
                isinstance(p, list) and p and all(type(i) is int and i >= 0 for i in p) for p in choices)):
            raise ValueError
    except ValueError:
        raise SystemExit(f"--medusa-choices {text!r}: expected a JSON list of paths, e.g. [[0],[1],[0,0]]") from None
    return choices


def prompt_ids(tokenizer_dir: Path) -> list[list[int]]:
    from tokenizers import Tokenizer

    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise SystemExit(f"--tokenizer: {path} not found (make the demo model: trtbuild demo-model -o demo/hf)")
    tok = Tokenizer.from_file(str(path))
    return [tok.encode(p, add_special_tokens=False).ids for p in PROMPTS]


def run_child(name: str, tree: Path, job: dict, timeout: float) -> tuple[dict, dict[str, dict]]:
    threads = str(job["threads"])
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               TOKENIZERS_PARALLELISM="false")
    # cwd=tree: `-c` puts the working directory first on sys.path
    p = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(job), env=env, cwd=tree,
                       capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode or not lines:
        raise SystemExit(f"tree {name} ({tree}): exit {p.returncode}: {(p.stderr or p.stdout).strip()[-2000:]}")
    head, rows = lines[0], {r["case"]: r for r in lines[1:]}
    if not Path(head["trtbuild"]).resolve().is_relative_to(tree):
        raise SystemExit(f"tree {name}: the child imported trtbuild from {head['trtbuild']}, not {tree}")
    return head, rows


def summarise(trees: dict[str, Path], cases: list[str], runs: dict[str, list[dict[str, dict]]]) -> dict:
    base = next(iter(trees))
    out, seen = {}, {}
    for case in cases:
        per: dict[str, dict] = {}
        hashes, errors = set(), {}
        for name in trees:
            rows = [r[case] for r in runs[name]]
            bad = [r["error"] for r in rows if "error" in r]
            if bad:
                errors[name] = bad[0]
                continue
            rates = [r["tok_s"] for r in rows if r["tok_s"] is not None]
            hashes |= {r["hash"] for r in rows}
            per[name] = {"tok_s_median": round(statistics.median(rates), 2) if rates else None,
                         "tok_s_runs": [round(x, 2) for x in rates],
                         "e2e_tok_s_median": round(statistics.median(r["e2e_tok_s"] for r in rows), 2),
                         "tokens": rows[0]["tokens"], "steps": sorted({r["steps"] for r in rows}),
                         "hash": sorted({r["hash"] for r in rows})}
        entry: dict = {"trees": per}
        if base in per and per[base]["tok_s_median"]:
            entry["ratio_to_" + base] = {n: round(v["tok_s_median"] / per[base]["tok_s_median"], 3)
                                         for n, v in per.items() if n != base and v["tok_s_median"]}
        entry["identical_output"] = len(hashes) == 1 and "varies" not in hashes and not errors
        if errors:
            entry["errors"] = errors
        out[case], seen[case] = entry, hashes
    for case, entry in out.items():  # greedy speculative decoding is lossless: the plain ids, same batch
        ref = "plain-b1" if case.endswith("-b1") else "plain-b4"
        if case != ref and ref in seen and seen[case]:
            entry["same_ids_as_" + ref] = seen[case] == seen[ref]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=SRC_DIR",
                    help="a source tree (the directory holding trtbuild/); twice or more, the first is the baseline")
    ap.add_argument("--ckpt", type=Path, default=Path("demo/ckpt"), help="plain checkpoint")
    ap.add_argument("--medusa-ckpt", type=Path, default=Path("demo/ckpt-medusa"), help="checkpoint with Medusa heads")
    ap.add_argument("--lookahead-ckpt", type=Path, default=Path("demo/ckpt-lookahead"),
                    help="checkpoint for lookahead (its stored (W, N, G) unless --lookahead)")
    ap.add_argument("--lookahead", metavar="W,N,G", help="lookahead spec instead of the checkpoint's")
    ap.add_argument("--medusa-choices", metavar="JSON", help='Medusa tree instead of the checkpoint\'s, e.g. "[[0],[1],[0,0]]"')
    ap.add_argument("--tokenizer", type=Path, default=Path("demo/hf"), help="HF dir with tokenizer.json (prompts)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed runs per case in each child, the fastest kept (rounds give the median)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each child")
    ap.add_argument("--dtype", default=None, help="runtime dtype (default: the runtime's, float32 on CPU)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child")
    ap.add_argument("-o", "--output", type=Path, help="write the summary and every run as JSON")
    a = ap.parse_args()

    trees = dict(parse_tree(t) for t in a.tree)
    if len(trees) < 2:
        raise SystemExit("--tree: give two or more distinct names (NAME=SRC_DIR)")
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        raise SystemExit(f"--cases: unknown {unknown[0]!r} (known: {', '.join(CASES)})" if unknown else "--cases: none")
    if a.tokens < 2 or min(a.rounds, a.repeats, a.threads) < 1:
        raise SystemExit("--tokens must be >= 2, --rounds, --repeats and --threads >= 1")
    ckpt = {"plain": a.ckpt, "medusa": a.medusa_ckpt, "lookahead": a.lookahead_ckpt}
    needed = {"plain" if c.endswith("plain") or c.startswith("plain") else
              "medusa" if "medusa" in c else "lookahead" for c in cases}
    for kind in needed:
        if not (ckpt[kind] / "config.json").is_file():
            raise SystemExit(f"{kind} checkpoint {ckpt[kind]}: no config.json (see this script's docstring)")
    job = {"cases": cases, "tokens": a.tokens, "repeats": a.repeats, "threads": a.threads, "dtype": a.dtype,
           "lookahead": parse_lookahead(a.lookahead),
           "medusa_choices": parse_choices(a.medusa_choices), "prompts": prompt_ids(a.tokenizer),
           "ckpt": {k: str(v.resolve()) for k, v in ckpt.items()}}

    runs: dict[str, list[dict[str, dict]]] = {name: [] for name in trees}
    heads, load = {}, []
    for r in range(a.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            load.append(round(os.getloadavg()[0], 2))  # others' work while we measure: a noisy run shows here
            heads[name], rows = run_child(name, trees[name], job, a.timeout)
            runs[name].append(rows)
            done = ", ".join(f"{c} {rows[c]['tok_s']:.1f}" if rows[c].get("tok_s") else f"{c} error"
                             for c in cases)
            print(f"round {r + 1}/{a.rounds} {name}: {done}", file=sys.stderr, flush=True)

    summary = summarise(trees, cases, runs)
    base = next(iter(trees))
    names = list(trees)
    print(f"decode tok/s (prefill excluded), median of {a.rounds} rounds; {a.tokens} new tokens, "
          f"{a.threads} threads, greedy; 1-min load average before each child: {min(load)}-{max(load)}"
          f" on {os.cpu_count()} CPUs")
    print(f"{'case':16}" + "".join(f"{n:>12}" for n in names)
          + "".join(f"{n + '/' + base:>16}" for n in names[1:]) + "  identical")
    for case, e in summary.items():
        cells = "".join(f"{e['trees'].get(n, {}).get('tok_s_median') or 'error':>12}" for n in names)
        ratios = "".join(f"{e.get('ratio_to_' + base, {}).get(n, '-'):>16}" for n in names[1:])
        lossless = [("" if v else "NOT ") + "as " + k.removeprefix("same_ids_as_") for k, v in e.items()
                    if k.startswith("same_ids_as_")]
        print(f"{case:16}{cells}{ratios}  {'yes' if e['identical_output'] else 'NO'}"
              + (f" ({lossless[0]})" if lossless else ""))
        for n, err in e.get("errors", {}).items():
            print(f"  {n}: {err}")
    if a.output:
        a.output.write_text(json.dumps({
            "tokens": a.tokens, "rounds": a.rounds, "repeats": a.repeats, "threads": a.threads,
            "load_average_before_each_child": load, "cpus": os.cpu_count(), "dtype": a.dtype,
            "trees": {n: str(p) for n, p in trees.items()}, "imported_from": {n: h["trtbuild"] for n, h in heads.items()},
            "prompt_ids": job["prompts"], "checkpoints": job["ckpt"], "lookahead": job["lookahead"],
            "medusa_choices": job["medusa_choices"], "summary": summary, "runs": runs,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
