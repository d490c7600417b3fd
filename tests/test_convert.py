"""The converter's output format: config.json fields, exact tensor names/splits, inputs, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import make_hf_model
from trtbuild.convert import convert
from trtbuild.convert.llama import rope_from_hf
from trtbuild.convert.safetensors_io import sha256_file


def rank(ckpt: Path, r: int) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / f"rank{r}.safetensors"))


def test_config_json_fields(tmp_path):
    hf = make_hf_model(tmp_path / "hf", rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    cfg = json.loads((convert(tmp_path / "hf", tmp_path / "c", dtype="bfloat16", tp=2, pp=1) / "config.json").read_text())
    assert cfg["architecture"] == "LlamaForCausalLM" and cfg["dtype"] == "bfloat16"
    assert cfg["vocab_size"] == 101  # unpadded, although lm_head is padded to 102 rows
    assert cfg["hidden_act"] == "silu" and cfg["position_embedding_type"] == "rope_gpt_neox"
    assert cfg["rotary_base"] == 500000.0
    assert cfg["rotary_scaling"] == {"rope_type": "llama3", "type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert cfg["norm_epsilon"] == pytest.approx(hf.config.rms_norm_eps)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_size"]) == (8, 2, 8)
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (64, 96, 3)
    assert cfg["max_position_embeddings"] == 512
    assert cfg["mapping"] == {"world_size": 2, "tp_size": 2, "pp_size": 1}
    assert cfg["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None}
    assert cfg["tie_word_embeddings"] is False and cfg["logits_dtype"] == "float32"


def test_rope_from_legacy_hf_config():
    """transformers < 5 style: rope_theta + rope_scaling are read the same way."""
    theta, scaling = rope_from_hf({"rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}})
    assert theta == 500000.0 and scaling["factor"] == 8.0 and scaling["type"] == "llama3"
    assert rope_from_hf({"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}})[1] == \
        {"type": "linear", "rope_type": "linear", "factor": 2.0}
    assert rope_from_hf({}) == (10000.0, None)
    assert rope_from_hf({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}) == (1e5, None)


def test_names_gate_up_and_qkv_tp1(tmp_path):
    hf = make_hf_model(tmp_path / "hf")
    sd = {k: v for k, v in hf.state_dict().items()}
    r0 = rank(convert(tmp_path / "hf", tmp_path / "c", dtype="float32"), 0)
    assert len(r0) == 1 + 3 * 7 + 2  # embedding, 7 per layer, ln_f, lm_head
    L = "model.layers.1."
    # the gate/up trap: TensorRT-LLM fc is the activated branch (HF gate_proj), gate is HF up_proj
    assert torch.equal(r0["transformer.layers.1.mlp.fc.weight"], sd[L + "mlp.gate_proj.weight"])
    assert torch.equal(r0["transformer.layers.1.mlp.gate.weight"], sd[L + "mlp.up_proj.weight"])
    assert torch.equal(r0["transformer.layers.1.mlp.proj.weight"], sd[L + "mlp.down_proj.weight"])
    qkv = torch.cat([sd[L + f"self_attn.{x}_proj.weight"] for x in "qkv"])
    assert torch.equal(r0["transformer.layers.1.attention.qkv.weight"], qkv)
    assert torch.equal(r0["transformer.layers.1.attention.dense.weight"], sd[L + "self_attn.o_proj.weight"])
    assert torch.equal(r0["transformer.layers.1.post_layernorm.weight"], sd[L + "post_attention_layernorm.weight"])
    assert torch.equal(r0["lm_head.weight"], sd["lm_head.weight"])


def test_tp4_splits_padding_and_kv_duplication(tmp_path):
    """nh=8, nkv=2, tp=4: each rank holds 2 q heads + 1 (duplicated) kv head; vocab 101 -> 104 rows."""
    hf = make_hf_model(tmp_path / "hf", "Qwen2ForCausalLM")
    sd = hf.state_dict()
    ckpt = convert(tmp_path / "hf", tmp_path / "c", dtype="float32", tp=4)
    d = 8
    q, k, v = (sd[f"model.layers.0.self_attn.{x}_proj.weight"] for x in "qkv")
    qb, kb, vb = (sd[f"model.layers.0.self_attn.{x}_proj.bias"] for x in "qkv")
    for r in range(4):
        t = rank(ckpt, r)
        kv = r // 2  # kv head shared by ranks (0, 1) and (2, 3)
        want = torch.cat([q[2 * d * r:2 * d * (r + 1)], k[kv * d:(kv + 1) * d], v[kv * d:(kv + 1) * d]])
        assert torch.equal(t["transformer.layers.0.attention.qkv.weight"], want)
        want_b = torch.cat([qb[2 * d * r:2 * d * (r + 1)], kb[kv * d:(kv + 1) * d], vb[kv * d:(kv + 1) * d]])
        assert torch.equal(t["transformer.layers.0.attention.qkv.bias"], want_b)
        assert torch.equal(t["transformer.layers.0.attention.dense.weight"],
                           sd["model.layers.0.self_attn.o_proj.weight"][:, 16 * r:16 * (r + 1)])
        assert torch.equal(t["transformer.layers.0.mlp.fc.weight"],
                           sd["model.layers.0.mlp.gate_proj.weight"][24 * r:24 * (r + 1)])
        assert t["lm_head.weight"].shape == (26, 64)
    last = rank(ckpt, 3)["lm_head.weight"]
    assert torch.equal(last[:23], sd["lm_head.weight"][78:]) and not last[23:].any()  # 3 zero pad rows


def test_pp2_local_numbering_and_placement(tmp_path):
    hf = make_hf_model(tmp_path / "hf")
    sd = hf.state_dict()
    ckpt = convert(tmp_path / "hf", tmp_path / "c", dtype="float32", tp=1, pp=2)
    r0, r1 = rank(ckpt, 0), rank(ckpt, 1)
    assert "transformer.vocab_embedding.weight" in r0 and "lm_head.weight" not in r0 and "transformer.ln_f.weight" not in r0
    assert "transformer.vocab_embedding.weight" not in r1 and "lm_head.weight" in r1 and "transformer.ln_f.weight" in r1
    assert {n.split(".")[2] for n in r0 if ".layers." in n} == {"0", "1"}
    assert {n.split(".")[2] for n in r1 if ".layers." in n} == {"0"}  # global layer 2, numbered 0
    assert torch.equal(r1["transformer.layers.0.input_layernorm.weight"], sd["model.layers.2.input_layernorm.weight"])


def test_tied_embeddings_write_lm_head(tmp_path):
    hf = make_hf_model(tmp_path / "hf", tie_word_embeddings=True)
    assert hf.config.tie_word_embeddings
    ckpt = convert(tmp_path / "hf", tmp_path / "c", dtype="float32", tp=2)
    head = torch.cat([rank(ckpt, r)["lm_head.weight"] for r in range(2)])[:101]
    assert torch.equal(head, hf.state_dict()["model.embed_tokens.weight"])
    assert json.loads((ckpt / "config.json").read_text())["tie_word_embeddings"] is True


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_cast(tmp_path, dtype):
    hf = make_hf_model(tmp_path / "hf")
    t = rank(convert(tmp_path / "hf", tmp_path / "c", dtype=dtype), 0)
    assert {v.dtype for v in t.values()} == {getattr(torch, dtype)}
    assert torch.equal(t["transformer.ln_f.weight"], hf.state_dict()["model.norm.weight"].to(getattr(torch, dtype)))


def test_auto_dtype_follows_checkpoint(tmp_path):
    make_hf_model(tmp_path / "hf")  # fp32 -> float16, as TensorRT-LLM does
    assert json.loads((convert(tmp_path / "hf", tmp_path / "c") / "config.json").read_text())["dtype"] == "float16"


def test_sharded_safetensors_and_bin_inputs_give_identical_files(tmp_path):
    hf = make_hf_model(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
    outs = [convert(tmp_path / n, tmp_path / f"c-{n}", dtype="float32", tp=2) for n in ("single", "sharded", "bin")]
    for r in range(2):
        digests = {sha256_file(o / f"rank{r}.safetensors") for o in outs}
        assert len(digests) == 1


def test_output_is_standard_safetensors_and_manifest_is_true(tmp_path):
    make_hf_model(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    ckpt = convert(tmp_path / "hf", tmp_path / "c", dtype="bfloat16", tp=2, pp=2)
    with safe_open(str(ckpt / "rank3.safetensors"), framework="pt") as f:
        assert "lm_head.weight" in f.keys() and f.get_tensor("lm_head.weight").dtype == torch.bfloat16
    assert (ckpt / "tokenizer_config.json").read_text() == '{"chat_template": "{{ messages }}"}'
    assert (ckpt / "generation_config.json").is_file()
    m = json.loads((ckpt / "trtbuild.json").read_text())
    assert m["options"] == {"dtype": "bfloat16", "tp_size": 2, "pp_size": 2, "architecture": "LlamaForCausalLM"}
    for name, digest in m["sha256"].items():
        assert sha256_file(ckpt / name) == digest
    assert set(m["sha256"]) >= {f"rank{r}.safetensors" for r in range(4)} | {"config.json"}
    for name, digest in m["source"]["sha256"].items():
        assert sha256_file(tmp_path / "hf" / name) == digest
    assert set(m["source"]["sha256"]) == {"config.json", "model.safetensors", "generation_config.json",
                                          "tokenizer_config.json"}
    assert not list(tmp_path.glob(".c.*"))  # no staging leftovers


def test_meta_llama3_8b_and_70b_tp8_names_and_shapes():
    """Full-size Llama-3 layouts on the meta device: every name and shape of every rank, no weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from trtbuild.convert.hf import MetaSource
    from trtbuild.common.layout import Mapping
    from trtbuild.convert.llama import LLAMA
    from trtbuild.convert.rules import iter_rank, plan_ranks

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    sizes = {"8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32),
             "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)}
    for name, size in sizes.items():
        cfg = LlamaConfig(**size, num_key_value_heads=8, vocab_size=128256, rope_parameters=rope,
                          max_position_embeddings=131072)
        with torch.device("meta"):
            hf = LlamaForCausalLM(cfg)
        shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
        hf_cfg = {**cfg.to_dict(), "architectures": ["LlamaForCausalLM"]}
        mapping = Mapping(tp_size=8)
        plans = plan_ranks(LLAMA, hf_cfg, LLAMA.dims(hf_cfg), MetaSource(shapes), mapping)
        H, I, nl = size["hidden_size"], size["intermediate_size"], size["num_hidden_layers"]
        d = 128
        nh_r = size["num_attention_heads"] // 8
        for r, steps in enumerate(plans):
            got = {n: tuple(t.shape) for n, t in iter_rank(steps, MetaSource(shapes), LLAMA.dims(hf_cfg), mapping, r,
                                                             torch.bfloat16)}
            assert len(got) == 3 + 7 * nl
            assert got["transformer.vocab_embedding.weight"] == (128256, H)
            assert got["transformer.layers.0.attention.qkv.weight"] == ((nh_r + 2) * d, H)  # 8 kv heads / 8 ranks
            assert got[f"transformer.layers.{nl - 1}.attention.dense.weight"] == (H, nh_r * d)
            assert got["transformer.layers.5.mlp.fc.weight"] == (I // 8, H)
            assert got["transformer.layers.5.mlp.gate.weight"] == (I // 8, H)
            assert got["transformer.layers.5.mlp.proj.weight"] == (H, I // 8)
            assert got["lm_head.weight"] == (128256 // 8, H)
