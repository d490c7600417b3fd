"""Read a finished build directory (OUT of `trtbuild build`) for deployment: its resolved spec, lock
file, engine config, Triton repository, and the sizes the manifests are derived from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trtbuild.builder import LOCK, read_lock
from trtbuild.builder.gpus import GPUS, Gpu
from trtbuild.common.engine_config import EngineConfig
from trtbuild.common.errors import ConfigError
from trtbuild.common.fsutil import MARKER
from trtbuild.common.spec import ResolvedSpec


@dataclass(frozen=True)
class Build:
    path: Path
    spec: ResolvedSpec  # spec.yaml
    lock: dict  # engine/trtbuild.lock.json
    engine_config: EngineConfig  # engine/config.json
    repo: dict  # triton_repo/trtbuild.json
    python_instances: int  # Python-backend model instances in the repository (rank 0)
    engine_bytes_per_rank: int  # the largest rank's engine (or, without engines, its checkpoint file)
    total_bytes: int  # every file of the build

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def world_size(self) -> int:
        return self.spec.tp * self.spec.pp

    @property
    def gpu(self) -> Gpu | None:
        return GPUS.get(self.spec.gpu)

    @property
    def trtllm_version(self) -> str | None:
        return (self.lock.get("versions") or {}).get("tensorrt_llm")


def _size(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def python_instances(repo: Path) -> int:
    """Instances of the repository's Python-backend models (each needs its own /dev/shm region)."""
    from trtbuild.triton_repo import MODELS, parse_config

    n = 0
    for name in MODELS:
        cfg = parse_config((repo / name / "config.pbtxt").read_text())
        if cfg.backend == "python":
            n += sum(g.count or 1 for g in cfg.instance_group) or 1
    return n


def read_build(out: Path) -> Build:
    out = Path(out)
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{out} is not a build directory written by `trtbuild build` (no {MARKER})") from None
    if marker.get("kind") == "dry-run":
        raise ConfigError(f"{out} is a dry run: it has no engine to deploy (build it, then generate the manifests)")
    if marker.get("kind") != "build":
        raise ConfigError(f"{out} is not a build directory written by `trtbuild build`")
    for rel in ("spec.yaml", "engine/config.json", f"triton_repo/{MARKER}"):
        if not (out / rel).is_file():
            raise ConfigError(f"{out} is an incomplete build (no {rel})")
    spec = ResolvedSpec.from_yaml(out / "spec.yaml")
    engine_config = EngineConfig.read(out / "engine")
    try:
        repo = json.loads((out / "triton_repo" / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{out} is an incomplete build ({e})") from None
    if not (out / "engine" / LOCK).is_file():
        raise ConfigError(f"{out}/engine has no {LOCK}: rebuild it with this trtbuild")
    lock = read_lock(out / "engine")
    try:
        instances = python_instances(out / "triton_repo")
    except (OSError, ConfigError) as e:
        raise ConfigError(f"{out}/triton_repo is incomplete ({' '.join(str(e).split())})") from None
    engine = out / "engine"
    ranks = sorted(engine.glob("rank*.engine")) or sorted((out / "checkpoint").glob("rank*.safetensors"))
    per_rank = max((p.stat().st_size for p in ranks), default=0)
    return Build(path=out, spec=spec, lock=lock, engine_config=engine_config, repo=repo,
                 python_instances=instances, engine_bytes_per_rank=per_rank,
                 total_bytes=_size(out.rglob("*")))
