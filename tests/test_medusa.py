"""Medusa: trees (pure functions, hand-written cases), head files of every generation, conversion,
lossless greedy tree decoding, typical acceptance, and bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from conftest import make_hf_model
from trtbuild.cli import cli
from trtbuild.convert import convert
from trtbuild.common.errors import ConfigError
from trtbuild.common.medusa.choices import parse_choices, presets, to_brace, to_json
from trtbuild.runtime import Model, Request, SamplingParams, generate
from trtbuild.common.medusa.tree import tree_buffers
from trtbuild.runtime import medusa_generate
from trtbuild.runtime.decoding import TypicalAcceptance, draft_attention_mask

H, V = 64, 101


# --- trees -------------------------------------------------------------------------------------


def test_parse_three_spellings_to_one_canonical_form():
    want = ((0,), (1,), (0, 0), (0, 1), (0, 0, 0))
    for spec in ("[[0, 0, 0], [0], [1], [0, 0], [0, 1]]", "{0, 0, 0}, {0}, {1}, {0, 0}, {0, 1}",
                 [[0], [1], [0, 0], [0, 1], [0, 0, 0]]):
        parsed = parse_choices(spec)
        assert parsed.choices == want and parsed.added_prefixes == ()
    assert to_brace(want) == "{0}, {1}, {0, 0}, {0, 1}, {0, 0, 0}"
    assert to_json(want) == "[[0], [1], [0, 0], [0, 1], [0, 0, 0]]"
    assert parse_choices(to_brace(want)).choices == parse_choices(to_json(want)).choices == want


def test_missing_prefixes_are_added_and_reported():
    parsed = parse_choices("{0, 1, 2}, {3}")
    assert parsed.choices == ((0,), (3,), (0, 1), (0, 1, 2))
    assert parsed.added_prefixes == ((0,), (0, 1))


def test_presets():
    ps = presets()
    assert set(ps) >= {"mc_sim_7b_63", "vicuna_7b_stage2", "vicuna_13b_stage1", "vicuna_33b_stage1", "zephyr_stage2"}
    for name, paths in ps.items():
        parsed = parse_choices(name, num_heads=4, max_draft_len=63)
        assert len(parsed.choices) == len(paths) == 63 and parsed.added_prefixes == ()
    assert max(len(p) for p in ps["vicuna_33b_stage1"]) == 3
    assert ps["mc_sim_7b_63"][:6] == ((0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0))  # the file's own order


@pytest.mark.parametrize("spec,kw,msg", [
    ("", {}, "medusa choices are empty"),
    ("[]", {}, "medusa choices are empty"),
    ("[[0], [0]]", {}, "duplicate path [0]"),
    ("[[0], []]", {}, "each path must be a non-empty list of non-negative integers"),
    ("[[0], [-1]]", {}, "non-negative integers"),
    ("[[0], [0, 0", {}, "invalid JSON"),
    ("{0}, {0, }", {}, "malformed brace form"),
    ("{0} {1}", {}, "malformed brace form"),
    ("mc_sim_7b_64", {}, "is not a preset name"),
    ("{0, 0, 0}", {"num_heads": 2}, "tree depth 3 exceeds the 2 Medusa heads"),
    ("mc_sim_7b_63", {"max_draft_len": 10}, "63 nodes exceed max_draft_len 10"),
])
def test_bad_choices(spec, kw, msg):
    with pytest.raises(ConfigError) as e:
        parse_choices(spec, **kw)
    assert msg in str(e.value)


def test_tree_buffers_four_nodes():
    """root; (0,) and (1,) at depth 1; (0, 0) under (0,)."""
    t = tree_buffers(((0,), (1,), (0, 0)))
    assert t.parents == (-1, 0, 0, 1) and t.depths == (0, 1, 1, 2)
    assert t.children == ((1, 2), (3,), (), ())
    assert t.mask.int().tolist() == [[1, 0, 0, 0],
                                     [1, 1, 0, 0],
                                     [1, 0, 1, 0],
                                     [1, 1, 0, 1]]
    assert t.chains == ((2,), (1, 3))
    assert t.head.tolist() == [0, 0, 1] and t.rank.tolist() == [0, 1, 0] and t.top_k == 2


def test_tree_buffers_five_nodes_chain_and_branch():
    """root -> (0,) -> (0, 0) -> (0, 0, 0), and (0, 1) beside (0, 0)."""
    t = tree_buffers(((0,), (0, 0), (0, 1), (0, 0, 0)))
    assert t.parents == (-1, 0, 1, 1, 2) and t.depths == (0, 1, 2, 2, 3)
    assert t.mask.int().tolist() == [[1, 0, 0, 0, 0],
                                     [1, 1, 0, 0, 0],
                                     [1, 1, 1, 0, 0],
                                     [1, 1, 0, 1, 0],
                                     [1, 1, 1, 0, 1]]
    assert t.chains == ((1, 3), (1, 2, 4))
    assert t.head.tolist() == [0, 1, 1, 2] and t.rank.tolist() == [0, 0, 1, 0]


def test_tree_attention_mask_per_row_context():
    t = tree_buffers(((0,), (1,)))  # 3 nodes
    local = t.mask[None].expand(2, 3, 3)
    depths = torch.tensor(t.depths)[None].expand(2, 3)
    m = draft_attention_mask(local, depths, torch.tensor([2, 4]), span=7)[:, 0].int().tolist()
    assert m[0] == [[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 1, 0, 0]]
    assert m[1] == [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 1]]


# --- head files --------------------------------------------------------------------------------


def _heads(K: int = 3, L: int = 1, lm: bool = True, hidden: int = H, vocab: int = V, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for h in range(K):
        for j in range(L):
            sd[f"{h}.{j}.linear.weight"] = torch.randn(hidden, hidden, generator=g) * 0.1
            sd[f"{h}.{j}.linear.bias"] = torch.randn(hidden, generator=g) * 0.1
        if lm:
            sd[f"{h}.{L}.weight"] = torch.randn(vocab, hidden, generator=g)
    return sd


def _write(tmp: Path, generation: str, sd: dict, base: Path) -> Path:
    d = tmp / f"heads-{generation}"
    d.mkdir()
    if generation == "pt":
        torch.save(sd, d / "medusa_lm_head.pt")
    elif generation in ("safetensors", "v2"):
        save_file(sd, str(d / "medusa_lm_head.safetensors"))
        (d / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 1}))  # lies
    elif generation == "medusa2":  # a full model: base tensors + medusa_head.* in one file
        full = load_file(str(base / "model.safetensors"))
        full.update({f"medusa_head.{k}": v for k, v in sd.items()})
        save_file(full, str(d / "model.safetensors"))
    return d


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("generation", ["pt", "safetensors", "v2", "medusa2"])
def test_every_head_generation_converts_to_the_formats_sheet(tmp_path, generation, tp):
    base = make_hf_model(tmp_path / "hf")
    K, L = 3, 2
    sd = _heads(K, L, lm=generation != "v2")
    ckpt = convert(tmp_path / "hf", tmp_path / "c", dtype="float32", tp=tp,
                   medusa=_write(tmp_path, generation, sd, tmp_path / "hf"))
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["architecture"] == "MedusaForCausalLM"
    assert (cfg["num_medusa_heads"], cfg["num_medusa_layers"], cfg["max_draft_len"]) == (K, L, 63)
    assert len(cfg["medusa_choices"]) == 61 and max(map(len, cfg["medusa_choices"])) == 3  # mc_sim cut to depth 3
    base_head = base.state_dict()["lm_head.weight"]
    pad = -V % tp
    for r in range(tp):
        t = load_file(str(ckpt / f"rank{r}.safetensors"))
        rows = slice(r * H // tp, (r + 1) * H // tp)
        for h in range(K):
            for j in range(L):
                w = t[f"medusa_heads.{h}.medusa_layers.{j}.linear.weight"]
                assert w.shape == (H // tp, H) and torch.equal(w, sd[f"{h}.{j}.linear.weight"][rows])
                assert torch.equal(t[f"medusa_heads.{h}.medusa_layers.{j}.linear.bias"], sd[f"{h}.{j}.linear.bias"][rows])
            head = t[f"medusa_heads.{h}.lm_head.weight"]
            assert head.shape == ((V + pad) // tp, H)
            src = base_head if generation == "v2" else sd[f"{h}.{L}.weight"]
            padded = torch.cat([src, torch.zeros(pad, H)])
            assert torch.equal(head, padded[r * (V + pad) // tp:(r + 1) * (V + pad) // tp])
    options = json.loads((ckpt / "trtbuild.json").read_text())["options"]
    assert options["medusa_version"] == (2 if generation == "v2" else 1)
    if generation in ("safetensors", "v2"):
        assert options["medusa_notes"] == ["config.json says medusa_num_heads=2, the tensors hold 3: using 3",
                                           "config.json says medusa_num_layers=1, the tensors hold 2: using 2"]


def test_choices_stored_with_checkpoint_and_added_prefixes_reported(tmp_path):
    make_hf_model(tmp_path / "hf")
    heads = _write(tmp_path, "safetensors", _heads(3), tmp_path / "hf")
    ckpt = convert(tmp_path / "hf", tmp_path / "c", dtype="float32", medusa=heads,
                   medusa_choices="{0, 1}, {1}", max_draft_len=8)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["medusa_choices"] == [[0], [1], [0, 1]] and cfg["max_draft_len"] == 8
    assert json.loads((ckpt / "trtbuild.json").read_text())["options"]["medusa_choices_added_prefixes"] == [[0]]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _bad_medusa(tmp_path: Path, case: str) -> tuple[list, str]:
    make_hf_model(tmp_path / "hf")
    args = ["convert", tmp_path / "hf", "-o", tmp_path / "out", "--medusa"]
    if case == "hidden size":
        return args + [_write(tmp_path, "safetensors", _heads(hidden=32), tmp_path / "hf")], \
            "Medusa heads have hidden size 32, the base model 64"
    if case == "vocabulary":
        return args + [_write(tmp_path, "safetensors", _heads(vocab=100), tmp_path / "hf")], \
            "Medusa heads' lm_head has vocabulary 100, the base model 101"
    if case == "tree deeper than heads":
        return args + [_write(tmp_path, "safetensors", _heads(K=2), tmp_path / "hf"), "--medusa-choices",
                       "{0}, {0, 0}, {0, 0, 0}"], "tree depth 3 exceeds the 2 Medusa heads"
    if case == "malformed choices":
        return args + [_write(tmp_path, "safetensors", _heads(), tmp_path / "hf"), "--medusa-choices",
                       "{0}, {0, x}"], "malformed brace form"
    if case == "inconsistent layers":
        sd = _heads(K=2, L=2)
        del sd["1.1.linear.bias"]
        return args + [_write(tmp_path, "safetensors", sd, tmp_path / "hf")], \
            "Medusa head 1 does not have the same 2 ResBlock layers"
    if case == "stray tensor":
        sd = _heads()
        sd["extra"] = torch.zeros(1)
        return args + [_write(tmp_path, "safetensors", sd, tmp_path / "hf")], "unexpected tensor 'extra'"
    if case == "missing heads":
        return args + [tmp_path / "nowhere"], "Medusa heads not found"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["hidden size", "vocabulary", "tree deeper than heads", "malformed choices",
                                  "inconsistent layers", "stray tensor", "missing heads"])
def test_bad_medusa_input(tmp_path, case):
    args, msg = _bad_medusa(tmp_path, case)
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and msg in r.output, r.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_malicious_pt_heads_refused_and_never_run(tmp_path):
    make_hf_model(tmp_path / "hf")
    d = tmp_path / "heads"
    d.mkdir()
    marker = tmp_path / "pwned"
    sd = _heads()
    sd["0.0.linear.bias"] = _Evil(marker)
    with open(d / "medusa_lm_head.pt", "wb") as f:
        pickle.dump(sd, f)  # a plain pickle: it would run `touch` if unpickled without restrictions
    r = CliRunner().invoke(cli, ["convert", str(tmp_path / "hf"), "-o", str(tmp_path / "out"), "--medusa", str(d)])
    assert r.exit_code == 1 and "medusa_lm_head.pt: refused to unpickle (weights_only=True)" in r.output
    assert r.output.count("\n") == 1 and not marker.exists() and not (tmp_path / "out").exists()


# --- decoding ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model with heads self-distilled on its own greedy output, so drafts get accepted."""
    from trtbuild.tuning.train_medusa import TrainConfig, dataset_from_sequences, self_distill_sequences, train_heads

    d = tmp_path_factory.mktemp("medusa")
    make_hf_model(d / "hf", seed=7)
    plain = Model.load(convert(d / "hf", d / "plain", dtype="float32"), dtype="float32")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, V, (6,), generator=g).tolist() for _ in range(24)]
    seqs, first = self_distill_sequences(plain, prompts, 48, progress=False)
    hidden, targets = dataset_from_sequences(plain, seqs, first, heads=3)
    cfg = TrainConfig(heads=3, steps=300, lr=3e-3, batch=64, checkpoint_every=1000)
    heads = train_heads(hidden, targets, plain.lm_head.w if plain.backend == "plain" else _plain_head(d / "plain"),
                        cfg, d, resume=False, progress=False)
    hd = d / "heads"
    hd.mkdir()
    save_file(heads.state(), str(hd / "medusa_lm_head.safetensors"))
    ckpt = convert(d / "hf", d / "medusa", dtype="float32", tp=2, medusa=hd)
    return Model.load(ckpt, dtype="float32"), prompts


