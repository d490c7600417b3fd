"""The reference runtime against llama.cpp (and transformers) on CPU: batch-1 greedy decode, same
prompt ids, same weight formats, alternating rounds, medians and ratios. llama.cpp is an anchor
only: trtbuild never depends on it, and this script installs nothing.

Set-up, once (llama-cpp-python builds llama.cpp from its source distribution, ~5 minutes on 2
cores; its sdist carries the GGUF converter, which runs in the project's venv with the sdist's
gguf-py and sentencepiece on PYTHONPATH):

    python3 -m venv /tmp/llama && /tmp/llama/bin/pip install llama-cpp-python==0.3.36 numpy \
      && /tmp/llama/bin/pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d /tmp/llama/sdist \
      && tar xzf /tmp/llama/sdist/*.tar.gz -C /tmp/llama/sdist \
      && .venv/bin/pip install --target /tmp/llama/convdeps sentencepiece
    V=/tmp/llama/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp
    for t in f32 bf16 q8_0; do PYTHONPATH=$V/gguf-py:/tmp/llama/convdeps .venv/bin/python \
      $V/convert_hf_to_gguf.py demo/hf --outtype $t --outfile /tmp/llama/smollm2-$t.gguf; done

Run:

    .venv/bin/python benchmarks/cpu_anchor.py --hf demo/hf --llama-python /tmp/llama/bin/python \
      --gguf F32=/tmp/llama/smollm2-f32.gguf --gguf BF16=/tmp/llama/smollm2-bf16.gguf \
      [--gguf Q8_0=/tmp/llama/smollm2-q8_0.gguf --ckpt Q8_0=INT8_CKPT]

Each format pairs a GGUF with a trtbuild checkpoint and runtime dtype: F32 and BF16 use demo/hf
converted here (float32 / bfloat16 runtime); any other format needs `--ckpt FORMAT=DIR` (e.g. an
int8 SmoothQuant checkpoint from `trtbuild quantize`, run in bfloat16). Decode tokens/s excludes
the prefill the way benchmarks/decode_speed.py does: (N - 1) / (time for N tokens - time for 1),
for every side; each round runs every side back to back, and `paired_ratios_median` is the median
over rounds of each round's ratio (steadier than the ratio of medians on a noisy machine).
llama.cpp runs in its own process (its venv), with the same thread count as torch.
The runtime and transformers halves are decode_speed.py's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

# The llama.cpp side: a persistent worker reading one JSON request per line ({"n": N}) and answering
# {"seconds": s, "ids": [...]}: reset, evaluate the prompt, N greedy tokens (argmax of the logits).
WORKER = r"""
import json, sys, time
import numpy as np
from llama_cpp import Llama
path, threads, prompt = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512,
            logits_all=False, verbose=False)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    n = json.loads(line)["n"]
    t = time.perf_counter()
    llm.reset()
    llm.eval(prompt)
    ids = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        ids.append(nxt)
        if len(ids) < n:
            llm.eval([nxt])
    print(json.dumps({"seconds": time.perf_counter() - t, "ids": ids}), flush=True)
