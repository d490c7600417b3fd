"""Issue 17's figures: what the OpenAI frontend costs over talking to the ensemble directly: one
`trtbuild serve BUILD --openai-port` (tritonserver and the frontend, in a process of their own, as
deployed), the two paths alternating in each round.

- latency of one 64-token streamed chat request (/v1/chat/completions with the real `openai` client)
  against the same text (the chat template applied by the frontend's own code) streamed to the
  ensemble over gRPC (tritonclient), `min_tokens` 64 so both make exactly 64 tokens;
- output tokens/s with 16 such requests in flight at once, 32 per point.

    .venv/bin/python benchmarks/openai_overhead.py BUILD_DIR [ROUNDS]
"""
from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai

from trtbuild.openai_api.app import Engine, Served
from trtbuild.serve import free_port
from trtbuild.serve.client import stream_grpc

build, rounds = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5
QUESTION, N = "Write a short story about a lighthouse keeper.", 64


@dataclass
class Stack:
    name: str
    grpc_url: str


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
    for _ in stream_grpc(s.grpc_url, prompt, N, extra=extra):  # a client per request, as `ask` and bench do
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


ports = [free_port() for _ in range(4)]
proc = subprocess.Popen([str(Path(sys.executable).parent / "trtbuild"), "serve", str(build), "--http-port",
                         str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
                         "--openai-port", str(ports[3])], stdout=subprocess.PIPE, text=True)
for line in proc.stdout:
    if line.startswith("OpenAI API:"):
        break
try:
    served = Served.read(build)
    s = Stack(served.name, f"127.0.0.1:{ports[1]}")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports[3]}/v1", api_key="none", max_retries=0, timeout=600)
    prompt = Engine(served, s.grpc_url).chat_prompt([{"role": "user", "content": QUESTION}])
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
finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
