"""Shared fixtures: tiny random HF models written as real safetensors directories, the demo model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def tiny_config(arch: str, **overrides):
    """A 3-layer model: 8 heads / 2 kv heads (GQA; kv < tp at tp=4), vocab 101 (padding for tp 2, 4)."""
    import transformers

    kw = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
              num_key_value_heads=2, vocab_size=101, max_position_embeddings=512, rms_norm_eps=1e-5,
              tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)
    if arch == "MistralForCausalLM":
        kw["sliding_window"] = 4096
    kw.update(overrides)
    cls = {"LlamaForCausalLM": transformers.LlamaConfig, "MistralForCausalLM": transformers.MistralConfig,
           "Qwen2ForCausalLM": transformers.Qwen2Config}[arch]
    return cls(**kw)


def make_hf_model(path: Path, arch: str = "LlamaForCausalLM", seed: int = 0, **overrides):
    """Build a random fp32 HF model, save it to `path` (safetensors) and return it in eval mode."""
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_config(arch, **overrides)
    model = getattr(transformers, arch)(cfg).eval()
    # HF zero-initialises nothing we rely on, but biases of Qwen2 start at 0: make them matter
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


def word_level_model(path: Path) -> Path:
    """A tiny Llama (`make_hf_model`) with a 101-token word-level tokenizer: w0..w96 and four specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    make_hf_model(path)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": 4 + i for i in range(97)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(path)
    return path


def random_heads(path: Path, heads: int, hidden: int = 64, seed: int = 0) -> Path:
    """Medusa heads with one ResBlock each, random, as a safetensors file (the base lm_head is shared)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({f"{h}.0.linear.{n}": torch.randn(*s, generator=g) for h in range(heads)
               for n, s in (("weight", (hidden, hidden)), ("bias", (hidden,)))}, str(path))
    return path


def speculative_checkpoints(d: Path, choices: str = "{0}, {1}, {0, 0}, {0, 1}, {0, 0, 0}") -> dict[str, Path]:
    """A tiny Llama as plain, lookahead (4,3,4) and Medusa (3 heads, `choices`) fp32 checkpoints under d."""
    from safetensors.torch import save_file

    from trtbuild.convert import convert
    from trtbuild.common.lookahead.spec import LookaheadSpec

    make_hf_model(d / "hf")
    g = torch.Generator().manual_seed(3)
    heads = {}
    for h in range(3):
        heads[f"{h}.0.linear.weight"] = torch.randn(64, 64, generator=g) * 0.1
        heads[f"{h}.0.linear.bias"] = torch.randn(64, generator=g) * 0.1
    save_file(heads, str(d / "medusa_lm_head.safetensors"))
    return {"plain": convert(d / "hf", d / "plain", dtype="float32"),
            "lookahead": convert(d / "hf", d / "la", dtype="float32", lookahead=LookaheadSpec(4, 3, 4)),
            "medusa": convert(d / "hf", d / "medusa", dtype="float32", medusa=d / "medusa_lm_head.safetensors",
                              medusa_choices=choices)}


def engine_dir(hf: Path, tmp: Path, backend: str = "tensorrt-llm", *, max_batch_size: int = 64,
               trtllm_version: str = "1.2.1", **kw) -> Path:
    """An engine directory as `build` leaves it (for tensorrt-llm: config.json as TensorRT-LLM writes
    it, without the rank engines, which need a GPU), with spec.yaml beside it."""
    import json

    from trtbuild.builder.engine import engine_config
    from trtbuild.builder.validate import resolve_spec
    from trtbuild.convert import convert
    from trtbuild.common.fsutil import MARKER
    from trtbuild.common.spec import BuildSpec

    spec = BuildSpec(model=str(hf), backend=backend, gpu="h100-80gb" if backend == "tensorrt-llm" else "cpu",
                     max_batch_size=max_batch_size, max_seq_len=256, max_input_len=200, **kw)
    rs = resolve_spec(spec).spec
    ckpt = convert(hf, tmp / "checkpoint", dtype=rs.dtype, tp=rs.tp, medusa=Path(rs.medusa) if rs.medusa else None,
                   medusa_choices=rs.medusa_choices, lookahead=rs.lookahead_spec)
    engine = tmp / "engine"
    engine.mkdir()
    pre = json.loads((ckpt / "config.json").read_text())
    (engine / "config.json").write_text(json.dumps(engine_config(rs, pre, trtllm_version), indent=2))
    (engine / MARKER).write_text(json.dumps({"backend": backend, "checkpoint": "../checkpoint",
                                             "speculation": rs.speculation}))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (ckpt / f).is_file():
            (engine / f).write_bytes((ckpt / f).read_bytes())
    (tmp / "spec.yaml").write_text(rs.to_yaml())
    return engine


@pytest.fixture
def tiny_llama(tmp_path: Path):
    d = tmp_path / "hf"
    model = make_hf_model(d)
    return d, model


DEMO_DIR = Path(os.environ.get("TRTBUILD_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "test"))


@pytest.fixture(scope="session")
def demo_hf() -> Path:
    """The SmolLM2 demo model as a HF directory (materialised once per machine, offline)."""
    from trtbuild.convert.demo import find_gguf, write_demo_model
    from trtbuild.common.errors import ConfigError

    out = DEMO_DIR / "smollm2-hf"
    if not (out / "model.safetensors").is_file():
        try:
            find_gguf()
        except ConfigError as e:
            pytest.fail(f"demo model unavailable: {e}")
        write_demo_model(out, force=True)
    return out


@pytest.fixture(scope="session")
def demo_ckpt(demo_hf: Path, tmp_path_factory) -> Path:
    """The demo model converted by this session's code (never cached across runs)."""
    from trtbuild.convert import convert

    return convert(demo_hf, tmp_path_factory.mktemp("smollm2") / "ckpt")


