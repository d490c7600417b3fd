"""`build`: one resolved spec in, an output directory out (checkpoint/, engine/, spec.yaml).

    OUT/
      spec.yaml                 the resolved spec: every setting, defaults filled
      triton_repo/              the Triton model repository serving engine/
      checkpoint/               the TensorRT-LLM checkpoint (trtbuild convert)
      engine/
        config.json             {"version", "pretrained_config", "build_config"}
        trtbuild.lock.json      versions, GPU, spec hash, input/checkpoint/engine file hashes
        rank{r}.engine          tensorrt-llm backend
        trtbuild.json           {"backend", "checkpoint" (../checkpoint: the torch backend's weights),
                                "engine_version", "speculation" (auto | always | off)}
        tokenizer files, generation_config.json

Incremental: the build key hashes the resolved spec, the input files and the versions; a build
whose key matches and whose files still hash as locked is reused as is. Anything else rebuilds
into a staging directory that replaces OUT only when complete and self-checked.

A dry run (`--dry-run`) converts and builds nothing and writes what a build would, for review:

    OUT/
      spec.yaml, commands.sh    the resolved spec; the equivalent trtbuild convert / trtllm-build lines
      build_config.json         the build_config TensorRT-LLM would record (engine.build_config)
      engine_config.json        the engine's predicted config.json: {version, pretrained_config, build_config}
      triton_repo/              the repository, rendered from engine_config.json, naming OUT/engine
      trtbuild.json             {"kind": "dry-run", "backend", "speculation", ...}

It has no engine/ and no lock file, so nothing takes it for a build: a later build into OUT
rebuilds (and replaces it), `trtbuild k8s` refuses it.

OUT is checked by fsutil's output rule: it never is, contains or sits inside an input (the HF model,
the Medusa heads, the spec file). Build and dry run are one command's outputs (marker kinds "build"
and "dry-run"): a build replaces a previous build or dry run without --force; a dry run replaces a
previous dry run without --force and a build only with --force; nothing else but an empty directory
is ever replaced, --force or not.

May import: trtbuild.common, trtbuild.convert, trtbuild.runtime, trtbuild.triton_repo.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trtbuild.builder.engine import (TRTLLM_PIN, build_config, convert_command, diff_build_config, engine_config,
                                     gpu_info, shell, trtllm_build_command, versions)
from trtbuild.builder.validate import Resolved, resolve_spec
from trtbuild.common.engine_config import EngineConfig
from trtbuild.common.errors import BuildError, ConfigError
from trtbuild.common.fsutil import MARKER, check_inputs, check_output_dir, marker_kind, staging_dir, sweep_stale
from trtbuild.convert.safetensors_io import sha256_file
from trtbuild.common.spec import BuildSpec, ResolvedSpec
from trtbuild.common.tokenizer_files import tokenizer_files

LOCK = "trtbuild.lock.json"
QUANT_CHECK = "quantization_check.json"  # engine/: the runtime vs ModelOpt's fake-quant logits


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    resolved: Resolved
    reused: bool
    lock: dict


def input_files(spec_model: str, medusa: str | None, calib_prompts: str | None = None) -> dict[str, Path]:
    from trtbuild.convert import source_files
    from trtbuild.convert.hf import read_hf_dir

    files = {f"model/{p.name}": p for p in source_files(read_hf_dir(Path(spec_model)))}
    if medusa:
        from trtbuild.convert.medusa_heads import read_heads

        files.update({f"medusa/{p.name}": p for p in read_heads(Path(medusa)).files})
    if calib_prompts:
        files[f"calibration/{Path(calib_prompts).name}"] = Path(calib_prompts)
    return files


def quantized(rs: ResolvedSpec) -> bool:
    """Whether the build quantizes (weights and/or the KV cache) through ModelOpt."""
    return rs.quantization != "none" or rs.kv_cache is not None


def quantize_spec(rs: ResolvedSpec):
    from trtbuild.quantize import QuantizeSpec

    return QuantizeSpec(None if rs.quantization == "none" else rs.quantization, rs.kv_cache, rs.group_size or 128,
                        Path(rs.calib_prompts) if rs.calib_prompts else None, rs.calib_size or 32,
                        quantize_medusa_heads=rs.quantize_medusa_heads)


def build_key(resolved: Resolved, inputs: dict[str, str], vers: dict) -> str:
    blob = {"spec": resolved.spec.digest(), "inputs": inputs, "versions": vers}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def locked_files(lock: dict) -> dict[str, str]:
    """{path relative to OUT: sha256} of everything a build produced."""
    out = {f"checkpoint/{k}": v for k, v in lock.get("checkpoint", {}).items()}
    out.update({f"engine/{k}": v for k, v in lock.get("engine", {}).items()})
    return out


def verify_build(out_dir: Path, lock: dict | None = None) -> list[str]:
    """Files of a build that are missing or no longer hash as locked (empty: intact)."""
    out_dir = Path(out_dir)
    if lock is None:
        lock = read_lock(out_dir / "engine")
    bad = []
    for rel, digest in sorted(locked_files(lock).items()):
        p = out_dir / rel
        if not p.is_file():
            bad.append(f"{rel} (missing)")
        elif sha256_file(p) != digest:
            bad.append(f"{rel} (changed)")
    return bad


def read_lock(engine_dir: Path) -> dict:
    path = Path(engine_dir) / LOCK
    try:
        return json.loads(path.read_text())
    except OSError:
        raise ConfigError(f"{engine_dir} has no {LOCK}: not an engine directory built by trtbuild") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None


OWN_KINDS = ("build", "dry-run")  # marker kinds of build's outputs


def _is_build_dir(out: Path) -> bool:
    """Whether `out` holds a build or a dry run (what `build` replaces without --force)."""
    return marker_kind(out) in OWN_KINDS and (out / "spec.yaml").is_file()


def _inputs(rs, spec_file: Path | None) -> list:
    return [rs.model, rs.medusa, spec_file, rs.calib_prompts]


def build(spec: BuildSpec, out_dir: Path, *, force: bool = False, dry_run: bool = False, verify: bool = True,
          echo: Callable[[str], None] = print, spec_file: Path | None = None,
          progress: Callable[[int, int], None] | None = None, allow_base_drift: bool = False) -> BuildResult:
    """Build `spec` into `out_dir` (see the module docstring); `spec_file`: the YAML it came from, an input;
    `progress(done, total)`: calibration progress of a quantized build; `allow_base_drift`: build a
    Medusa-2 model whose tuned base drifted from its original (common.medusa.quality)."""
    from trtbuild.common.medusa.quality import check_base_drift

    resolved = resolve_spec(spec)
    rs = resolved.spec
    out = Path(out_dir)
    inputs = _inputs(rs, spec_file)
    check_inputs(out, inputs)
    drift = check_base_drift(Path(rs.medusa), allow_base_drift) if rs.medusa else None
    if drift:
        echo(f"note: {drift}")
    sweep_stale(out)  # a killed run's leftovers first: it may have moved the previous output aside
    for note in resolved.notes:
        echo(f"note: {note}")
    if dry_run:
        return _dry_run(resolved, out, force, echo, inputs)
    if rs.backend == "tensorrt-llm":
        from trtbuild.builder.trtllm import check_available

        check_available()
    vers = versions()
    if quantized(rs):
        from trtbuild.quantize import modelopt_python
        from trtbuild.quantize.driver import modelopt_versions

        vers = {**vers, "modelopt": modelopt_versions(modelopt_python())}
    hashes = {name: sha256_file(p) for name, p in input_files(rs.model, rs.medusa, rs.calib_prompts).items()}
    key = build_key(resolved, hashes, vers)
    if _is_build_dir(out) and (out / "engine" / LOCK).is_file():
        lock = read_lock(out / "engine")
        if lock.get("build_key") == key and not verify_build(out, lock):
            echo(f"{out} is up to date (same spec, inputs and versions): nothing to build")
            return BuildResult(out, resolved, True, lock)
    replace_ok = force or _is_build_dir(out)
    check_output_dir(out, replace_ok, kind="build", replaces=("dry-run",), inputs=inputs)
    with staging_dir(out, replace_ok, kind="build", replaces=("dry-run",), inputs=inputs) as tmp:
        _build_into(tmp, resolved, echo, progress)
        if verify and rs.speculative_decoding_mode:
            self_check(tmp / "engine", echo)
        from trtbuild.triton_repo import write_repo

        (tmp / "spec.yaml").write_text(rs.to_yaml())
        write_repo(tmp / "engine", tmp / "triton_repo", engine_dir_in_repo=_engine_dir_in_repo(rs, out))
        lock = _write_lock(tmp, resolved, key, hashes, vers)
        (tmp / MARKER).write_text(json.dumps({"kind": "build", "build_key": key}, indent=2) + "\n")
    echo(f"wrote {out} ({rs.backend} backend, {rs.speculative_decoding_mode or 'no'} speculative decoding)")
    return BuildResult(out, resolved, False, lock)


def _build_into(tmp: Path, resolved: Resolved, echo: Callable[[str], None],
                progress: Callable[[int, int], None] | None = None) -> None:
    from trtbuild.convert import convert

    rs = resolved.spec
    args = dict(dtype=rs.dtype, tp=rs.tp, pp=rs.pp, medusa=Path(rs.medusa) if rs.medusa else None,
                medusa_choices=rs.medusa_choices, max_draft_len=rs.max_draft_len if rs.medusa else None,
                lookahead=rs.lookahead_spec)
    if quantized(rs):
        from trtbuild.quantize import quantize
        from trtbuild.quantize.driver import reference_check

        qs = quantize_spec(rs)
        echo(f"quantizing with ModelOpt: {rs.quantization}" + (f", KV cache {rs.kv_cache}" if rs.kv_cache else "")
             + f" ({qs.calib_size} calibration sequences)")
        ckpt = quantize(Path(rs.model), tmp / "checkpoint", qs, progress=progress, **args)
        manifest = json.loads((ckpt / MARKER).read_text())["options"]["quantization"]
        echo(f"calibrated and exported in {manifest['seconds']['total']:.1f} s (nvidia-modelopt "
             f"{manifest['modelopt']['nvidia-modelopt']})")
        check = reference_check(ckpt)
        echo(f"quantized-model check: the runtime's logits vs ModelOpt's fake-quant model on "
             f"{manifest['calibration']['reference_sequences']} calibration sequences: max |diff| "
             f"{check['max_abs_diff']:.4g}, top-1 agreement {check['top1_agreement']:.1%}")
    else:
        ckpt, check = convert(Path(rs.model), tmp / "checkpoint", **args), None
    engine = tmp / "engine"
    engine.mkdir()
    if check is not None:  # hashed into the lock with the engine's other files
        (engine / QUANT_CHECK).write_text(json.dumps(check, indent=2) + "\n")
    pretrained = json.loads((ckpt / "config.json").read_text())
    if rs.backend == "tensorrt-llm":
        from trtbuild.builder.trtllm import build_engines

        echo(f"building {rs.world_size} engine(s) with TensorRT-LLM")
        version = build_engines(rs, ckpt, engine)
        recorded = EngineConfig.read(engine)  # as TensorRT-LLM wrote it
        for note in diff_build_config(build_config(rs), recorded.build_config):
            echo(f"note: {note}")
        cfg = recorded.to_dict()
        # TensorRT-LLM's pretrained_config may not keep the checkpoint's (W, N, G): the server reads it there
        cfg["pretrained_config"] = {**cfg["pretrained_config"]}
        cfg["pretrained_config"].setdefault("lookahead_config", pretrained.get("lookahead_config"))
    else:
        version = _engine_version(rs)
        cfg = engine_config(rs, pretrained, version)
    (engine / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (engine / MARKER).write_text(json.dumps(engine_manifest(rs, version), indent=2) + "\n")
    for f in tokenizer_files(ckpt):
        shutil.copy2(f, engine / f.name)


def engine_manifest(rs: ResolvedSpec, version: str) -> dict:
    """The engine directory's `trtbuild.json` (engine_config.MANIFEST): the backend, where the weights
    are, the engine's version and the speculation mode the server starts in (`engine_speculation`)."""
    return {"backend": rs.backend, "checkpoint": "../checkpoint", "engine_version": version,
            "speculation": rs.speculation}


