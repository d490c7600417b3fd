"""`trtbuild inspect DIR`: what a checkpoint, engine or build directory holds; `--verify` rehashes.

A build directory (spec.yaml + engine/) reports its spec and lock; an engine directory its
build_config and lock; a checkpoint its config and manifest. Verification compares every file
with the sha256 recorded when trtbuild wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path

from trtbuild.convert.safetensors_io import sha256_file
from trtbuild.common.engine_config import EngineConfig
from trtbuild.common.errors import ConfigError
from trtbuild.common.fsutil import MARKER


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None


def inspect_dir(path: Path, verify: bool = False) -> dict:
    """A JSON-ready summary of `path`; with `verify`, `verified` lists bad files (empty: intact)."""
    from trtbuild.builder import LOCK, read_lock, verify_build

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory")
    if (path / "spec.yaml").is_file() and (path / "engine").is_dir():
        summary = inspect_dir(path / "engine")
        summary.update(kind="build", path=str(path))
        if verify:
            summary["verified"] = verify_build(path)
        return summary
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is neither a checkpoint, an engine nor a build directory (no config.json)")
    cfg = _json(path / "config.json")
    engine = isinstance(cfg.get("pretrained_config"), dict)
    pre = cfg["pretrained_config"] if engine else cfg
    if "architecture" not in pre:
        raise ConfigError(f"{path}: config.json is not a TensorRT-LLM checkpoint or engine config")
    mapping = pre.get("mapping") or {}
    out = {"kind": "engine" if engine else "checkpoint", "path": str(path),
           "architecture": pre.get("architecture"), "dtype": pre.get("dtype"),
           "tp": mapping.get("tp_size", 1), "pp": mapping.get("pp_size", 1),
           "vocab_size": pre.get("vocab_size"), "layers": pre.get("num_hidden_layers")}
    if pre.get("architecture") == "MedusaForCausalLM":
        out["decoding"] = {"mode": "medusa", "heads": pre.get("num_medusa_heads"),
                           "nodes": len(pre.get("medusa_choices") or []), "max_draft_len": pre.get("max_draft_len")}
    elif pre.get("lookahead_config"):
        out["decoding"] = {"mode": "lookahead", **pre["lookahead_config"], "max_draft_len": pre.get("max_draft_len")}
    else:
        out["decoding"] = {"mode": "plain"}
    if engine:
        ec = EngineConfig.from_dict(cfg, str(path / "config.json"))
        out["version"] = ec.version
        out["limits"] = {"max_batch_size": ec.max_batch_size, "max_input_len": ec.max_input_len,
                         "max_seq_len": ec.max_seq_len, "max_num_tokens": ec.max_num_tokens,
                         "max_beam_width": ec.build_config.get("max_beam_width"), "max_draft_len": ec.max_draft_len,
                         "usable_seq_len": ec.usable_seq_len}
        out["engines"] = sorted(p.name for p in path.glob("rank*.engine"))
        if (path / LOCK).is_file():
            lock = read_lock(path)
            out["versions"] = lock.get("versions")
            out["gpu"] = lock.get("gpu")
            out["spec_hash"] = lock.get("spec_hash")
            if verify:
                out["verified"] = [f"{n} (missing)" if not (path / n).is_file() else f"{n} (changed)"
                                   for n, d in sorted(lock.get("engine", {}).items())
                                   if not (path / n).is_file() or sha256_file(path / n) != d]
    elif (path / MARKER).is_file():
        manifest = _json(path / MARKER)
        out["versions"] = {"trtbuild": manifest.get("trtbuild_version")}
        out["source"] = (manifest.get("source") or {}).get("path")
        if verify:
            out["verified"] = [f"{n} (missing)" if not (path / n).is_file() else f"{n} (changed)"
                               for n, d in sorted((manifest.get("sha256") or {}).items())
                               if not (path / n).is_file() or sha256_file(path / n) != d]
    elif verify:
        raise ConfigError(f"{path} has no {MARKER}: no hashes to verify against")
    return out
