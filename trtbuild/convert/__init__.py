"""HF checkpoint -> TensorRT-LLM checkpoint (`config.json` + `rank{r}.safetensors`).

`convert(hf_dir, out_dir, dtype=..., tp=..., pp=...)` dispatches on `config.json["architectures"]`
through ARCHITECTURES, plans every rank (strict accounting, see rules.py), then streams tensor by
tensor into a temporary directory next to `out_dir` and renames it into place: `out_dir` either
appears complete or not at all. The output is self-contained: tokenizer, chat template and
generation config are copied, and `trtbuild.json` records its kind ("checkpoint"), the version, the
options and the sha256 of every source and output file. `out_dir` follows fsutil's output rule: it
never is, contains or sits inside the HF directory or the Medusa heads.

May import: trtbuild.common.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from trtbuild.convert.hf import ChainedSource, DictSource, HFCheckpoint, read_hf_dir
from trtbuild.common.layout import Dims, Mapping, rank_layout, validate_dims
from trtbuild.convert.llama import LLAMA, MISTRAL
from trtbuild.convert.medusa_heads import MedusaHeads, medusa_config, read_heads
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.convert.qwen2 import QWEN2
from trtbuild.convert.rules import Family, iter_rank, plan_ranks
from trtbuild.convert.safetensors_io import StreamingWriter, sha256_file
from trtbuild.common.errors import ConfigError
from trtbuild.common.fsutil import MARKER, check_output_dir, staging_dir
# TOKENIZER_FILES (re-exported): what makes the checkpoint self-contained for tokenisation and generation
from trtbuild.common.tokenizer_files import TOKENIZER_FILES, tokenizer_files  # noqa: F401

KIND = "checkpoint"  # the marker kind of convert's output

ARCHITECTURES: dict[str, Family] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": MISTRAL,
    "Qwen2ForCausalLM": QWEN2,
}

DTYPES = ("float32", "float16", "bfloat16")


MANIFEST = MARKER


def family_for(hf_config: dict) -> Family:
    """The family for `config.json["architectures"]`, or a ConfigError naming what is supported."""
    archs = hf_config.get("architectures") or []
    if not isinstance(archs, list) or len(archs) != 1:
        raise ConfigError(f"config.json must name exactly one architecture, got {archs!r}")
    if archs[0] not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {archs[0]!r} (supported: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[archs[0]]


def resolve_dtype(dtype: str, hf_config: dict) -> str:
    """'auto' takes the checkpoint's dtype, with float32 mapped to float16 as TensorRT-LLM does."""
    if dtype == "auto":
        src = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float16"
        return src if src in ("float16", "bfloat16") else "float16"
    if dtype not in DTYPES:
        raise ConfigError(f"unsupported dtype {dtype!r} (choose from auto, {', '.join(DTYPES)})")
    return dtype


@dataclass(frozen=True)
class Prepared:
    """What convert and quantize derive alike from the HF directory and the options, before any tensor is read."""

    ckpt: HFCheckpoint
    family: Family
    dtype: str
    mapping: Mapping
    dims: Dims  # Medusa heads included
    config: dict  # the checkpoint's config.json
    options: dict  # the manifest's options
    heads: MedusaHeads | None


def prepare(hf_dir: Path, *, dtype: str = "auto", tp: int = 1, pp: int = 1, medusa: Path | None = None,
            medusa_choices: str | None = None, max_draft_len: int | None = None,
            lookahead: LookaheadSpec | None = None) -> Prepared:
    """Read and check `hf_dir` (and the heads) and derive the checkpoint's config.json and options."""
    if medusa is not None and lookahead is not None:
        raise ConfigError("--medusa and --lookahead are exclusive: an engine has one speculative decoding mode")
    ckpt = read_hf_dir(Path(hf_dir))
    family = family_for(ckpt.config)
    dtype = resolve_dtype(dtype, ckpt.config)
    mapping = Mapping(tp, pp)
    dims = family.dims(ckpt.config)
    heads = None
    if medusa is not None:
        heads = read_heads(Path(medusa))
        heads.check_base(dims.hidden_size, dims.vocab_size)
        dims = replace(dims, medusa_heads=heads.num_heads, medusa_layers=heads.num_layers)
    elif medusa_choices is not None or max_draft_len is not None:
        raise ConfigError("--medusa-choices and --max-draft-len need --medusa HEADS")
    validate_dims(dims, mapping)
    config = family.trt_config(ckpt.config, dims, dtype, mapping)
    options = {"dtype": dtype, "tp_size": tp, "pp_size": pp, "architecture": family.name}
    if heads is not None:
        from trtbuild.common.medusa.quality import read_base_quality

        config, medusa_options = medusa_config(config, heads, medusa_choices, max_draft_len)
        options.update(medusa_options)
        quality = read_base_quality(Path(medusa))  # train-medusa's record, shown by `inspect`
        if quality is not None:
            options["medusa_base_quality"] = quality
    if lookahead is not None:
        config = {**config, "lookahead_config": lookahead.to_dict(), "max_draft_len": lookahead.max_draft_len}
        options["lookahead"] = lookahead.to_dict()
    return Prepared(ckpt, family, dtype, mapping, dims, config, options, heads)