def _write_lock(tmp: Path, resolved: Resolved, key: str, inputs: dict[str, str], vers: dict) -> dict:
    rs = resolved.spec
    manifest = json.loads((tmp / "checkpoint" / MARKER).read_text())
    engine_files = {p.name: sha256_file(p) for p in sorted((tmp / "engine").iterdir()) if p.is_file()}
    lock = {"build_key": key, "spec_hash": rs.digest(), "backend": rs.backend, "versions": vers,
            "gpu": gpu_info(rs.gpu), "inputs": inputs,
            "checkpoint": {**manifest["sha256"], MARKER: sha256_file(tmp / "checkpoint" / MARKER)},
            "engine": engine_files}
    (tmp / "engine" / LOCK).write_text(json.dumps(lock, indent=2) + "\n")
    return lock


DRY_RUN_FILES = ("spec.yaml", "build_config.json", "engine_config.json", "commands.sh", "triton_repo")


def _engine_version(rs) -> str:
    """config.json's "version": trtbuild's for the torch backend; for tensorrt-llm, TensorRT-LLM's
    own version (a dry run, which has none, records the pinned line)."""
    if rs.backend == "torch":
        from trtbuild import __version__

        return f"trtbuild-{__version__}+torch"
    return f"{TRTLLM_PIN}.x"


