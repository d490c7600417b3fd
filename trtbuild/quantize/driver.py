"""Drive ModelOpt's worker and publish its export as a checked, hashed trtbuild checkpoint.

The flow (see the package docstring): calibration ids (the user's prompts, or text cut from the
local corpus, as train-medusa reads it) -> one worker job in ModelOpt's environment -> the export
checked tensor by tensor and config key by key -> config.json rewritten from trtbuild's own
(ModelOpt's config export loses `rope_theta` under transformers 5 and writes fields trtbuild does
not) -> the staging directory renamed into place. A failed or interrupted run leaves nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trtbuild.common.errors import BuildError, ConfigError
from trtbuild.common.fsutil import check_output_dir, staging_dir
from trtbuild.common.layout import Mapping
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.common.quant import KV_CACHE, RECIPES, QuantConfig, quant_rank_layout
from trtbuild.common.tokenizer_files import tokenizer_files

WORKER = Path(__file__).with_name("worker.py")
ENV_PYTHON = "TRTBUILD_MODELOPT_PYTHON"
EXTRA_HINT = ("--quantize needs NVIDIA ModelOpt: install 'trtbuild[quantize]' into its own environment "
              f"(`make modelopt` makes one) and set {ENV_PYTHON} to that environment's python")
# safetensors dtype names of the torch dtypes quant_rank_layout names
SAFETENSORS_DTYPES = {"float8_e4m3fn": "F8_E4M3", "int8": "I8", "float32": "F32", "float16": "F16",
                      "bfloat16": "BF16"}
# config.json keys ModelOpt's export and trtbuild's config must agree on
AGREED_KEYS = ("architecture", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "vocab_size", "head_size", "dtype", "mapping", "num_medusa_heads",
               "num_medusa_layers")


@dataclass(frozen=True)
class QuantizeSpec:
    """What to quantize and how to calibrate. `recipe` None with kv_cache "fp8": only the KV cache."""

    recipe: str | None
    kv_cache: str | None = None
    group_size: int = 128  # AWQ recipes only
    calib_prompts: Path | None = None  # None: text from the local corpus
    calib_size: int = 32  # sequences
    calib_seq_len: int = 256  # tokens each (corpus text; a prompt file's prompts are cut to it)
    quantize_medusa_heads: bool = False
    calib_batch: int = 4

    def __post_init__(self) -> None:
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ConfigError(f"unknown --quantize {self.recipe!r} (choose from {', '.join(RECIPES)})")
        if self.kv_cache is not None and self.kv_cache not in KV_CACHE:
            raise ConfigError(f"unknown --kv-cache {self.kv_cache!r} (choose from {', '.join(KV_CACHE)})")
        if self.recipe is None and self.kv_cache is None:
            raise ConfigError("nothing to quantize: give --quantize RECIPE and/or --kv-cache fp8")
        for name in ("group_size", "calib_size", "calib_seq_len", "calib_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def modelopt_python() -> Path:
    """The python of ModelOpt's environment: $TRTBUILD_MODELOPT_PYTHON, else this interpreter if it
    can import modelopt; otherwise a ConfigError naming the extra."""
    given = os.environ.get(ENV_PYTHON)
    if given:
        if not Path(given).is_file():
            raise ConfigError(f"{ENV_PYTHON}={given} does not exist; {EXTRA_HINT}")
        return Path(given)
    if importlib.util.find_spec("modelopt") is not None:
        return Path(sys.executable)
    raise ConfigError(EXTRA_HINT)


def modelopt_versions(python: Path) -> dict[str, str]:
    """The versions the worker will run with (part of a build's key)."""
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('nvidia-modelopt', 'transformers', 'torch')}))")
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120,
                             env=_worker_env(), check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, json.JSONDecodeError, IndexError):
        raise ConfigError(f"{python} cannot report nvidia-modelopt's version; {EXTRA_HINT}") from None


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    return env


def calibration_ids(spec: QuantizeSpec, model_dir: Path) -> tuple[list[list[int]], str]:
    """(token ids of every calibration sequence, where they came from)."""
    from trtbuild.common.corpus import corpus_prompts, read_prompts, split_files, stdlib_files
    from trtbuild.runtime.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir, required=spec.calib_prompts is None)
    if spec.calib_prompts is not None:
        seqs = [s[: spec.calib_seq_len] for s in read_prompts(spec.calib_prompts, tok, chat=False)]
        seqs = [s for s in seqs if s][: spec.calib_size]
        return seqs, f"file:{Path(spec.calib_prompts).resolve()}"
    # the training half of the corpus (train-medusa's split): held-out evaluation uses the other half
    files = split_files(stdlib_files())[0]
    seqs = corpus_prompts(files, tok, spec.calib_size, spec.calib_seq_len, seed=0, chat=False)
    return seqs, "corpus:python-stdlib"


