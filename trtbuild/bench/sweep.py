"""`trtbuild bench sweep OUT...`: serve each build in turn on the same load, then compare.

Each build's `triton_repo` is served by a real tritonserver on free ports; the same prompts (same
seed, the first build's tokenizer) and load points go to each; results land in DIR/<build name>/,
the side-by-side comparison in DIR/comparison.txt (ratios to the first build)."""

from __future__ import annotations

from pathlib import Path

from trtbuild.errors import ConfigError


def sweep(builds: list[Path], points: list[dict], num_requests: int, isl: str, osl: str, seed: int, warmup: int,
          out_dir: Path, echo=print) -> str:
    from trtbuild.bench import bench
    from trtbuild.bench.compare import compare
    from trtbuild.bench.load import parse_length, sender, synthetic_prompts
    from trtbuild.runtime.tokenizer import load_tokenizer
    from trtbuild.serve import TritonServer, free_port

    for b in builds:
        if not (Path(b) / "triton_repo").is_dir():
            raise ConfigError(f"{b} is not a build directory (no triton_repo/): build it with `trtbuild ... -o {b}`")
    names = [Path(b).resolve().name for b in builds]
    if len(set(names)) != len(names):
        raise ConfigError(f"build directories need distinct names, got {names}")
    tok = load_tokenizer(Path(builds[0]) / "engine")
    prompts = synthetic_prompts(tok, num_requests, parse_length(isl, "--isl"), parse_length(osl, "--osl"), seed)
    out_dir = Path(out_dir)
    runs = []
    for b, name in zip(builds, names):
        echo(f"== {name}: serving {b}/triton_repo")
        with TritonServer(Path(b) / "triton_repo", http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port()) as server:
            import yaml

            spec = yaml.safe_load((Path(b) / "spec.yaml").read_text()) if (Path(b) / "spec.yaml").is_file() else None
            bench(sender(server.grpc_url, "ensemble"), prompts, tok, points, warmup=warmup,
                  out_dir=out_dir / name, meta={"target": {"build": str(b)}, "spec": spec}, echo=echo)
        runs.append(out_dir / name)
    text = compare(runs)
    (out_dir / "comparison.txt").write_text(text + "\n")
    echo(text)
    echo(f"wrote {out_dir}/comparison.txt; per-build results and plots in {', '.join(str(r) for r in runs)}")
    return text
