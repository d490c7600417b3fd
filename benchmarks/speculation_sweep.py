"""Issue 16's benchmark: the demo's sweep (a real tritonserver per build, served in turn) over plain,
Medusa and lookahead builds with speculation auto and always, concurrency 1, 4, 8, 16, in rounds
that rotate the build order (serving first or last is not the same on a 2-core machine); prints the medians of output tokens/s and of the
per-round ratio to plain (measured in the same round).

    .venv/bin/python benchmarks/speculation_sweep.py demo/hf demo/heads /tmp/spec-sweep [ROUNDS]
"""
import json, statistics, subprocess, sys
from pathlib import Path

hf, heads, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
trt = str(Path(sys.executable).parent / "trtbuild")
common = ["--max-seq-len", "1024", "--max-batch-size", "16"]
builds = {"plain": [], "medusa-auto": ["--medusa", str(heads), "--medusa-choices", "{0}, {1}, {0, 0}"],
          "lookahead-auto": ["--lookahead", "1,5,2"]}
builds["medusa-always"] = builds["medusa-auto"] + ["--speculation", "always"]
builds["lookahead-always"] = builds["lookahead-auto"] + ["--speculation", "always"]
for name, flags in builds.items():
    if not (out / name / "triton_repo").is_dir():
        subprocess.run([trt, str(hf), "-o", str(out / name), *common, *flags], check=True)
order = list(builds)
runs: dict[tuple[str, int], list[float]] = {}
ratios: dict[tuple[str, int], list[float]] = {}
for r in range(rounds):
    names = order[r % len(order):] + order[:r % len(order)]  # each round starts one build later
    dest = out / f"round-{r}"
    subprocess.run([trt, "bench", "sweep", *(str(out / n) for n in names), "--concurrency", "1,4,8,16",
                    "--num-requests", "16", "--isl", "128", "--osl", "64", "-o", str(dest)], check=True)
    tps = {}
    for n in names:
        for res in json.loads((dest / n / "results.json").read_text())["results"]:
            tps[n, res["load"]["concurrency"]] = res["output_token_throughput_per_s"]
    for (n, c), v in tps.items():
        runs.setdefault((n, c), []).append(v)
        ratios.setdefault((n, c), []).append(v / tps["plain", c])
print(f"medians of {rounds} rounds: output tok/s (ratio to plain, median of per-round ratios)")
print("build".ljust(18) + "".join(f"c={c}".rjust(18) for c in (1, 4, 8, 16)))
for n in order:
    print(n.ljust(18) + "".join(f"{statistics.median(runs[n, c]):7.1f} ({statistics.median(ratios[n, c]):.2f}x)".rjust(18)
                                for c in (1, 4, 8, 16)))