SERVE_KINDS = ("plain", "medusa", "lookahead")


def scheduler_gauges(metrics_text: str) -> dict[str, float]:
    """The torch tensorrt_llm model's scheduler gauges (trtbuild_scheduler_<name>) in a Prometheus text."""
    import re

    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^trtbuild_scheduler_(\w+)\{[^}]*\} (\S+)$", metrics_text, re.M)}


@pytest.fixture(scope="session")
def serve_builds(demo_hf, tmp_path_factory) -> dict[str, Path]:
    """SmolLM2 torch builds to serve (plain, Medusa with small random heads, lookahead 3,3,2;
    max_seq_len 512, max_input_len 256, 16 rows), built once for every serving test."""
    from click.testing import CliRunner

    from trtbuild.cli import cli

    d = tmp_path_factory.mktemp("serve")
    g = torch.Generator().manual_seed(0)
    heads = {f"{h}.0.linear.{n}": torch.randn(*s, generator=g) * 0.01
             for h in range(2) for n, s in (("weight", (576, 576)), ("bias", (576,)))}
    torch.save(heads, d / "heads.pt")
    extra = {"plain": [], "medusa": ["--medusa", str(d / "heads.pt"), "--medusa-choices", "{0}, {0, 0}, {1}"],
             "lookahead": ["--lookahead", "3,3,2"]}
    out = {}
    for kind in SERVE_KINDS:
        r = CliRunner().invoke(cli, [str(demo_hf), "-o", str(d / kind), "--max-seq-len", "512", "--max-input-len",
                                     "256", "--max-batch-size", "16", "--no-verify", *extra[kind]])
        assert r.exit_code == 0, r.output
        out[kind] = d / kind
    return out


# --- NVIDIA ModelOpt, in its own venv (`make oracle` / `make modelopt`) ----------------------------

ROOT = Path(__file__).resolve().parent.parent


def oracle_python() -> Path:
    """The ModelOpt venv's python: $ORACLE_VENV (the Makefile's variable) or .cache/modelopt-venv."""
    venv = Path(os.environ.get("ORACLE_VENV") or ".cache/modelopt-venv")
    return (venv if venv.is_absolute() else ROOT / venv) / "bin" / "python"


def require_oracle() -> Path:
    """That python; the test fails without it unless TRTBUILD_SKIP_ORACLE=1 (then it is skipped)."""
    py = oracle_python()
    if not py.is_file():
        if os.environ.get("TRTBUILD_SKIP_ORACLE") == "1":
            pytest.skip("TRTBUILD_SKIP_ORACLE=1: the ModelOpt oracle is not run")
        pytest.fail(f"the ModelOpt oracle venv is missing ({py} not found): run `make oracle` "
                    f"(or set TRTBUILD_SKIP_ORACLE=1 to skip these tests)", pytrace=False)
    return py


def calib_file(path: Path, n: int = 16, length: int = 32, vocab: int = 128, seed: int = 0) -> Path:
    """Calibration prompts as JSON lines of random token ids (the tiny models have no tokenizer)."""
    import json
    import random

    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"input_ids": [rng.randrange(4, vocab) for _ in range(length)]}) + "\n"
                            for _ in range(n)))
    return path


