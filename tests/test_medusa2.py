"""Medusa-2 (`train-medusa --joint`): base and heads fine-tuned together, the base held to its
original by self-distillation, the base-quality report, and build's drift refusal. Tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from click.testing import CliRunner

from conftest import word_level_model
from trtbuild.cli import cli
from trtbuild.convert import convert
from trtbuild.runtime import Model, Request, decode, generate
from trtbuild.tuning.joint import base_quality, head_targets, train_joint
from trtbuild.tuning.train_medusa import TrainConfig, self_distill_sequences

V = 101  # word_level_model's vocabulary


def char_level_model(path: Path) -> Path:
    """word_level_model's tiny Llama with a character tokenizer instead (97 printable characters), so
    the corpus and the held-out text train-medusa reads become varied tokens, not <unk>."""
    import string

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_level_model(path)
    chars = (string.ascii_letters + string.digits + " \n_.,:;()[]{}'\"=+-*/#<>!%&|@\\^~`$?")[:97]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(hf dir, self-distilled sequences, their first-own-token indices, held-out sequences)."""
    d = tmp_path_factory.mktemp("m2")
    hf = char_level_model(d / "hf")
    plain = Model.load(convert(hf, d / "plain", dtype="float32"), dtype="float32")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, V, (6,), generator=g).tolist() for _ in range(16)]
    seqs, first = self_distill_sequences(plain, prompts, 40, progress=False)
    held = [torch.randint(4, V, (32,), generator=g).tolist() for _ in range(8)]
    return hf, seqs, first, held


def load(hf: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)


def cfg(**kw) -> TrainConfig:
    base = dict(heads=2, steps=30, lr=3e-3, base_lr=1e-3, warmup=10, seq_tokens=40, prompt_tokens=6, sequences=16,
                joint=True, joint_batch=4, checkpoint_every=10)
    return TrainConfig(**{**base, **kw})


def agreement(hf: Path, student) -> float:
    teacher = load(hf).eval()
    g = torch.Generator().manual_seed(1)
    held = [torch.randint(4, V, (32,), generator=g).tolist() for _ in range(8)]
    with torch.no_grad():
        return base_quality(lambda i: teacher(input_ids=i).logits, lambda i: student(input_ids=i).logits,
                            held)["top1_agreement"]


def test_head_targets_by_hand():
    ids = torch.tensor([[10, 11, 12, 13, 14, 15]])
    t = head_targets(ids, torch.tensor([1]), torch.tensor([5]), heads=2)  # row real up to 5 tokens
    # head 0 at t predicts ids[t + 2], head 1 ids[t + 3]; none before t = 1 nor past position 4
    assert t[0, :, 0].tolist() == [-100, 13, 14, -100, -100, -100]
    assert t[0, :, 1].tolist() == [-100, 14, -100, -100, -100, -100]


def test_joint_trains_base_and_heads_and_warmup_trains_heads_alone(tiny, tmp_path):
    hf, seqs, first, _ = tiny
    original = load(hf).state_dict()
    student = load(hf)
    heads = train_joint(student, load(hf), seqs, first, cfg(), tmp_path / "w0", False, False, stop_at=10)
    assert all(torch.equal(v, original[k]) for k, v in student.state_dict().items())  # warm-up: base frozen
    assert heads.w.abs().sum() > 0
    student = load(hf)
    heads = train_joint(student, load(hf), seqs, first, cfg(), tmp_path / "w1", False, False)
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, original[k])]
    assert len(changed) == len(original)  # every base tensor trained after the warm-up
    assert heads.w.abs().sum() > 0 and heads.b.abs().sum() > 0


def test_distillation_holds_the_base_to_its_original(tiny, tmp_path):
    """The same run (a high base learning rate for this near-uniform random model) with and without
    the KL term: with it (weighted up: the heads' loss pulls hard here) the base's top-1 agreement
    with the original stays >= 0.9 (measured 0.93); without it, it falls below (0.59)."""
    hf, seqs, first, _ = tiny
    kw = dict(base_lr=1e-3, steps=40, warmup=5)
    with_kl, without = load(hf), load(hf)
    train_joint(with_kl, load(hf), seqs, first, cfg(kl_weight=100.0, **kw), tmp_path / "a", False, False)
    train_joint(without, load(hf), seqs, first, cfg(kl_weight=0.0, **kw), tmp_path / "b", False, False)
    a, b = agreement(hf, with_kl), agreement(hf, without)
    assert a >= 0.9 > b, (a, b)


def test_joint_resumes_bit_exactly(tiny, tmp_path):
    hf, seqs, first, _ = tiny
    whole = load(hf)
    h_whole = train_joint(whole, load(hf), seqs, first, cfg(steps=20), tmp_path / "a", False, False)
    train_joint(load(hf), load(hf), seqs, first, cfg(steps=20), tmp_path / "b", False, False, stop_at=12)
    resumed = load(hf)  # a fresh process: the original weights, then the checkpoint of step 12 (checkpoint_every 10 + stop)
    h_resumed = train_joint(resumed, load(hf), seqs, first, cfg(steps=20), tmp_path / "b", True, False)
    assert torch.equal(h_whole.w, h_resumed.w) and torch.equal(h_whole.b, h_resumed.b)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_base_quality_by_hand():
    """Two positions of one sequence: agreement and perplexity from logits written by hand."""
    a = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]])  # [1, T=3, V=3]
    b = torch.tensor([[[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 2.0]]])
    q = base_quality(lambda i: a, lambda i: b, [[0, 1, 2]])
    assert q["top1_agreement"] == round(2 / 3, 4)
    nll_a = -torch.log_softmax(a[0, :2], -1)[[0, 1], [1, 2]].mean()  # next tokens 1, 2
    assert q["perplexity_original"] == round(float(torch.exp(nll_a)), 3)
    assert q["base_changed"] and not base_quality(lambda i: a, None, [[0, 1, 2]])["base_changed"]