def _plain_head(ckpt: Path) -> torch.Tensor:
    from trtbuild.runtime.checkpoint import load_weights, read_config

    return load_weights(ckpt, read_config(ckpt), torch.float32).lm_head


MC_SIM_DEPTH3 = json.dumps([list(p) for p in presets()["mc_sim_7b_63"] if len(p) <= 3])  # 61 nodes
TREES = ["{0}, {0, 0}, {0, 0, 0}", "{0}, {1}, {0, 0}, {0, 1}, {1, 0}, {0, 0, 0}", MC_SIM_DEPTH3]


@pytest.mark.parametrize("tree", TREES)
def test_greedy_medusa_is_lossless_batch_1_and_batch_4(trained, tree):
    model, _ = trained
    assert model.medusa_shared_lm_head  # version-2 heads share the base lm_head matmul
    g = torch.Generator().manual_seed(1)
    prompts = [tuple(torch.randint(0, V, (n,), generator=g).tolist()) for n in (5, 9, 3, 12)]
    reqs = [Request(p, 40) for p in prompts]
    choices = parse_choices(tree, num_heads=3).choices
    plain = [generate(model, [r])[0].output_ids for r in reqs]
    one_by_one = [medusa_generate(model, [r], choices)[0] for r in reqs]
    batch = medusa_generate(model, reqs, choices)
    assert [r.output_ids for r in one_by_one] == plain
    assert [r.output_ids for r in batch] == plain
    accepted = sum(r.accepted_draft_tokens for r in batch)
    assert accepted > 0  # the drafts were really used, not just the root
    for r in batch:
        assert r.tokens_per_step == pytest.approx((len(r.output_ids) - 1) / r.num_steps)
        assert r.num_steps + r.accepted_draft_tokens == len(r.output_ids) - 1


