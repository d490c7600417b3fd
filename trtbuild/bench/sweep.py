"""`trtbuild bench sweep OUT...`: serve each build in turn on the same load, then compare.

Each build's `triton_repo` is served by a real tritonserver on free ports; the same prompts (same
seed, the first build's tokenizer) and load points go to each; results land in DIR/<build name>/,
the side-by-side comparison in DIR/comparison.txt (ratios to the first build), with each server's
draft budget and acceptance per load point (its metrics endpoint, bench.speculation) and the
crossover: for each speculative build (its engine has a speculative decoding mode), the load points at
which it is slower than the plain build (none: EngineConfig's speculative_decoding_mode is None). A
build whose load point fails (see `bench`) does not stop the others: the comparison is still written,
then the sweep raises BenchFailed naming each failed build."""

from __future__ import annotations

from pathlib import Path

from trtbuild.common.engine_config import EngineConfig
from trtbuild.common.errors import ConfigError
from trtbuild.common.fsutil import open_output_dir
from trtbuild.common.spec import ResolvedSpec


def sweep(builds: list[Path], points: list[dict], num_requests: int, isl: str, osl: str, seed: int, warmup: int,
          out_dir: Path, echo=print, max_error_rate: float = 0.0) -> str:
    from trtbuild.bench import BenchFailed, bench
    from trtbuild.bench.compare import compare, crossover
    from trtbuild.bench.load import parse_length, sender, synthetic_prompts
    from trtbuild.bench.speculation import metrics_counters
    from trtbuild.runtime.tokenizer import load_tokenizer
    from trtbuild.serve import TritonServer, free_port

    for b in builds:
        if not (Path(b) / "triton_repo").is_dir():
            raise ConfigError(f"{b} is not a build directory (no triton_repo/): build it with `trtbuild ... -o {b}`")
    names = [Path(b).resolve().name for b in builds]
    if len(set(names)) != len(names):
        raise ConfigError(f"build directories need distinct names, got {names}")
    plain = [is_plain(Path(b) / "engine") for b in builds]
    tok = load_tokenizer(Path(builds[0]) / "engine")
    prompts = synthetic_prompts(tok, num_requests, parse_length(isl, "--isl"), parse_length(osl, "--osl"), seed)
    # refused before any server starts; each build's results are then staged and published on their own
    out_dir = open_output_dir(out_dir, kind="bench-sweep", inputs=builds)
    runs, failed = [], []
    for b, name in zip(builds, names):
        echo(f"== {name}: serving {b}/triton_repo")
        with TritonServer(Path(b) / "triton_repo", http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port()) as server:
            spec_file = Path(b) / "spec.yaml"
            spec = ResolvedSpec.from_yaml(spec_file).to_dict() if spec_file.is_file() else None
            try:
                bench(sender(server.grpc_url, "ensemble"), prompts, tok, points, warmup=warmup,
                      out_dir=out_dir / name, meta={"target": {"build": str(b)}, "spec": spec}, echo=echo,
                      max_error_rate=max_error_rate,
                      counters=metrics_counters(f"{server.host}:{server.metrics_port}", echo))
            except BenchFailed as e:
                echo(f"{name}: {e}")
                failed.append(f"{name}: {e}")
        runs.append(out_dir / name)
    text = "\n".join([compare(runs), "", *crossover(names, runs, plain)]).rstrip("\n")
    (out_dir / "comparison.txt").write_text(text + "\n")
    echo(text)
    echo(f"wrote {out_dir}/comparison.txt; per-build results and plots in {', '.join(str(r) for r in runs)}")
    if failed:
        raise BenchFailed(f"{len(failed)} of {len(builds)} builds failed: " + " | ".join(failed))
    return text


def is_plain(engine_dir: Path) -> bool | None:
    """Whether the engine has no speculative decoding mode (None: its config cannot be read)."""
    try:
        return EngineConfig.read(engine_dir).speculative_decoding_mode is None
    except ConfigError:
        return None