def _engine_dir_in_repo(rs, out: Path) -> str:
    """The engine path the repository names: relative for torch, OUT/engine absolute for tensorrt-llm
    (where the build will put it; the tensorrtllm backend needs an absolute path)."""
    return "../../engine" if rs.backend == "torch" else str(Path(out).resolve() / "engine")


def _dry_run(resolved: Resolved, out: Path, force: bool, echo: Callable[[str], None], inputs: list) -> BuildResult:
    """Print the plan and the equivalent commands; write everything a build would write except the
    checkpoint and the engine (see the module docstring), each derived as the build derives it."""
    from trtbuild.builder.engine import build_config, checkpoint_config
    from trtbuild.triton_repo import write_repo

    rs = resolved.spec
    if _is_build_dir(out) and (out / "engine").is_dir() and not force:
        raise ConfigError(f"{out} holds a build; a dry run does not replace it (choose another -o, or --force)")
    replace_ok = force or _is_build_dir(out)
    version = _engine_version(rs)
    predicted = engine_config(rs, checkpoint_config(rs, resolved.dims), version)
    with staging_dir(out, replace_ok, kind="dry-run", replaces=("build",), inputs=inputs) as tmp:
        (tmp / "spec.yaml").write_text(rs.to_yaml())
        (tmp / "build_config.json").write_text(json.dumps(build_config(rs), indent=2) + "\n")
        (tmp / "engine_config.json").write_text(json.dumps(predicted, indent=2) + "\n")
        cmds = [shell(convert_command(rs, out / "checkpoint"))]
        if rs.backend == "tensorrt-llm":
            cmds.append(shell(trtllm_build_command(rs, out / "checkpoint", out / "engine")))
        (tmp / "commands.sh").write_text("#!/bin/sh\nset -e\n" + "\n".join(cmds) + "\n")
        # the repository is rendered from an engine directory as _build_into writes it (config.json,
        # marker, tokenizer files); this one holds no weights and is not published
        preview = tmp / ".engine-preview"
        preview.mkdir()
        (preview / "config.json").write_text(json.dumps(predicted, indent=2) + "\n")
        (preview / MARKER).write_text(json.dumps({**engine_manifest(rs, version), "dry_run": True}, indent=2) + "\n")
        for f in tokenizer_files(Path(rs.model)):
            shutil.copy2(f, preview / f.name)
        write_repo(preview, tmp / "triton_repo", engine_dir_in_repo=_engine_dir_in_repo(rs, out))
        shutil.rmtree(preview)
        (tmp / MARKER).write_text(json.dumps({"kind": "dry-run", "backend": rs.backend, "speculation": rs.speculation,
                                              "engine_dir": str(Path(out).resolve() / "engine"),
                                              "files": list(DRY_RUN_FILES)}, indent=2) + "\n")
    p = resolved.plan
    echo(f"plan: {p.summary()}")
    for c in cmds:
        echo(c)
    listing = ", ".join(f"{out}/{name}" + ("/" if name == "triton_repo" else "") for name in DRY_RUN_FILES)
    echo(f"wrote {listing} (dry run: nothing converted or built; no engine/)")
    return BuildResult(out, resolved, False, {})


