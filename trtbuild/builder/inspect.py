"""`trtbuild inspect DIR`: what a checkpoint, engine or build directory holds; `--verify` rehashes.

A build directory (spec.yaml + engine/) reports its spec and lock; an engine directory its
build_config, lock, speculation mode (`engine_speculation`) and the stored cost calibration
(trtbuild.runtime.cost's CACHE: the machine and engine it was measured for, step time per token
total, the Medusa-heads pass; a malformed file is reported as such, never raised); a checkpoint its
config and manifest. Verification compares every file with the sha256 recorded when trtbuild wrote
it. `render` is the text form of the summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from trtbuild.convert.safetensors_io import sha256_file
from trtbuild.common.engine_config import EngineConfig, engine_speculation
from trtbuild.common.errors import ConfigError
from trtbuild.common.fsutil import MARKER
from trtbuild.runtime.cost import CACHE as COST_CACHE, engine_digest


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
        ckpt = path.parent / "checkpoint" if engine else path
        if (ckpt / MARKER).is_file():  # train-medusa's base-quality report, carried by convert
            quality = (_json(ckpt / MARKER).get("options") or {}).get("medusa_base_quality")
            if quality:
                out["decoding"]["base_quality"] = quality
    elif pre.get("lookahead_config"):
        out["decoding"] = {"mode": "lookahead", **pre["lookahead_config"], "max_draft_len": pre.get("max_draft_len")}
    else:
        out["decoding"] = {"mode": "plain"}
    q = pre.get("quantization") or {}
    if q.get("quant_algo") or q.get("kv_cache_quant_algo"):
        out["quantization"] = {k: q[k] for k in ("quant_algo", "kv_cache_quant_algo", "group_size", "exclude_modules")
                               if q.get(k) is not None}
        ckpt = path.parent / "checkpoint" if engine else path
        if (ckpt / MARKER).is_file():  # the recipe and calibration as the quantize driver recorded them
            recorded = (_json(ckpt / MARKER).get("options") or {}).get("quantization") or {}
            out["quantization"].update({k: recorded[k] for k in ("recipe", "calibration", "modelopt") if k in recorded})
        if engine and (path / "quantization_check.json").is_file():
            out["quantization"]["check"] = _json(path / "quantization_check.json")
    if engine:
        ec = EngineConfig.from_dict(cfg, str(path / "config.json"))
        out["version"] = ec.version
        out["limits"] = {"max_batch_size": ec.max_batch_size, "max_input_len": ec.max_input_len,
                         "max_seq_len": ec.max_seq_len, "max_num_tokens": ec.max_num_tokens,
                         "max_beam_width": ec.build_config.get("max_beam_width"), "max_draft_len": ec.max_draft_len,
                         "usable_seq_len": ec.usable_seq_len}
        out["engines"] = sorted(p.name for p in path.glob("rank*.engine"))
        try:
            out["speculation"] = engine_speculation(path)
        except ConfigError as e:
            out["speculation"] = f"unreadable ({e})"
        if (path / COST_CACHE).exists():
            out["calibration"] = calibration(path / COST_CACHE)
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


def calibration(path: Path) -> dict:
    """The cost calibration stored at `path` ({"tokens", "seconds", "heads", "machine", "engine"}) as
    {"file", "machine", "engine", "this_engine" (whether `engine` is the digest of the engine next to it;
    None: cannot tell), "step_ms": [[tokens, ms], ...], "heads_ms"}; {"file", "error"} when the file is
    not one (unreadable, not JSON, a key missing or of the wrong type)."""
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            raise TypeError(f"a JSON {type(d).__name__}, not an object")
        tokens, seconds = d["tokens"], d["seconds"]
        if not isinstance(tokens, list) or not isinstance(seconds, list) or len(tokens) != len(seconds):
            raise TypeError("tokens and seconds must be lists of one length")
        step = [[_int(t), _float(s) * 1000.0] for t, s in zip(tokens, seconds)]
        heads = d.get("heads", 0.0)
        out = {"file": path.name, "machine": str(d["machine"]), "engine": str(d["engine"]), "this_engine": None,
               "step_ms": step, "heads_ms": _float(heads) * 1000.0}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        why = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        return {"file": path.name, "error": f"malformed ({' '.join(why.split())})"}
    try:
        out["this_engine"] = engine_digest(path.parent) == out["engine"]
    except (OSError, ValueError):  # the engine's own files unreadable: said elsewhere
        pass
    return out


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"token total {v!r} is not an integer")
    return v


def _float(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"time {v!r} is not a number")
    return float(v)


def render(info: dict) -> list[str]:
    """`inspect`'s text lines: `key: value` (JSON for lists and dicts), the calibration as a small table."""
    lines = []
    for k, v in info.items():
        if k == "verified":
            continue
        if k == "calibration":
            lines += _render_calibration(v)
        else:
            lines.append(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return lines


def _render_calibration(c: dict) -> list[str]:
    if "error" in c:
        return [f"calibration: {c['file']} is {c['error']}"]
    whose = {True: " (this engine)", False: " (not this engine: the server measures again)", None: ""}
    lines = [f"calibration: {c['file']}, measured on {c['machine']}",
             f"  for engine {c['engine']}{whose[c['this_engine']]}",
             f"  {'tokens':>8} {'step ms':>10}"]
    lines += [f"  {t:>8} {ms:>10.3f}" for t, ms in c["step_ms"]]
    lines.append(f"  heads pass: {c['heads_ms']:.3f} ms" if c["heads_ms"] else "  heads pass: - (no Medusa heads)")
    return lines