def convert(hf_dir: Path, out_dir: Path, *, dtype: str = "auto", tp: int = 1, pp: int = 1,
            force: bool = False, medusa: Path | None = None, medusa_choices: str | None = None,
            max_draft_len: int | None = None, lookahead: LookaheadSpec | None = None) -> Path:
    """Convert `hf_dir` (plus Medusa heads) into a TensorRT-LLM checkpoint at `out_dir`; return it.

    `lookahead`: a (W, N, G) stored with the checkpoint (`lookahead_config` and the engine's
    `max_draft_len` by TensorRT-LLM's formula) so nothing downstream asks again.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if medusa is not None and lookahead is not None:
        raise ConfigError("--medusa and --lookahead are exclusive: an engine has one speculative decoding mode")
    inputs = [hf_dir, medusa]
    check_output_dir(out_dir, force, kind=KIND, inputs=inputs)
    prep = prepare(hf_dir, dtype=dtype, tp=tp, pp=pp, medusa=medusa, medusa_choices=medusa_choices,
                   max_draft_len=max_draft_len, lookahead=lookahead)
    ckpt, family, dtype, mapping, dims, config, options, heads = (
        prep.ckpt, prep.family, prep.dtype, prep.mapping, prep.dims, prep.config, prep.options, prep.heads)
    subs: dict[str, str] = {}
    source = ckpt.open()
    if heads is not None:
        source = ChainedSource(source, DictSource(heads.tensors))
        if not heads.has_lm_head:  # version-2 heads: each gets a copy of the base lm_head
            subs = {f"medusa.{h}.lm_head.weight": "lm_head.weight" for h in range(heads.num_heads)}
    # hashing the sources (GIL released) overlaps the conversion, which reads the same files
    stop = threading.Event()
    pool = ThreadPoolExecutor(1)
    try:
        plans = plan_ranks(family, ckpt.config, dims, source, mapping, subs)
        source_hashes = pool.submit(lambda: {p.name: sha256_file(p, stop) for p in source_files(ckpt)})
        with staging_dir(out_dir, force, kind=KIND, inputs=inputs) as tmp:
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            digests = {f"rank{r}.safetensors": _write_rank(tmp / f"rank{r}.safetensors", steps, source, dims,
                                                             mapping, r, dtype)
                       for r, steps in enumerate(plans)}
            for p in tokenizer_files(hf_dir):
                shutil.copy2(p, tmp / p.name)
            hashes = source_hashes.result()
            if heads is not None:
                hashes.update({f"medusa/{p.name}": sha256_file(p) for p in heads.files})
            write_manifest(tmp, ckpt, hashes, digests, options)
    finally:
        stop.set()  # a failed conversion does not wait for the hashes
        pool.shutdown(wait=True)
        source.close()
    return out_dir


def _write_rank(path: Path, steps: list, source, dims, mapping: Mapping, rank: int, dtype: str) -> str:
    """Stream one rank file; return its sha256 (computed while writing)."""
    import torch

    layout = rank_layout(dims, mapping, rank)
    writer = StreamingWriter(path, {name: (dtype, shape) for name, shape in layout.items()})
    try:
        for name, tensor in iter_rank(steps, source, dims, mapping, rank, getattr(torch, dtype)):
            writer.write(name, tensor)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.sha256


def source_files(ckpt: HFCheckpoint) -> list[Path]:
    indexes = sorted(ckpt.path.glob("*.index.json"))
    return [ckpt.path / "config.json", *indexes, *ckpt.weight_files, *tokenizer_files(ckpt.path)]


def write_manifest(tmp: Path, ckpt: HFCheckpoint, source_hashes: dict[str, str], digests: dict[str, str],
                    options: dict) -> None:
    from trtbuild import __version__

    manifest = {
        "kind": KIND,
        "trtbuild_version": __version__,
        "created_unix": int(time.time()),
        "options": options,
        "source": {"path": str(ckpt.path.resolve()), "weight_format": ckpt.weight_format,
                   "sha256": source_hashes},
        "sha256": {p.name: digests.get(p.name) or sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
