"""The build spec: one frozen, validated description of what to build, from flags and/or YAML.

`BuildSpec` holds what the user asked for (None = not given); `resolve_spec` fills every default
from the model itself and checks every rule that needs no GPU, so the resolved spec (written as
`spec.yaml` next to the engine) is complete: nothing downstream asks again. Field names follow
TensorRT-LLM's (`max_draft_len`, `LookaheadDecodingConfig`'s W/N/G, trtllm-build's limits).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from trtbuild.errors import ConfigError

BACKENDS = ("torch", "tensorrt-llm")
QUANTIZATIONS = ("none", "fp8")


@dataclass(frozen=True)
class BuildSpec:
    model: str | None = None  # HF directory
    backend: str = "torch"
    gpu: str | None = None  # a100-80gb, h100-80gb, ..., cpu (default: cpu for torch, h100-80gb for tensorrt-llm)
    gpus: int | None = None  # GPUs available to one replica (default tp * pp)
    tp: int = 1
    pp: int = 1
    dtype: str = "auto"
    quantization: str = "none"
    max_batch_size: int = 8
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None
    max_draft_len: int | None = None
    medusa: str | None = None  # heads file or directory
    medusa_choices: str | None = None  # preset, JSON or brace form
    lookahead: str | None = None  # "W,N,G"
    gather_context_logits: bool = False
    kv_cache_free_gpu_mem_fraction: float = 0.9
    end_ids: tuple[int, ...] | None = None

    def merged(self, overrides: dict) -> BuildSpec:
        """This spec with the non-None entries of `overrides` (flags over a YAML file)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_yaml(cls, path: Path) -> BuildSpec:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read spec {path}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"spec {path} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"spec {path} must be a YAML mapping of build settings")
        data = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in data.items()}
        known = {f.name for f in fields(cls)} | set(ResolvedSpec.DERIVED)
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(f"spec {path}: unknown setting(s) {', '.join(unknown)}")
        data = {k: v for k, v in data.items() if k not in ResolvedSpec.DERIVED}
        if isinstance(data.get("end_ids"), list):
            data["end_ids"] = tuple(data["end_ids"])
        if isinstance(data.get("lookahead"), list):
            data["lookahead"] = ",".join(map(str, data["lookahead"]))
        if isinstance(data.get("medusa_choices"), list):
            data["medusa_choices"] = json.dumps(data["medusa_choices"])
        return cls(**data)


@dataclass(frozen=True)
class ResolvedSpec:
    """Every setting decided; what spec.yaml holds and the engine is built from."""

    DERIVED = ("architecture", "speculative_decoding_mode", "world_size", "medusa_heads", "medusa_layers",
               "medusa_nodes", "vocab_size")

    model: str
    backend: str
    gpu: str
    gpus: int
    tp: int
    pp: int
    dtype: str
    quantization: str
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    max_draft_len: int
    medusa: str | None
    medusa_choices: str | None  # brace form, every prefix listed
    lookahead: str | None  # "W,N,G"
    gather_context_logits: bool
    kv_cache_free_gpu_mem_fraction: float
    end_ids: tuple[int, ...]
    # derived, for the reader
    architecture: str
    speculative_decoding_mode: str | None  # medusa | lookahead_decoding | None
    world_size: int
    medusa_heads: int
    medusa_layers: int
    medusa_nodes: int
    vocab_size: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["end_ids"] = list(self.end_ids)
        return d

    def to_yaml(self) -> str:
        import yaml

        return "# trtbuild resolved build spec: every setting, defaults filled from the model\n" + \
            yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """sha256 of the settings (input paths excluded: inputs are identified by their hashes)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("model", "medusa")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @property
    def lookahead_spec(self):
        from trtbuild.lookahead.spec import parse_lookahead

        return parse_lookahead(self.lookahead) if self.lookahead else None