def _train(hf: Path, out: Path, *extra: str) -> dict:
    r = CliRunner().invoke(cli, ["train-medusa", str(hf), "-o", str(out), "--joint", "--steps", "30", "--warmup",
                                 "10", "--sequences", "8", "--seq-tokens", "40", "--heads", "2", "--lr", "3e-3",
                                 *extra])
    assert r.exit_code == 0, r.output
    return json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("tp", [1, 2])
def test_medusa2_output_converts_and_decodes_losslessly(tiny, tmp_path, tp):
    """OUT is a HF model (the tuned base) + version-2 heads: convert takes it as both; greedy Medusa
    equals plain greedy decoding of the tuned base."""
    hf = tiny[0]
    out = tmp_path / "m2"
    config = _train(hf, out, "--base-lr", "1e-3")
    q = config["trtbuild"]["base_quality"]
    assert q["base_changed"] and 0 <= q["top1_agreement"] <= 1 and q["perplexity_tuned"] > 0
    assert config["medusa_num_heads"] == 2 and config["trtbuild"]["recipe"] == "medusa-2"
    assert config["dtype"] == json.loads((hf / "config.json").read_text())["dtype"]
    tuned_plain = Model.load(convert(out, tmp_path / "plain", dtype="float32"), dtype="float32")
    original = Model.load(convert(hf, tmp_path / "orig", dtype="float32"), dtype="float32")
    assert not torch.equal(tuned_plain.embedding, original.embedding)  # the base did change
    medusa = Model.load(convert(out, tmp_path / "med", dtype="float32", tp=tp, medusa=out,
                                medusa_choices="{0}, {1}, {0, 0}, {0, 1}"), dtype="float32")
    reqs = [Request(tuple(p[:6]), 16) for p in tiny[1][:4]]
    plain = [r.output_ids for r in generate(tuned_plain, reqs)]
    assert [r.output_ids for r in decode(medusa, reqs, "engine")] == plain
    assert [r.output_ids for r in generate(medusa, reqs)] == plain


def test_build_refuses_a_drifted_base_unless_allowed(tiny, tmp_path):
    hf = tiny[0]
    out = tmp_path / "drifted"
    config = _train(hf, out, "--base-lr", "3e-2", "--kl-weight", "0")  # no distillation, a huge base rate
    agree = config["trtbuild"]["base_quality"]["top1_agreement"]
    assert agree < 0.95, agree  # it did drift (measured, not written)
    r = CliRunner().invoke(cli, ["build", str(out), "--medusa", str(out), "-o", str(tmp_path / "e")])
    assert r.exit_code != 0 and not (tmp_path / "e").exists()
    line = r.output.strip().splitlines()[-1]
    assert "drifted from its original" in line and "--allow-base-drift" in line and f"{agree:.1%}" in line
    r = CliRunner().invoke(cli, ["build", str(out), "--medusa", str(out), "-o", str(tmp_path / "e"),
                                 "--allow-base-drift", "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    assert "(--allow-base-drift)" in r.output
    info = json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path / "e"), "--json"]).output)
    assert info["decoding"]["base_quality"]["top1_agreement"] == agree


def test_medusa1_reports_an_unchanged_base(tiny, tmp_path):
    hf = tiny[0]
    r = CliRunner().invoke(cli, ["train-medusa", str(hf), "-o", str(tmp_path / "h"), "--steps", "5", "--sequences",
                                 "4", "--seq-tokens", "40", "--heads", "2"])
    assert r.exit_code == 0, r.output
    q = json.loads((tmp_path / "h" / "config.json").read_text())["trtbuild"]["base_quality"]
    assert not q["base_changed"] and q["top1_agreement"] == 1.0
    assert q["perplexity_original"] == q["perplexity_tuned"] > 0


def test_joint_refuses_corpus_targets():
    with pytest.raises(Exception, match="--targets self"):
        TrainConfig(joint=True, targets="corpus")


def test_joint_starts_from_trained_heads(tiny, tmp_path):
    """--init-heads: the joint run's heads begin as a Medusa-1 run's (read back exactly); heads of another
    shape, or --init-heads without --joint, are refused before anything is written."""
    from safetensors.torch import load_file

    from trtbuild.tuning.joint import init_heads
    from trtbuild.tuning.train_medusa import Heads

    hf = tiny[0]
    m1 = tmp_path / "m1"
    r = CliRunner().invoke(cli, ["train-medusa", str(hf), "-o", str(m1), "--steps", "5", "--sequences", "4",
                                 "--seq-tokens", "40", "--heads", "2"])
    assert r.exit_code == 0, r.output
    saved = load_file(str(m1 / "medusa_lm_head.safetensors"))
    heads = Heads(saved["0.0.linear.weight"].shape[0], 2, 1)
    init_heads(heads, m1)
    assert torch.equal(heads.w[1, 0], saved["1.0.linear.weight"]) and torch.equal(heads.b[0, 0], saved["0.0.linear.bias"])
    config = _train(hf, tmp_path / "m2", "--init-heads", str(m1), "--warmup", "0")
    assert config["trtbuild"]["train_config"]["init_heads"] == str(m1.resolve())
    for args, msg in ((["--joint", "--heads", "3"], "2 heads x 1 layers"), ([], "add --joint")):
        out = tmp_path / f"bad{len(args)}"
        r = CliRunner().invoke(cli, ["train-medusa", str(hf), "-o", str(out), "--init-heads", str(m1), *args])
        assert r.exit_code != 0 and msg in r.output.strip().splitlines()[-1], r.output
        assert not out.exists()
