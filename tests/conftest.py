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


@pytest.fixture
def tiny_llama(tmp_path: Path):
    d = tmp_path / "hf"
    model = make_hf_model(d)
    return d, model


DEMO_DIR = Path(os.environ.get("TRTBUILD_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "test"))


@pytest.fixture(scope="session")
def demo_hf() -> Path:
    """The SmolLM2 demo model as a HF directory (materialised once per machine, offline)."""
    from trtbuild.demo import find_gguf, write_demo_model
    from trtbuild.errors import ConfigError

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