"""


class LlamaSide:
    """One llama.cpp worker process for one GGUF file."""

    def __init__(self, python: str, gguf: Path, threads: int, prompt: list[int]) -> None:
        self.proc = subprocess.Popen([python, "-c", WORKER, str(gguf), str(threads), json.dumps(prompt)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if "ready" not in json.loads(self.proc.stdout.readline() or '{"failed": 1}'):
            raise SystemExit(f"llama.cpp worker for {gguf} did not start")

    def run(self, n: int) -> tuple[float, list[int]]:
        self.proc.stdin.write(json.dumps({"n": n}) + "\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        return r["seconds"], r["ids"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", type=Path, required=True)
    ap.add_argument("--llama-python", required=True, help="python of a venv with llama-cpp-python")
    ap.add_argument("--gguf", action="append", default=[], help="FORMAT=PATH (F32, BF16, Q8_0, ...)")
    ap.add_argument("--ckpt", action="append", default=[], help="FORMAT=DIR: the trtbuild checkpoint for FORMAT")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--transformers", action="store_true", help="also time transformers' generate (F32, BF16)")
    a = ap.parse_args()
    ggufs = dict(x.split("=", 1) for x in a.gguf)
    ckpts = dict(x.split("=", 1) for x in a.ckpt)
    if not ggufs:
        raise SystemExit("give at least one --gguf FORMAT=PATH")

    from transformers import AutoTokenizer

    from trtbuild.convert import convert
    from trtbuild.runtime import Model, Request, generate

    threads = torch.get_num_threads()
    tok = AutoTokenizer.from_pretrained(a.hf)
    prompt = tok("Once upon a time, in a small village by the sea,")["input_ids"]
    work = Path(tempfile.mkdtemp(prefix="cpu-anchor-"))
    dtypes = {"F32": "float32", "BF16": "bfloat16"}
    sides: dict[str, object] = {}  # "FORMAT/side" -> callable n -> (seconds, ids)
    for fmt, path in ggufs.items():
        dtype = dtypes.get(fmt, "bfloat16")
        if fmt not in ckpts and fmt not in dtypes:
            raise SystemExit(f"--gguf {fmt}: give --ckpt {fmt}=DIR (the trtbuild checkpoint to compare)")
        ckpt = Path(ckpts[fmt]) if fmt in ckpts else convert(a.hf, work / fmt, dtype="float32")
        rt = Model.load(ckpt, dtype=dtype, device="cpu")
        llama = LlamaSide(a.llama_python, Path(path), threads, prompt)

        def run_rt(n: int, rt=rt) -> tuple[float, list[int]]:
            t = time.perf_counter()
            ids = list(generate(rt, [Request(tuple(prompt), n)])[0].output_ids)
            return time.perf_counter() - t, ids

        sides[f"{fmt}/llama.cpp"], sides[f"{fmt}/runtime"] = llama.run, run_rt
        if a.transformers and fmt in dtypes:
            from transformers import AutoModelForCausalLM

            hf = AutoModelForCausalLM.from_pretrained(a.hf, dtype=getattr(torch, dtype)).eval()

            def run_hf(n: int, hf=hf) -> tuple[float, list[int]]:
                x = torch.tensor([prompt])
                t = time.perf_counter()
                with torch.inference_mode():
                    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
                return time.perf_counter() - t, out[0, len(prompt):].tolist()

            sides[f"{fmt}/transformers"] = run_hf
    for fn in sides.values():  # warm-up
        fn(8)
    outputs = {k: fn(a.tokens)[1] for k, fn in sides.items()}
    rates: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(a.repeats):
        for k, fn in sides.items():
            first, total = fn(1)[0], fn(a.tokens)[0]
            rates[k].append((a.tokens - 1) / (total - first))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {}
    for fmt in ggufs:
        ratios[f"{fmt}: runtime / llama.cpp"] = round(med[f"{fmt}/runtime"] / med[f"{fmt}/llama.cpp"], 3)
        if f"{fmt}/transformers" in med:
            ratios[f"{fmt}: runtime / transformers"] = round(med[f"{fmt}/runtime"] / med[f"{fmt}/transformers"], 3)
    paired = {}  # per round (the sides of one round run back to back), then the median over rounds
    for key in ratios:
        fmt, other = key.split(": runtime / ")
        paired[key] = round(statistics.median(r / o for r, o in zip(rates[f"{fmt}/runtime"], rates[f"{fmt}/{other}"])), 3)
    print(json.dumps({
        "new_tokens": a.tokens, "repeats": a.repeats, "threads": threads, "prompt_tokens": len(prompt),
        "decode_tokens_per_s_median": {k: round(v, 2) for k, v in med.items()},
        "ratios": ratios,
        "paired_ratios_median": paired,
        "all_runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "same_greedy_tokens_as_runtime": {k: outputs[k] == outputs[f"{k.split('/')[0]}/runtime"]
                                          for k in outputs if not k.endswith("/runtime")},
    }, indent=2))


if __name__ == "__main__":
    main()
