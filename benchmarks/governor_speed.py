"""The scheduler with speculation off / always / auto (issue 16's governor) on one engine: output
tokens/s at concurrency 1, 4, 8, 16, medians of alternating rounds, in process (no server).

    .venv/bin/python benchmarks/governor_speed.py OUT/engine [ROUNDS]   # a Medusa or lookahead build
"""
import statistics, sys, time, torch
torch.set_num_threads(2)
from trtbuild.common.corpus import stdlib_files
from trtbuild.runtime import Request, Scheduler
from trtbuild.runtime.scheduler import schedule_all
from trtbuild.runtime.tokenizer import load_tokenizer
eng, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2
base = Scheduler.from_engine(eng)
model, cost = base.model, base.cost
tok = load_tokenizer(eng)
texts = [f.read_text(errors="replace")[2000:2400] for f in stdlib_files()[:32]]
prompts = [p for p in (tuple(tok(t)["input_ids"][:64]) for t in texts) if len(p) >= 16]
print("cost ms", [(t, round(s * 1e3, 1)) for t, s in zip(cost.tokens, cost.seconds)], "heads", round(cost.heads * 1e3, 1))
for conc in (1, 4, 8, 16):
    res, extra = {}, {}
    for rnd in range(rounds):
        for mode in ("off", "always", "auto"):
            s = Scheduler(model, 16, 512, 8192, "engine", speculation=mode, cost=cost)
            reqs = [Request(p, 48) for p in prompts[:conc]]
            t = time.perf_counter(); out = schedule_all(s, reqs); dt = time.perf_counter() - t
            res.setdefault(mode, []).append(sum(len(r.output_ids) for r in out) / dt)
            st = s.stats
            extra[mode] = (st.drafted / max(st.row_steps, 1), st.accepted / max(st.drafted, 1), st.cost_error)
    med = {m: statistics.median(v) for m, v in res.items()}
    print(f"concurrency {conc}: " + ", ".join(f"{m} {v:.1f} tok/s ({v / med['off']:.2f}x off; draft/row-step "
                                                f"{extra[m][0]:.2f}, acc {extra[m][1]:.2f})" for m, v in med.items()))