def test_medusa_stops_like_plain_decoding(trained):
    model, _ = trained
    p = (4, 8, 15, 16, 23)
    free = generate(model, [Request(p, 30)])[0].output_ids
    end = free[10]
    want = free[:free.index(end)]
    choices = parse_choices("{0}, {0, 0}, {0, 0, 0}").choices
    got = medusa_generate(model, [Request(p, 30, end_ids=(end,))], choices)[0]
    assert got.output_ids == want and got.finish_reason == "end_id"
    cut = medusa_generate(model, [Request(p, 7)], choices)[0]
    assert cut.output_ids == free[:7] and cut.finish_reason == "length"


def test_typical_acceptance_samples_reproducibly(trained):
    model, _ = trained
    choices = parse_choices("{0}, {1}, {0, 0}, {0, 0, 0}").choices
    s = SamplingParams(temperature=0.7, seed=11)
    reqs = [Request((4, 8, 15), 24, s), Request((16, 23, 42, 7), 24, SamplingParams(temperature=0.7, seed=12))]
    a = medusa_generate(model, reqs, choices, TypicalAcceptance(0.09, 0.3))
    b = medusa_generate(model, reqs, choices, TypicalAcceptance(0.09, 0.3))
    assert [r.output_ids for r in a] == [r.output_ids for r in b]
    assert all(len(r.output_ids) == 24 and all(0 <= t < V for t in r.output_ids) for r in a)
    assert sum(r.accepted_draft_tokens for r in a) > 0


