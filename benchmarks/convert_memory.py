"""Peak RSS and wall time: `trtbuild convert` vs transformers `from_pretrained` + `save_pretrained`.

The baseline is what TensorRT-LLM's own converter does first: materialise the whole HF model in
memory, then write it out. Both run as fresh subprocesses on the same randomly initialised
Llama (>= 1 GB of bf16 safetensors, built here tensor by tensor), alternating, `--repeats` times;
peak RSS comes from wait4's rusage of each child. The parent stays small (the model is built in
a child of its own): Linux carries a process's pre-exec peak RSS into its child's rusage.
Prints medians and ratios as JSON.

    .venv/bin/python benchmarks/convert_memory.py --work /tmp/convbench [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=12, num_attention_heads=16,
              num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)


def make_model(d: Path) -> None:
    """A random bf16 Llama written tensor by tensor (never the whole model in memory)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trtbuild.convert.safetensors_io import StreamingWriter

    cfg = LlamaConfig(**CONFIG, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    d.mkdir(parents=True)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(d)
    w = StreamingWriter(d / "model.safetensors", {k: ("bfloat16", s) for k, s in shapes.items()})
    g = torch.Generator().manual_seed(0)
    for k, s in shapes.items():
        w.write(k, (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16))
    w.close()


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process, started with no dirty pages pending."""
    os.sync()  # otherwise one run pays for the previous run's writeback: timings swing 0.3 s .. 3 s
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {cmd}")
    return wall, ru.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    src = a.work / "hf"
    if a.make_only:
        make_model(src)
        return
    if not (src / "model.safetensors").is_file():
        shutil.rmtree(src, ignore_errors=True)
        subprocess.run([sys.executable, __file__, "--work", str(a.work), "--make-only"], check=True)
    trt = [sys.executable, "-m", "trtbuild.cli", "convert", str(src), "-o", str(a.work / "ckpt"), "--force"]
    hf = [sys.executable, "-c",
          "import sys, torch; from transformers import AutoModelForCausalLM as M; "
          "M.from_pretrained(sys.argv[1], dtype=torch.bfloat16).save_pretrained(sys.argv[2])",
          str(src), str(a.work / "hf-resaved")]
    runs: dict[str, list[tuple[float, float]]] = {"trtbuild_convert": [], "transformers_load_save": []}
    for _ in range(a.repeats):
        runs["trtbuild_convert"].append(measure(trt))
        shutil.rmtree(a.work / "hf-resaved", ignore_errors=True)
        runs["transformers_load_save"].append(measure(hf))
    med = {k: {"wall_s": round(statistics.median(w for w, _ in v), 2),
               "peak_rss_mib": round(statistics.median(r for _, r in v), 1)} for k, v in runs.items()}
    rank0 = (a.work / "ckpt" / "rank0.safetensors").stat().st_size / 2**20
    print(json.dumps({
        "source_mib": round((src / "model.safetensors").stat().st_size / 2**20, 1),
        "largest_rank_file_mib": round(rank0, 1),
        "median": med,
        "runs": runs,
        "rss_ratio_trtbuild_over_transformers": round(med["trtbuild_convert"]["peak_rss_mib"]
                                                      / med["transformers_load_save"]["peak_rss_mib"], 3),
        "wall_ratio_trtbuild_over_transformers": round(med["trtbuild_convert"]["wall_s"]
                                                       / med["transformers_load_save"]["wall_s"], 3),
        "rss_target_mib(largest rank + 300)": round(rank0 + 300, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