def fasterdecoding_heads(path: Path, K: int, L: int, H: int, V: int, seed: int) -> Path:
    """FasterDecoding Medusa-1 heads: `{h}.{l}.linear.weight|bias`, `{h}.{L}.weight` (the head's lm_head)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for h in range(K):
        for j in range(L):
            sd[f"{h}.{j}.linear.weight"] = torch.randn(H, H, generator=g) * 0.1
            sd[f"{h}.{j}.linear.bias"] = torch.randn(H, generator=g) * 0.1
        sd[f"{h}.{L}.weight"] = torch.randn(V, H, generator=g) * 0.1
    path.mkdir(parents=True)
    save_file(sd, str(path / "medusa_lm_head.safetensors"))
    return path


# ModelOpt exports shared by the quantization tests: name -> (recipe, kv_cache, tp, dtype, arch, medusa),
# medusa None | "plain" (heads unquantized) | "quantized". Tiny models: vocab 128 (AWQ pads a vocabulary
# to a multiple of 64), AWQ group size 16 (it divides every per-rank input: 64, 32, 48 at tp 2).
QUANT_CASES = {
    "fp8-kv-tp1": ("fp8", "fp8", 1, "float16", "LlamaForCausalLM", None),
    "fp8-kv-tp2": ("fp8", "fp8", 2, "float16", "LlamaForCausalLM", None),
    "int4_awq-tp1": ("int4_awq", None, 1, "float16", "LlamaForCausalLM", None),
    "int4_awq-tp2": ("int4_awq", None, 2, "float16", "LlamaForCausalLM", None),
    "int8_sq-tp1": ("int8_sq", None, 1, "float16", "LlamaForCausalLM", None),
    "int8_sq-tp2": ("int8_sq", None, 2, "float16", "LlamaForCausalLM", None),
    "w4a8_awq-kv-tp1": ("w4a8_awq", "fp8", 1, "float16", "LlamaForCausalLM", None),
    "w4a8_awq-kv-tp2": ("w4a8_awq", "fp8", 2, "float16", "LlamaForCausalLM", None),
    "int8_sq-bf16-tp1": ("int8_sq", None, 1, "bfloat16", "LlamaForCausalLM", None),
    "kv-only-tp2": (None, "fp8", 2, "float16", "LlamaForCausalLM", None),
    "qwen2-int8_sq-tp2": ("int8_sq", None, 2, "float16", "Qwen2ForCausalLM", None),
    "medusa-fp8-tp2": ("fp8", None, 2, "float16", "LlamaForCausalLM", "plain"),
    "medusa-fp8-heads-tp2": ("fp8", None, 2, "float16", "LlamaForCausalLM", "quantized"),
}
QUANT_GROUP_SIZE = 16


@pytest.fixture(scope="session")
def modelopt_exports(tmp_path_factory) -> dict:
    """Every QUANT_CASES case quantized and exported by ModelOpt (trtbuild/quantize/worker.py, ONE
    process in ModelOpt's venv), with reference logits on two calibration sequences:
    {"hf": {arch: dir}, "heads": dir, "calib": jsonl, "cases": {name: export dir}, "reference": {name: file},
     "result": {name: the worker's done/error event}}."""
    import json
    import subprocess

    from trtbuild.quantize.driver import WORKER, _heads_file, transformers4_view
    from trtbuild.convert.hf import read_hf_dir
    from trtbuild.convert.medusa_heads import read_heads

    py = require_oracle()
    work = tmp_path_factory.mktemp("modelopt-exports")
    hf = {}
    for i, arch in enumerate(("LlamaForCausalLM", "Qwen2ForCausalLM")):
        make_hf_model(work / arch, arch, seed=10 + i, vocab_size=128)
        hf[arch] = work / arch
    views = {arch: transformers4_view(d, work / f"{arch}-t4") for arch, d in hf.items()}
    heads = fasterdecoding_heads(work / "heads", 2, 1, 64, 128, seed=3)
    ckpt = read_hf_dir(hf["LlamaForCausalLM"])
    source = ckpt.open()
    medusa = _heads_file(read_heads(heads), source, work / "heads-worker.safetensors")
    source.close()
    calib = calib_file(work / "calib.jsonl")
    seqs = [json.loads(line)["input_ids"] for line in calib.read_text().splitlines()]
    jobs, names = [], list(QUANT_CASES)
    for name in names:
        recipe, kv, tp, dtype, arch, heads_mode = QUANT_CASES[name]
        jobs.append({"hf_dir": str(views[arch]), "out_dir": str(work / name), "recipe": recipe, "kv_cache": kv,
                     "group_size": QUANT_GROUP_SIZE, "tp": tp, "pp": 1, "dtype": dtype, "calib_ids": seqs,
                     "calib_batch": 4, "medusa": medusa if heads_mode else None,
                     "quantize_medusa_heads": heads_mode == "quantized", "reference_ids": seqs[:2],
                     "reference_out": str(work / f"{name}.reference.safetensors")})
    (work / "jobs.json").write_text(json.dumps(jobs))
    from trtbuild.quantize.driver import _worker_env

    proc = subprocess.run([str(py), str(WORKER), str(work / "jobs.json")], capture_output=True, text=True,
                          timeout=900, env=_worker_env(), cwd=work)
    events = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith('{"event": "done"')
              or ln.startswith('{"event": "error"')]
    result = {names[e["job"]]: e for e in events}
    if len(result) != len(names):
        pytest.fail(f"the ModelOpt worker stopped early (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"hf": hf, "heads": heads, "calib": calib, "work": work,
            "cases": {n: work / n for n in names}, "reference": {n: work / f"{n}.reference.safetensors" for n in names},
            "result": result}


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests without CUDA and `trtllm` tests without TensorRT-LLM; nothing else is skipped."""
    import importlib.util

    has_cuda = torch.cuda.is_available()
    has_trtllm = importlib.util.find_spec("tensorrt_llm") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trtllm" in item.keywords and not has_trtllm:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT-LLM"))