def test_generate_cli_medusa_json(trained, tmp_path):
    model, _ = trained
    # the checkpoint dir of the fixture model is not kept on the Model: convert a small one here
    make_hf_model(tmp_path / "hf", seed=7)
    heads = _write(tmp_path, "v2", _heads(3, lm=False), tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "c", dtype="float32", medusa=heads, medusa_choices="{0}, {0, 0}")
    r = CliRunner().invoke(cli, ["generate", str(tmp_path / "c"), "--input-ids", "4,8,15", "--max-tokens", "12",
                                 "--ignore-eos", "--json"])
    obj = json.loads(r.output)
    assert r.exit_code == 0 and len(obj["output_ids"]) == 12
    assert obj["acceptance_length"] == obj["tokens_per_step"] and "accepted_draft_tokens" in obj
    plain = CliRunner().invoke(cli, ["generate", str(tmp_path / "c"), "--input-ids", "4,8,15", "--max-tokens", "12",
                                     "--ignore-eos", "--json", "--no-medusa"])
    assert json.loads(plain.output)["output_ids"] == obj["output_ids"]
    bad = CliRunner().invoke(cli, ["generate", str(tmp_path / "c"), "--input-ids", "4", "--medusa-choices",
                                   "{0, 0, 0, 0}"])
    assert bad.exit_code == 1 and "tree depth 4 exceeds the 3 Medusa heads" in bad.output


