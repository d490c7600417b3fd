"""Serving throughput and overhead on this machine: SmolLM2 through a real tritonserver.

    .venv/bin/python benchmarks/serve_load.py --build OUT_DIR [--concurrency 1,4,16] [--tokens 64]

- output tokens/s through the ensemble (gRPC streaming) with C concurrent clients, each sending
  `--requests` requests back to back (prompts from the standard library, 64 new tokens);
- start-up: seconds from launching tritonserver to ready (every model of the repository loaded);
- end-to-end latency of one request through the ensemble vs the same request on the reference
  runtime's scheduler in this process (same engine, same prompt), alternating, medians.
Prints one JSON report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", type=Path, required=True)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    from trtbuild.common.corpus import stdlib_files
    from trtbuild.runtime import Request
    from trtbuild.runtime.scheduler import Scheduler, schedule_all
    from trtbuild.runtime.tokenizer import load_tokenizer
    from trtbuild.serve import TritonServer, free_port
    from trtbuild.serve.client import stream_grpc

    engine = a.build / "engine"
    tok = load_tokenizer(engine)
    texts = [f.read_text(errors="replace")[2000:2600] for f in stdlib_files()[:64]]
    prompts = [tok.decode(tok(t)["input_ids"][:48]) for t in texts if len(t) > 500]
    report: dict = {"engine": str(engine), "tokens": a.tokens}
    t0 = time.perf_counter()
    with TritonServer(a.build / "triton_repo", http_port=free_port(), grpc_port=free_port(),
                      metrics_port=free_port()) as s:
        report["startup_s"] = round(time.perf_counter() - t0, 2)  # launch to ready (every model loaded)
        list(stream_grpc(s.grpc_url, prompts[0], 8))  # warm-up
        load = {}
        for c in (int(x) for x in a.concurrency.split(",")):
            counts: list[int] = []
            lock = threading.Lock()

            def client(k: int) -> None:
                for r in range(a.requests):
                    text = "".join(x["text_output"] for x in stream_grpc(
                        s.grpc_url, prompts[(k * a.requests + r) % len(prompts)], a.tokens))
                    with lock:
                        counts.append(len(tok(text, add_special_tokens=False)["input_ids"]))

            threads = [threading.Thread(target=client, args=(k,)) for k in range(c)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            load[c] = {"requests": len(counts), "output_tokens": sum(counts), "seconds": round(elapsed, 2),
                       "output_tokens_per_s": round(sum(counts) / elapsed, 2)}
        base = load[min(load)]["output_tokens_per_s"]
        for v in load.values():
            v["vs_concurrency_1"] = round(v["output_tokens_per_s"] / base, 3)
        report["load"] = load

        sched = Scheduler.from_engine(engine)
        prompt = prompts[1]
        ids = tuple(tok(prompt)["input_ids"])
        served, local = [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            list(stream_grpc(s.grpc_url, prompt, a.tokens))
            served.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            schedule_all(sched, [Request(ids, a.tokens)])
            local.append(time.perf_counter() - t0)
        report["latency_s"] = {"ensemble_median": round(statistics.median(served), 3),
                               "in_process_median": round(statistics.median(local), 3),
                               "ratio": round(statistics.median(served) / statistics.median(local), 3),
                               "ensemble_runs": [round(x, 3) for x in served],
                               "in_process_runs": [round(x, 3) for x in local]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
