"""What one tensorrt_llm_bls stub pays to get its decoder: `tokenizers` alone (FastDecoder, what the
BLS uses) against transformers' AutoTokenizer (what it used before), each in a fresh process, the two
alternating round by round. The repository runs max_batch_size BLS stubs, so this is paid that many
times at every server start.

    .venv/bin/python benchmarks/bls_decoder.py --tokenizer demo/plain/engine --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
t = time.perf_counter()
kind, path = sys.argv[1], sys.argv[2]
if kind == "fast":
    from trtbuild.triton_repo.python_models import FastDecoder
    dec = FastDecoder(path)
else:
    from trtbuild.triton_repo.python_models import load_tokenizer
    dec = load_tokenizer(path)
dec.decode([1, 2, 3], skip_special_tokens=True)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch_loaded": "torch" in sys.modules}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="a directory with tokenizer.json (an engine dir)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"fast": [], "transformers": []}
    for _ in range(args.rounds):
        for kind in runs:
            out = subprocess.run([sys.executable, "-c", CHILD, kind, args.tokenizer], check=True,
                                 capture_output=True, text=True).stdout
            runs[kind].append(json.loads(out.strip().splitlines()[-1]))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "max_rss_mib")} for k, v in runs.items()}
    ratios = [t["seconds"] / f["seconds"] for f, t in zip(runs["fast"], runs["transformers"])]
    for kind, m in med.items():
        print(f"{kind:13s} median {m['seconds']:.2f} s, {m['max_rss_mib']:.0f} MiB RSS, "
              f"torch loaded: {runs[kind][0]['torch_loaded']}")
    print(f"per-round time ratio transformers/fast: {', '.join(f'{r:.1f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
