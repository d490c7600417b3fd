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