def ids_digest(seqs: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(seqs, separators=(",", ":")).encode()).hexdigest()


def transformers4_view(hf_dir: Path, out: Path) -> Path:
    """`hf_dir` as transformers 4.57 (ModelOpt's) reads it: config.json with `rope_theta` and
    `rope_scaling` in place of transformers 5's `rope_parameters` (4.57 silently takes 10000.0 and
    no scaling when they are missing: transformers==4.57.1:models/llama/configuration_llama.py:179-180),
    every other file linked, not copied."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    params = cfg.pop("rope_parameters", None)
    if isinstance(params, dict):
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        cfg["rope_theta"] = params.get("rope_theta", 10000.0)
        cfg["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for p in Path(hf_dir).iterdir():
        if p.name != "config.json" and p.is_file():
            (out / p.name).symlink_to(p.resolve())
    return out


def _heads_file(heads, source, path: Path) -> dict:
    """The heads in the FasterDecoding layout the worker loads ({h}.{l}.linear.*, {h}.{L}.weight);
    version-2 heads get the base lm_head (ModelOpt's heads always carry one)."""
    from safetensors.torch import save_file

    sd = {}
    lm_head = None
    for h in range(heads.num_heads):
        for j in range(heads.num_layers):
            for part in ("weight", "bias"):
                sd[f"{h}.{j}.linear.{part}"] = heads.tensors[f"medusa.{h}.{j}.linear.{part}"].float().clone()
        w = heads.tensors.get(f"medusa.{h}.lm_head.weight")
        if w is None:
            if lm_head is None:
                names = set(source.names())
                lm_head = source.get("lm_head.weight" if "lm_head.weight" in names else "model.embed_tokens.weight")
            w = lm_head
        sd[f"{h}.{heads.num_layers}.weight"] = w.float().clone()  # version-2 heads share one tensor
    save_file(sd, str(path))
    return {"file": str(path), "num_heads": heads.num_heads, "num_layers": heads.num_layers}


def run_worker(python: Path, job: dict, work: Path, progress: Callable[[int, int], None] | None = None) -> dict:
    """Run one worker job; return its "done" event. Progress lines go to `progress(done, total)`."""
    (work / "job.json").write_text(json.dumps(job))
    err_path = work / "worker.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([str(python), str(WORKER), str(work / "job.json")], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=_worker_env(), cwd=work)
        done = None
        try:
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue  # ModelOpt's own prints
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == "calibrate" and progress:
                    progress(int(event["done"]), int(event["total"]))
                elif event.get("event") in ("done", "error"):
                    done = event
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if done is None or done["event"] == "error" or rc != 0:
        tail = [ln for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
        why = done["error"] if done and done.get("error") else (tail[-1] if tail else f"exit status {rc}")
        raise BuildError(f"ModelOpt quantization failed: {why}")
    return done


def check_export(export: Path, dims, mapping: Mapping, q: QuantConfig, dtype: str, config: dict) -> dict:
    """Every rank file of ModelOpt's export holds exactly quant_rank_layout's tensors (names,
    dtypes, shapes) with finite, positive scales, and its config.json agrees with trtbuild's on
    AGREED_KEYS; returns ModelOpt's config. A BuildError names the first difference."""
    import torch
    from safetensors import safe_open

    try:
        theirs = json.loads((export / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BuildError(f"ModelOpt's export has no readable config.json ({e})") from None
    for key in AGREED_KEYS:
        if theirs.get(key) != config.get(key):
            raise BuildError(f"ModelOpt's export disagrees on {key}: {theirs.get(key)!r}, trtbuild {config.get(key)!r}")
    if QuantConfig.from_dict(theirs.get("quantization")) != q:
        raise BuildError(f"ModelOpt's export has quantization {theirs.get('quantization')}, expected {q}")
    for r in range(mapping.world_size):
        path = export / f"rank{r}.safetensors"
        if not path.is_file():
            raise BuildError(f"ModelOpt's export is missing {path.name}")
        expected = {n: (SAFETENSORS_DTYPES[d], s) for n, (d, s) in quant_rank_layout(dims, mapping, r, q, dtype).items()}
        with safe_open(str(path), "pt") as f:
            got = {n: (f.get_slice(n).get_dtype(), tuple(f.get_slice(n).get_shape())) for n in f.keys()}
            missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            if missing or extra:
                raise BuildError(f"ModelOpt's {path.name} does not have the expected tensors: "
                                 f"missing {missing[:3]}, unexpected {extra[:3]}")
            for n, want in expected.items():
                if got[n] != want:
                    raise BuildError(f"ModelOpt's {path.name}: {n} is {got[n][0]} {list(got[n][1])}, "
                                     f"expected {want[0]} {list(want[1])}")
                if "scaling_factor" in n:
                    s = f.get_tensor(n).float()
                    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
                        raise BuildError(f"ModelOpt's {path.name}: {n} holds a non-finite or non-positive scale "
                                         "(calibration saw no usable data?)")
    return theirs


def quant_block(spec: QuantizeSpec, heads: bool) -> QuantConfig:
    """The `quantization` block ModelOpt 0.37 writes for the spec (what check_export expects):
    lm_head always excluded; Medusa heads excluded as `medusa_heads*` unless quantized
    (nvidia-modelopt==0.37.0:modelopt/torch/export/quant_utils.py get_quant_config, checked by test)."""
    excl = ["lm_head"]
    if heads and not spec.quantize_medusa_heads:
        excl.append("medusa_heads*")
    r = RECIPES[spec.recipe] if spec.recipe else None
    return QuantConfig(algo=r.quant_algo if r else None, kv_cache="FP8" if spec.kv_cache else None,
                       group_size=spec.group_size if r and r.grouped else 128,
                       exclude_modules=tuple(excl) if r else ())


def with_quantization(config: dict, q: QuantConfig) -> dict:
    """trtbuild's checkpoint config.json with ModelOpt's `quantization` block and embedding split."""
    block = {"quant_algo": q.algo, "kv_cache_quant_algo": q.kv_cache}
    if q.recipe and q.recipe.grouped:
        block.update(group_size=q.group_size, has_zero_point=False, pre_quant_scale=True)
    if q.algo:
        block["exclude_modules"] = list(q.exclude_modules)
    # ModelOpt splits the embedding over the tp ranks (modelopt/torch/export/tensorrt_llm_utils.py:159)
    return {**config, "quantization": block, "use_parallel_embedding": True, "embedding_sharding_dim": 0}


def quant_config_json(config: dict, rs) -> dict:
    """`with_quantization` for a resolved build spec (the dry run's predicted config.json)."""
    spec = QuantizeSpec(None if rs.quantization == "none" else rs.quantization, rs.kv_cache, rs.group_size or 128,
                        quantize_medusa_heads=rs.quantize_medusa_heads)
    return with_quantization(config, quant_block(spec, bool(rs.medusa)))


def quantize(hf_dir: Path, out_dir: Path, spec: QuantizeSpec, *, dtype: str = "auto", tp: int = 1, pp: int = 1,
             force: bool = False, medusa: Path | None = None, medusa_choices: str | None = None,
             max_draft_len: int | None = None, lookahead: LookaheadSpec | None = None,
             progress: Callable[[int, int], None] | None = None, python: Path | None = None,
             reference_prompts: int = 2) -> Path:
    """Quantize `hf_dir` (plus Medusa heads) with ModelOpt into a TensorRT-LLM checkpoint at `out_dir`.

    `reference_prompts`: calibration sequences whose post-export fake-quant logits ModelOpt also
    writes (`reference.safetensors` in the checkpoint), the oracle `build` checks the runtime with.
    """
    from trtbuild.convert import KIND, prepare, source_files, write_manifest
    from trtbuild.convert.safetensors_io import sha256_file

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    inputs = [hf_dir, medusa, spec.calib_prompts]
    check_output_dir(out_dir, force, kind=KIND, inputs=inputs)
    prep = prepare(hf_dir, dtype=dtype, tp=tp, pp=pp, medusa=medusa, medusa_choices=medusa_choices,
                   max_draft_len=max_draft_len, lookahead=lookahead)
    if prep.dtype not in ("float16", "bfloat16"):
        raise ConfigError(f"a quantized checkpoint keeps its other tensors in float16 or bfloat16, not {prep.dtype}")
    python = python or modelopt_python()
    seqs, origin = calibration_ids(spec, hf_dir)
    if not seqs:
        raise ConfigError(f"{spec.calib_prompts}: no calibration prompts")
    q = quant_block(spec, prep.heads is not None)
    config = with_quantization(prep.config, q)
    with staging_dir(out_dir, force, kind=KIND, inputs=inputs) as tmp:
        work = tmp / ".modelopt"
        work.mkdir()
        job = {"hf_dir": str(transformers4_view(hf_dir, work / "hf")), "out_dir": str(work / "export"),
               "recipe": spec.recipe, "kv_cache": spec.kv_cache, "group_size": spec.group_size, "tp": tp, "pp": pp,
               "dtype": prep.dtype, "calib_ids": seqs, "calib_batch": spec.calib_batch, "medusa": None,
               "quantize_medusa_heads": spec.quantize_medusa_heads,
               "reference_ids": seqs[:reference_prompts] or None, "reference_out": str(tmp / "reference.safetensors")}
        if prep.heads is not None:
            source = prep.ckpt.open()
            try:
                job["medusa"] = _heads_file(prep.heads, source, work / "heads.safetensors")
            finally:
                source.close()
        t0 = time.perf_counter()
        done = run_worker(python, job, work, progress)
        elapsed = time.perf_counter() - t0
        check_export(work / "export", prep.dims, prep.mapping, q, prep.dtype, config)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        digests = {}
        for r in range(prep.mapping.world_size):
            name = f"rank{r}.safetensors"
            os.replace(work / "export" / name, tmp / name)
            digests[name] = sha256_file(tmp / name)
        shutil.rmtree(work)
        for p in tokenizer_files(hf_dir):
            shutil.copy2(p, tmp / p.name)
        hashes = {p.name: sha256_file(p) for p in source_files(prep.ckpt)}
        if prep.heads is not None:
            hashes.update({f"medusa/{p.name}": sha256_file(p) for p in prep.heads.files})
        if spec.calib_prompts is not None:
            hashes[f"calibration/{Path(spec.calib_prompts).name}"] = sha256_file(Path(spec.calib_prompts))
        options = {**prep.options, "quantization": {
            "recipe": spec.recipe, "quant_algo": q.algo, "kv_cache": spec.kv_cache,
            "group_size": q.group_size if q.recipe and q.recipe.grouped else None,
            "quantize_medusa_heads": spec.quantize_medusa_heads if prep.heads is not None else None,
            "calibration": {"source": origin, "sequences": len(seqs), "tokens": sum(map(len, seqs)),
                            "sha256": ids_digest(seqs), "reference_sequences": min(reference_prompts, len(seqs))},
            "modelopt": done["versions"], "seconds": {**done["seconds"], "total": round(elapsed, 3)}}}
        write_manifest(tmp, prep.ckpt, hashes, digests, options)
    return out_dir


def reference_check(ckpt_dir: Path) -> dict:
    """The reference runtime's logits on the checkpoint against ModelOpt's post-export fake-quant
    logits (`reference.safetensors`: `ids.{i}` [T] and `logits.{i}` [T, V]), over every position:
    {"sequences", "positions", "max_abs_diff", "top1_agreement"}. The runtime dequantizes here, without
    its integer kernels (whose bf16 inputs and outputs are not ModelOpt's fp32 numerics)."""
    from safetensors.torch import load_file

    from trtbuild.runtime import Model

    ref = load_file(str(Path(ckpt_dir) / "reference.safetensors"))
    model = Model.load(Path(ckpt_dir), dtype="float32", device="cpu", int4=False, int8=False)
    worst, agree, total, n = 0.0, 0, 0, 0
    while f"ids.{n}" in ref:
        want = ref[f"logits.{n}"]  # [T, V]
        got = _prefill_logits(model, ref[f"ids.{n}"].tolist())  # [T, V]
        V = min(want.shape[-1], got.shape[-1])
        worst = max(worst, float((got[:, :V] - want[:, :V]).abs().max()))
        agree += int((got[:, :V].argmax(-1) == want[:, :V].argmax(-1)).sum())
        total += want.shape[0]
        n += 1
    return {"sequences": n, "positions": total, "max_abs_diff": round(worst, 6),
            "top1_agreement": round(agree / max(total, 1), 4)}


def _prefill_logits(model, ids: list[int]):
    """Logits [T, V] of one sequence's prefill."""
    import torch

    T = len(ids)
    tokens = torch.tensor([ids])
    cache = model.new_cache(1, T)
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None]  # [1, 1, T, T]
    return model.forward(tokens, torch.arange(T)[None], cache, 0, mask)[0]

