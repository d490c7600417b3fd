"""The scheduler with speculation off / always / auto (issue 16's governor, Medusa rows) on one engine:
output tokens/s at concurrency 1, 4, 16, medians of 2 alternating rounds, in process (no server).

    .venv/bin/python benchmarks/governor_speed.py OUT/engine     # a Medusa build, e.g. make demo's
"""
import statistics, sys, time, torch
torch.set_num_threads(2)
from trtbuild.common.corpus import stdlib_files
from trtbuild.runtime import Request, Scheduler
from trtbuild.runtime.cost import calibrate
from trtbuild.runtime.scheduler import schedule_all
from trtbuild.runtime.tokenizer import load_tokenizer
eng = sys.argv[1]
base = Scheduler.from_engine(eng)
model = base.model
tok = load_tokenizer(eng)
texts = [f.read_text(errors="replace")[2000:2400] for f in stdlib_files()[:32]]
prompts = [p for p in (tuple(tok(t)["input_ids"][:64]) for t in texts) if len(p) >= 16]
cost = calibrate(model, 128, "demo", repeats=3)
print("cost ms", [(t, round(s * 1e3, 1)) for t, s in zip(cost.tokens, cost.seconds)])
for conc in (1, 4, 16):
    res = {}
    for rnd in range(2):
        for mode in ("off", "always", "auto"):
            s = Scheduler(model, 16, 512, 8192, "engine", speculation=mode, cost=cost if mode == "auto" else None)
            reqs = [Request(p, 48) for p in prompts[:conc]]
            t = time.perf_counter(); out = schedule_all(s, reqs); dt = time.perf_counter() - t
            res.setdefault(mode, []).append(sum(len(r.output_ids) for r in out) / dt)
    med = {m: statistics.median(v) for m, v in res.items()}
    print(f"concurrency {conc}: " + ", ".join(f"{m} {v:.1f} tok/s ({v / med['off']:.2f}x off)" for m, v in med.items()))
