"""The real demo model: SmolLM2-135M-Instruct from its GGUF, through the HF path, converted and run.

The runtime's greedy output equals transformers' `generate` (fp32 compute on the same bf16
weights) for 5 prompts x 32 new tokens, decoded together as one batch of different lengths.
"""

from __future__ import annotations

import json

import pytest
import torch

from trtbuild.runtime import Model, Request, generate

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "Water boils at a temperature of",
]

pytestmark = pytest.mark.slow


def test_demo_model_is_a_plain_hf_directory(demo_hf):
    cfg = json.loads((demo_hf / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["vocab_size"], cfg["tie_word_embeddings"]) == (30, 576, 9, 3, 49152, True)
    assert "quantization_config" not in cfg
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (demo_hf / name).is_file()


def test_runtime_greedy_equals_transformers_generate(demo_hf, demo_ckpt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_hf)
    hf = AutoModelForCausalLM.from_pretrained(demo_hf, dtype=torch.float32).eval()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    want = []
    for x in ids:
        t = torch.tensor([x])
        out = hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=32, min_new_tokens=32,
                          do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
        want.append(out[0, len(x):].tolist())
    model = Model.load(demo_ckpt, dtype="float32", device="cpu")
    got = generate(model, [Request(tuple(x), 32) for x in ids])
    for w, g in zip(want, got):
        assert list(g.output_ids) == w
    assert "Paris" in tok.decode(got[0].output_ids)


def test_generate_cli_on_demo(demo_ckpt):
    from click.testing import CliRunner

    from trtbuild.cli import cli

    r = CliRunner().invoke(cli, ["generate", str(demo_ckpt), "--prompt", "The capital of France is",
                                 "--max-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert obj["text"].strip().startswith("Paris") and obj["num_steps"] >= 1 and obj["tokens_per_step"] == 1.0


def test_medusa_heads_from_train_medusa_are_lossless_on_smollm2(demo_hf, tmp_path):
    """CI-sized version of the benchmark (benchmarks/medusa_eval.py runs 20 prompts x 64 tokens):
    a short `train-medusa` run, then greedy Medusa == plain greedy at batch 1 and batch 4."""
    from click.testing import CliRunner

    from trtbuild.cli import cli
    from trtbuild.convert import convert
    from trtbuild.common.medusa.choices import parse_choices
    from trtbuild.runtime import medusa_generate
    from trtbuild.runtime.tokenizer import load_tokenizer

    heads = tmp_path / "heads"
    r = CliRunner().invoke(cli, ["train-medusa", str(demo_hf), "-o", str(heads), "--steps", "150",
                                 "--sequences", "8", "--seq-tokens", "96", "--heads", "3"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((heads / "config.json").read_text())
    assert (cfg["medusa_num_heads"], cfg["medusa_num_layers"]) == (3, 1)
    ckpt = convert(demo_hf, tmp_path / "ckpt", medusa=heads, medusa_choices="{0}, {1}, {0, 0}, {0, 0, 0}")
    model = Model.load(ckpt, dtype="float32", device="cpu")
    tok = load_tokenizer(ckpt)
    reqs = [Request(tuple(tok(p)["input_ids"]), 32) for p in PROMPTS[:4]]
    plain = [generate(model, [q])[0].output_ids for q in reqs]
    choices = parse_choices([list(p) for p in model.cfg.medusa_choices]).choices
    one = [medusa_generate(model, [q], choices)[0] for q in reqs]
    four = medusa_generate(model, reqs, choices)
    assert [x.output_ids for x in one] == plain
    assert [x.output_ids for x in four] == plain
    assert sum(x.accepted_draft_tokens for x in four) > 0


def test_lookahead_is_lossless_on_smollm2_code(demo_ckpt, tmp_path):
    """CI-sized: 4 code-completion prompts x 48 tokens, batch 1 and batch 4 (the full 20 x 64 check
    is benchmarks/lookahead_eval.py); the pool and window really produce accepted drafts."""
    from click.testing import CliRunner

    from trtbuild.cli import cli
    from trtbuild.common.lookahead.spec import LookaheadSpec
    from trtbuild.common.corpus import stdlib_files
    from trtbuild.common.corpus import code_prompts
    from trtbuild.runtime import lookahead_generate
    from trtbuild.runtime.tokenizer import load_tokenizer

    model = Model.load(demo_ckpt, dtype="float32", device="cpu")
    prompts = code_prompts(stdlib_files(), load_tokenizer(demo_ckpt), 4, 128, seed=5)
    reqs = [Request(tuple(p), 48) for p in prompts]
    plain = [generate(model, [r])[0].output_ids for r in reqs]
    spec = LookaheadSpec(4, 3, 4)
    batch = lookahead_generate(model, reqs, spec)
    singles = [lookahead_generate(model, [r], spec)[0] for r in reqs]
    assert [r.output_ids for r in batch] == plain == [r.output_ids for r in singles]
    tokens, steps = sum(len(r.output_ids) for r in singles), sum(r.num_steps + 1 for r in singles)
    assert tokens / steps > 1.2  # code repeats itself: the compression ratio is well above 1

    # tune-lookahead end to end on two settings
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"input_ids": p}) + "\n" for p in prompts[:2]))
    r = CliRunner().invoke(cli, ["tune-lookahead", str(demo_ckpt), "--prompts", str(f), "--try", "1,3,4",
                                 "--try", "2,2,1", "--max-tokens", "16", "-o", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(x["W"], x["N"], x["G"], x["max_draft_len"]) for x in report["runs"]] == [(1, 3, 4, 9), (2, 2, 1, 2)]
    assert "best compression: (" in r.output
    assert ("recommended here: --lookahead" in r.output) == (report["recommended"] is not None)


def test_build_plain_medusa_lookahead_on_smollm2(demo_hf, tmp_path):
    """The build issue's end-to-end check: `trtbuild MODEL --medusa heads.pt -o out` (the default
    command) and plain / lookahead builds of SmolLM2 with the torch backend; `generate` runs on
    each engine dir and greedy output agrees."""
    from click.testing import CliRunner

    from trtbuild.cli import cli

    g = torch.Generator().manual_seed(0)
    heads = {f"{h}.0.linear.{n}": torch.randn(*s, generator=g) * 0.01
             for h in range(3) for n, s in (("weight", (576, 576)), ("bias", (576,)))}
    torch.save(heads, tmp_path / "heads.pt")  # a version-2 .pt: the base lm_head is shared
    run = CliRunner().invoke
    builds = {"plain": [], "medusa": ["--medusa", str(tmp_path / "heads.pt"), "--medusa-choices", "{0}, {0, 0}, {1}"],
              "lookahead": ["--lookahead", "4,3,4"]}
    outputs = {}
    for name, extra in builds.items():
        r = run(cli, [str(demo_hf), "-o", str(tmp_path / name), "--max-seq-len", "1024", *extra])
        assert r.exit_code == 0, r.output
        cfg = json.loads((tmp_path / name / "engine" / "config.json").read_text())
        assert cfg["build_config"]["speculative_decoding_mode"] == {"plain": 1, "medusa": 4, "lookahead": 8}[name]
        lock = json.loads((tmp_path / name / "engine" / "trtbuild.lock.json").read_text())
        assert set(lock["inputs"]) >= {"model/config.json", "model/model.safetensors"}
        r = run(cli, ["generate", str(tmp_path / name / "engine"), "--prompt", "def fibonacci(n):", "--max-tokens",
                      "24", "--json"])
        assert r.exit_code == 0, r.output
        outputs[name] = json.loads(r.output)["output_ids"]
    assert outputs["plain"] == outputs["medusa"] == outputs["lookahead"]
    r = run(cli, [str(demo_hf), "-o", str(tmp_path / "lookahead"), "--max-seq-len", "1024", "--lookahead", "4,3,4"])
    assert r.exit_code == 0 and "up to date" in r.output