# --- tuning ------------------------------------------------------------------------------------


def test_greedy_tree_hand_written():
    from trtbuild.tuning.tune_medusa import expected_length, greedy_tree

    probs = torch.tensor([[0.6, 0.2, 0.1],   # head 0: P(truth at rank 0, 1, 2)
                          [0.5, 0.3, 0.1]])  # head 1
    # node chances: (0,) .6, (0,0) .3, (1,) .2, (0,1) .18, (2,) .1, (1,0) .1, (0,2) .06 ...
    assert greedy_tree(probs, 1) == (((0,),), pytest.approx(1.6))
    assert greedy_tree(probs, 2) == (((0,), (0, 0)), pytest.approx(1.9))
    choices, exp = greedy_tree(probs, 4)
    assert choices == ((0,), (1,), (0, 0), (0, 1)) and exp == pytest.approx(1 + 0.6 + 0.3 + 0.2 + 0.18)
    assert expected_length(choices, probs) == pytest.approx(exp)
    assert expected_length(((0,), (0, 0), (0, 0, 0)), probs) == pytest.approx(1 + 0.6 + 0.3)  # no head 2
    big, _ = greedy_tree(probs, 9)
    assert len(big) == 9 and parse_choices([list(p) for p in big]).added_prefixes == ()  # prefix-closed


