"""How long a server takes to stop, and what it leaves behind, after clients left streams through
the ensemble (issue 14 item 2): each source tree given (e.g. this checkout and a `git worktree` of
an older commit) builds the same tiny Llama (the demo model's tokenizer, random weights), then round
by round, alternating the trees, each serves it with its own `TritonServer`, has `--clients` gRPC
streams leave after their first response, and is stopped; the stop is timed, and the /dev/shm
regions and Python stubs still there afterwards are counted.

    git worktree add /tmp/old 01a40f3
    .venv/bin/python benchmarks/serve_stop.py --tree old=/tmp/old --tree new=. --tokenizer demo/hf --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, queue, sys, time
from pathlib import Path
import numpy as np
import tritonclient.grpc as grpcclient
from trtbuild.serve import TritonServer, free_port

repo, clients, tag = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def regions():
    return set(os.listdir("/dev/shm"))

def stubs():
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():  # this script's own command line names both
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "triton_python_backend_stub" in cmd and str(repo) in cmd:
            out.append(int(pid))
    return out

def leave(url, request_id):
    # one streamed ensemble request, abandoned (stream cancelled, client closed) after its first response
    got = queue.Queue()
    c = grpcclient.InferenceServerClient(url)
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    inputs = []
    for name, value, dtype in (("text_input", np.array([[b"Once upon a time"]], dtype=object), "BYTES"),
                               ("max_tokens", np.array([[200]], dtype=np.int32), "INT32"),
                               ("stream", np.array([[True]]), "BOOL")):
        x = grpcclient.InferInput(name, list(value.shape), dtype)
        x.set_data_from_numpy(value)
        inputs.append(x)
    c.async_stream_infer("ensemble", inputs, request_id=request_id)
    _, err = got.get(timeout=120)
    assert err is None, err
    c.stop_stream(cancel_requests=True)
    c.close()

before = regions()
host = "127.0.0.1"
s = TritonServer(repo, host, free_port(host), free_port(host), free_port(host), timeout=300).start()
try:
    for i in range(clients):
        leave(s.grpc_url, f"{tag}-{i}")
    time.sleep(1.0)
except BaseException:
    s.stop()
    raise
t = time.perf_counter()
s.stop()
seconds = time.perf_counter() - t
time.sleep(0.5)
print(json.dumps({"stop_s": seconds, "regions_left": len(regions() - before), "stubs_left": len(stubs())}))
"""


def run(tree: Path, args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree))
    p = subprocess.run([sys.executable, *args], env=env, cwd=tree, capture_output=True, text=True, **kw)  # cwd: `-c`
    # puts the current directory first on sys.path
    if p.returncode:
        raise SystemExit(f"{tree}: exit {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                    help="a source tree to measure (repeatable; the first is the baseline)")
    ap.add_argument("--tokenizer", required=True, type=Path, help="an HF dir with tokenizer.json (demo/hf)")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    trees = {name: Path(d).resolve() for name, d in (t.split("=", 1) for t in a.tree)}
    work = Path(tempfile.mkdtemp(prefix="serve-stop-"))
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import make_hf_model

        hf = work / "hf"
        make_hf_model(hf, vocab_size=49152, pad_token_id=2)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(a.tokenizer / f, hf / f)
        repos = {}
        for name, tree in trees.items():  # each tree writes its own repository (its own Python models)
            run(tree, ["-c", "from trtbuild.cli import main; main()", "build", str(hf), "-o", str(work / name),
                       "--max-batch-size", "4", "--no-verify"])
            repos[name] = work / name / "triton_repo"
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for r in range(a.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                p = run(trees[name], ["-c", CHILD, str(repos[name]), str(a.clients), f"{name}{r}"], timeout=600)
                runs[name].append(json.loads(p.stdout.strip().splitlines()[-1]))
        base = statistics.median(x["stop_s"] for x in runs[next(iter(trees))])
        for name, xs in runs.items():
            med = statistics.median(x["stop_s"] for x in xs)
            print(json.dumps({"tree": name, "stop_s_median": round(med, 2), "ratio_to_first": round(med / base, 3),
                              "stop_s": [round(x["stop_s"], 2) for x in xs],
                              "regions_left": [x["regions_left"] for x in xs],
                              "stubs_left": [x["stubs_left"] for x in xs]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
