"""Issue 17's figures: what the OpenAI frontend costs over talking to the ensemble directly, one
tritonserver and one frontend for a build, the two paths alternating in each round.

- latency of one 64-token streamed chat request (/v1/chat/completions with the real `openai` client)
  against the same text (the chat template applied by the frontend's own code) streamed to the
  ensemble over gRPC (tritonclient), `min_tokens` 64 so both make exactly 64 tokens;
- output tokens/s with 16 such requests in flight at once, 32 per point.

    .venv/bin/python benchmarks/openai_overhead.py BUILD_DIR [ROUNDS]
"""
from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_openai import Stack  # noqa: E402  (the tests' server + frontend pair)

from trtbuild.serve.client import stream_grpc  # noqa: E402

build, rounds = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5
QUESTION, N = "Write a short story about a lighthouse keeper.", 64


def via_openai(s: Stack, client) -> int:
    got = 0
    for e in client.chat.completions.create(model=s.name, messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=N, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"min_tokens": N}):
        if not e.choices:
            got = e.usage.completion_tokens
    return got


def via_ensemble(s: Stack, prompt: str) -> int:
    extra = {"min_tokens": np.array([[N]], dtype=np.int32), "top_k": np.array([[1]], dtype=np.int32)}
    for _ in stream_grpc(s.server.grpc_url, prompt, N, extra=extra):  # a client per request, as `ask` and bench
        pass
    return N  # min_tokens = max_tokens: exactly N tokens, as the frontend's usage says for its side


def load(fn, c: int, total: int) -> float:
    """Output tok/s with `c` threads sending `total` requests in all."""
    left = [total]
    lock = threading.Lock()
    tokens = [0]

    def worker():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            n = fn()
            with lock:
                tokens[0] += n
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tokens[0] / (time.monotonic() - t0)


with Stack(build, Path("/tmp")) as s:
    client = s.client()
    prompt = s.engine.chat_prompt([{"role": "user", "content": QUESTION}])
    assert via_openai(s, client) == N
    via_ensemble(s, prompt)
    lat = {"openai": [], "ensemble": []}
    tps = {"openai": [], "ensemble": []}
    for r in range(rounds):
        order = ["openai", "ensemble"] if r % 2 == 0 else ["ensemble", "openai"]
        for path in order:
            fn = (lambda: via_openai(s, client)) if path == "openai" else (lambda: via_ensemble(s, prompt))
            t0 = time.monotonic()
            fn()
            lat[path].append(time.monotonic() - t0)
        for path in order:
            fn = (lambda: via_openai(s, client)) if path == "openai" else (lambda: via_ensemble(s, prompt))
            tps[path].append(load(fn, 16, 32))
        print(f"round {r}: latency openai {lat['openai'][-1]:.3f}s ensemble {lat['ensemble'][-1]:.3f}s; "
              f"c=16 openai {tps['openai'][-1]:.1f} ensemble {tps['ensemble'][-1]:.1f} tok/s", flush=True)
    lr = [a / b for a, b in zip(lat["openai"], lat["ensemble"])]
    tr = [a / b for a, b in zip(tps["openai"], tps["ensemble"])]
    print(f"medians of {rounds} rounds: 64-token latency openai {statistics.median(lat['openai']):.3f}s, ensemble "
          f"{statistics.median(lat['ensemble']):.3f}s, ratio {statistics.median(lr):.3f}x; c=16 output tok/s openai "
          f"{statistics.median(tps['openai']):.1f}, ensemble {statistics.median(tps['ensemble']):.1f}, ratio "
          f"{statistics.median(tr):.3f}x")