def self_check(engine_dir: Path, echo: Callable[[str], None], new_tokens: int = 16) -> None:
    """Greedy output with and without speculation must agree token for token (reference runtime)."""
    from trtbuild.runtime import Model, Request, decode, generate
    from trtbuild.runtime.tokenizer import load_tokenizer

    model = Model.load(engine_dir, dtype="float32", device="cpu")
    tok = load_tokenizer(engine_dir, required=False)
    texts = ("def fibonacci(n):\n    ", "The capital of France is")
    if tok is not None:
        prompts = [tuple(tok(t)["input_ids"]) for t in texts]
    else:
        prompts = [tuple(range(1, 9)), tuple(range(9, 13))]
    reqs = [Request(p, new_tokens) for p in prompts]
    plain = [r.output_ids for r in generate(model, reqs)]
    spec = decode(model, reqs, "engine")  # what the server decodes with: the engine's own decoding
    for i, (p, s) in enumerate(zip(plain, spec)):
        if s.output_ids != p:
            raise BuildError(f"self-check failed: prompt {i} decodes differently with speculative decoding "
                             f"({list(s.output_ids[:8])}... vs {list(p[:8])}...); nothing was written")
    echo(f"self-check: greedy speculative output equals plain output ({len(reqs)} prompts x {new_tokens} tokens)")