def test_tune_picks_a_tree(trained, tmp_path):
    model, prompts = trained
    from trtbuild.tuning.tune_medusa import tune

    report = tune(model, prompts[:4], 24, None, (1, 3, 6))  # calibrate where the heads were trained
    assert [r["nodes"] for r in report["runs"]] == [0, 1, 3, 6]
    assert report["best_nodes"] in (1, 3, 6) and len(report["choices"]) == report["best_nodes"]
    probs = torch.tensor(report["head_rank_probs"])
    assert probs.shape == (3, 10) and (probs.sum(1) <= 1.0001).all() and probs[0, 0] > 0.1
    for r in report["runs"][1:]:
        assert r["acceptance_length"] >= 1.0 and r["expected_length"] >= 1.0


def test_medusa_respects_mistral_sliding_window(tmp_path):
    """Tree verification masks keys outside the window exactly as plain decoding does."""
    make_hf_model(tmp_path / "hf", "MistralForCausalLM", seed=3, sliding_window=4)
    heads = _write(tmp_path, "v2", _heads(3, lm=False), tmp_path / "hf")
    model = Model.load(convert(tmp_path / "hf", tmp_path / "c", dtype="float32", medusa=heads), dtype="float32")
    assert model.cfg.sliding_window == 4
    reqs = [Request((5, 17, 33, 8, 91, 42, 7), 20), Request((3, 9), 20)]
    choices = parse_choices("{0}, {1}, {0, 0}, {0, 0, 0}").choices
    assert [r.output_ids for r in medusa_generate(model, reqs, choices)] == \
        [r.output_ids for r in generate(model, reqs)]


def test_tune_medusa_cli(tmp_path):
    make_hf_model(tmp_path / "hf", seed=7)
    heads = _write(tmp_path, "v2", _heads(3, lm=False), tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "c", dtype="float32", medusa=heads)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"input_ids": [4 + i, 8, 15, 16]}) for i in range(3)) + "\n")
    out = tmp_path / "tree.json"
    r = CliRunner().invoke(cli, ["tune-medusa", str(tmp_path / "c"), "--prompts", str(prompts), "--candidates", "1,2",
                                 "--max-tokens", "16", "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["best_nodes"] in (1, 2) and parse_choices(report["brace"]).choices == \
        tuple(tuple(p) for p in report["choices"])
    assert "nodes  expected  measured  tokens/s  speedup" in r.output
    missing = CliRunner().invoke(cli, ["tune-medusa", str(tmp_path / "c"), "--prompts", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not found" in missing.output
    convert(tmp_path / "hf", tmp_path / "plain", dtype="float32")
    plain = CliRunner().invoke(cli, ["tune-medusa", str(tmp_path / "plain"), "--prompts", str(prompts)])
    assert plain.exit_code == 1 and "has no Medusa heads" in plain.output


def test_training_resumes_exactly(tmp_path):
    from trtbuild.tuning.train_medusa import TrainConfig, train_heads

    g = torch.Generator().manual_seed(0)
    hidden, lm = torch.randn(200, 16, generator=g), torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (200, 2), generator=g)
    whole = train_heads(hidden, targets, lm, TrainConfig(heads=2, steps=20, batch=8, checkpoint_every=5,
                                                         sequences=1, seq_tokens=64), tmp_path / "a", False, False)
    cfg = TrainConfig(heads=2, steps=20, batch=8, checkpoint_every=5, sequences=1, seq_tokens=64)
    train_heads(hidden, targets, lm, cfg, tmp_path / "b", False, False, stop_at=12)  # interrupted at step 12
    resumed = train_heads(hidden, targets, lm, TrainConfig(heads=2, steps=20, batch=8, checkpoint_every=5,
                                                           sequences=1, seq_tokens=64), tmp_path / "b", True, False)
    assert torch.equal(whole.w, resumed.w) and torch.equal(whole.b, resumed.b)
    assert whole.w.abs().sum() > 0  # it did train
