"""Value validation (issue 14 items 5, 6, 7, 9, 10, 12): every bad value is refused with one line
naming it, before anything runs or is written; generate applies an engine's own limits."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from conftest import engine_dir, make_hf_model
from trtbuild.cli import cli
from trtbuild.cli.build import build as build_command
from trtbuild.common.errors import ConfigError, GenerationError
from trtbuild.common.medusa.choices import TOP_K_MAX, parse_choices
from trtbuild.common.spec import BuildSpec

V = 101  # conftest's tiny vocabulary


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama, 2 Medusa heads for it, a file of random bytes, and its plain and Medusa checkpoints."""
    from trtbuild.convert import convert

    d = tmp_path_factory.mktemp("validation")
    make_hf_model(d / "hf")
    g = torch.Generator().manual_seed(3)
    heads = {f"{h}.0.linear.{n}": torch.randn(*s, generator=g) * 0.1
             for h in range(2) for n, s in (("weight", (64, 64)), ("bias", (64,)))}
    save_file(heads, str(d / "medusa_lm_head.safetensors"))
    (d / "random.bin").write_bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).numpy().tobytes())
    return {"hf": d / "hf", "heads": d / "medusa_lm_head.safetensors", "random": d / "random.bin",
            "plain": convert(d / "hf", d / "plain", dtype="float32"),
            "medusa": convert(d / "hf", d / "medusa", dtype="float32", medusa=d / "medusa_lm_head.safetensors",
                              medusa_choices="{0}, {0, 0}, {1}")}


def _one_line_error(r, code: int = 1) -> str:
    assert r.exit_code == code, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "Traceback" not in r.output, r.output
    return line


# --- item 7: typed spec values ----------------------------------------------------------------------

BAD_SPECS = [
    ('tp: "two"', "tp must be an integer, got 'two'"),
    ("tp: 1.5", "tp must be an integer, got 1.5"),
    ("tp: true", "tp must be an integer, got true"),  # a bool is no int here (item 9: `--tp True` in commands.sh)
    ('max_seq_len: "512"', "max_seq_len must be an integer (or null), got '512'"),
    ("max_seq_len: [512]", "max_seq_len must be an integer (or null), got [512]"),
    ("lookahead: 4", "lookahead must be a 'W,N,G' string or a [W, N, G] list of integers, got 4"),
    ("lookahead: [4, 3]", "lookahead must be a 'W,N,G' string or a [W, N, G] list of integers, got [4, 3]"),
    ("medusa: 5", "medusa must be a string (or null), got 5"),
    ('kv_cache_free_gpu_mem_fraction: "high"', "kv_cache_free_gpu_mem_fraction must be a number, got 'high'"),
    ('end_ids: [2, "x"]', "end_ids must be a list of integers (or null), got [2, 'x']"),
    ("end_ids: 2", "end_ids must be a list of integers (or null), got 2"),
    ('gather_context_logits: "yes"', "gather_context_logits must be true or false, got 'yes'"),
    ('lookahead: ""', "lookahead is empty"),
    ("gpus: 0", "gpus must be >= 1, got 0"),
    ("speculation: sometimes", "speculation must be one of auto, always, off (or null), got 'sometimes'"),
    ("speculation: true", "speculation must be one of auto, always, off (or null), got true"),
]


@pytest.mark.parametrize("text,msg", BAD_SPECS, ids=[t for t, _ in BAD_SPECS])
def test_spec_value_of_the_wrong_type_is_one_line(tmp_path, inputs, text, msg):
    f = tmp_path / "x.yaml"
    f.write_text(f"model: {inputs['hf']}\n{text}\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["build", "--spec", str(f), "-o", str(out), "--dry-run"])
    line = _one_line_error(r)
    assert msg in line and (line.startswith(f"Error: spec {f}: ") or msg.startswith("gpus")), line
    assert not out.exists()


def test_every_spec_field_is_type_checked():
    """The dataclass annotations are the schema: a mapping is the wrong type for every field."""
    for f in fields(BuildSpec):
        with pytest.raises(ConfigError, match=rf"^{f.name} must be .*, got \{{'a': 1\}}$"):
            BuildSpec(**{f.name: {"a": 1}})


def test_spec_accepts_what_the_annotations_allow(tmp_path, inputs):
    f = tmp_path / "ok.yaml"
    f.write_text(f"model: {inputs['hf']}\nkv_cache_free_gpu_mem_fraction: 1\nmax_input_len: null\n"
                 "end_ids: [2]\nlookahead: [4, 3, 4]\nmax_seq_len: 128\nspeculation: off\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["build", "--spec", str(f), "-o", str(out), "--dry-run"])
    assert r.exit_code == 0, r.output
    import yaml

    spec = yaml.safe_load((out / "spec.yaml").read_text())
    assert spec["kv_cache_free_gpu_mem_fraction"] == 1.0 and spec["end_ids"] == [2] and spec["lookahead"] == "4,3,4"
    assert spec["speculation"] == "off"  # YAML's bare off (false) is the mode off
    assert "--tp 1 " in (out / "commands.sh").read_text()


# --- item 9: values accepted silently ---------------------------------------------------------------


@pytest.mark.parametrize("gpus", ["0", "-3"])
def test_gpus_below_one_is_refused(tmp_path, inputs, gpus):
    r = CliRunner().invoke(cli, ["build", str(inputs["hf"]), "-o", str(tmp_path / "o"), "--dry-run", "--gpus", gpus])
    assert r.exit_code == 2 and f"Invalid value for '--gpus': {gpus} is not in the range x>=1" in r.output


def test_gpus_below_world_is_refused_on_cpu_too(tmp_path, inputs):
    r = CliRunner().invoke(cli, ["build", str(inputs["hf"]), "-o", str(tmp_path / "o"), "--dry-run",
                                 "--gpus", "1", "--tp", "2"])
    assert _one_line_error(r) == ("Error: tp=2 x pp=1 needs a world of 2 ranks, but --gpus gives 1 "
                                  "(on cpu, gpus is the world size)")
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(cli, ["build", str(inputs["hf"]), "-o", str(tmp_path / "o2"), "--dry-run",
                                 "--gpus", "2", "--tp", "2"])
    assert r.exit_code == 0, r.output


def test_empty_lookahead_is_refused_everywhere(tmp_path, inputs):
    runs = {"build": ["build", str(inputs["hf"]), "-o", str(tmp_path / "b"), "--dry-run", "--lookahead", ""],
            "convert": ["convert", str(inputs["hf"]), "-o", str(tmp_path / "c"), "--lookahead", ""],
            "generate": ["generate", str(inputs["plain"]), "--input-ids", "1,2", "--lookahead", ""]}
    for name, args in runs.items():
        line = _one_line_error(CliRunner().invoke(cli, args))
        assert "lookahead" in line and ("empty" in line or "got ''" in line), (name, line)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("ids,why", [("1,,2", "an empty item"), ("1,2,", "an empty item"), (",1", "an empty item"),
                                     ("1,-2", "'-2', not a token id"), ("1,x", "'x', not a token id")])
def test_input_ids_with_empty_or_bad_items_are_refused(inputs, ids, why):
    r = CliRunner().invoke(cli, ["generate", str(inputs["plain"]), "--input-ids", ids, "--max-tokens", "1"])
    assert r.exit_code == 2 and f"expected comma-separated token ids, got {ids!r}: {why}" in r.output, r.output


def test_input_ids_outside_the_vocabulary_are_refused(inputs):
    r = CliRunner().invoke(cli, ["generate", str(inputs["plain"]), "--input-ids", f"1,{V}", "--max-tokens", "1"])
    assert _one_line_error(r) == f"Error: request 0: token id {V} outside the vocabulary [0, {V})"


# --- item 5: generate applies an engine's limits ------------------------------------------------------


@pytest.fixture(scope="module")
def engines(inputs, tmp_path_factory) -> dict[str, Path]:
    """torch engine directories (max_seq_len 256, max_input_len 200) over the tiny Llama."""
    d = tmp_path_factory.mktemp("engines")
    return {"plain": engine_dir(inputs["hf"], d / "plain", "torch"),
            "lookahead": engine_dir(inputs["hf"], d / "la", "torch", lookahead="4,3,4"),
            "medusa": engine_dir(inputs["hf"], d / "medusa", "torch", medusa=str(inputs["heads"]),
                                 medusa_choices="{0}, {0, 0}, {1}")}


def _gen(path: Path, n_ids: int, max_tokens: int):
    return CliRunner().invoke(cli, ["generate", str(path), "--input-ids", ",".join(["5"] * n_ids), "--max-tokens",
                                    str(max_tokens), "--ignore-eos", "--json"])


@pytest.mark.parametrize("kind", ["plain", "lookahead", "medusa"])
def test_generate_refuses_what_the_engine_cannot_hold(engines, kind):
    # the model has 512 positions; the engine was built for max_input_len 200, max_seq_len 256 (the server's
    # limits, with the server's words: triton_repo.python_models.Preprocessor)
    assert _one_line_error(_gen(engines[kind], 201, 1)) == \
        "Error: request 0: prompt has 201 tokens, more than max_input_len 200"
    assert _one_line_error(_gen(engines[kind], 100, 157)) == \
        "Error: request 0: prompt (100 tokens) + max_tokens (157) exceeds max_seq_len 256"


def test_generate_runs_up_to_the_engine_limit(engines, inputs):
    r = _gen(engines["plain"], 200, 56)
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["output_ids"]) == 56
    # a checkpoint has no build limits: the model's own 512 positions apply
    assert _gen(inputs["plain"], 201, 1).exit_code == 0
    assert "exceeds the model's 512 positions" in _one_line_error(_gen(inputs["plain"], 300, 213))


def test_engine_limits_are_read_from_build_config(engines):
    from trtbuild.runtime import Model, Request
    from trtbuild.runtime import lookahead_generate

    model = Model.load(engines["lookahead"])
    assert (model.cfg.max_input_len, model.cfg.max_seq_len) == (200, 256)  # max_seq_len less max_draft_len
    with pytest.raises(GenerationError, match=r"exceeds max_seq_len 256"):
        lookahead_generate(model, [Request((5,) * 10, 247)], model.cfg.lookahead)


# --- item 6: Medusa tree indices bounded by what a head can propose ----------------------------------


def test_parse_choices_bounds_every_index():
    assert parse_choices(f"[[{TOP_K_MAX - 1}]]").choices == ((TOP_K_MAX - 1,),)
    with pytest.raises(ConfigError, match=rf"path \[{TOP_K_MAX}\] takes candidate {TOP_K_MAX} of head 0, but a head "
                                          rf"proposes at most TensorRT-LLM's top-k limit of {TOP_K_MAX}"):
        parse_choices(f"[[{TOP_K_MAX}]]")
    assert parse_choices("{0}, {0, 100}", vocab_size=V).choices == ((0,), (0, 100))
    with pytest.raises(ConfigError, match=r"path \[0, 101\] takes candidate 101 of head 1, but the vocabulary has "
                                          r"101 tokens \(indices must be < 101\)"):
        parse_choices("{0}, {0, 101}", vocab_size=V)


def test_medusa_choices_beyond_the_top_k_are_refused_by_build_convert_generate(tmp_path, inputs):
    heads = str(inputs["heads"])
    r = CliRunner().invoke(cli, ["build", str(inputs["hf"]), "-o", str(tmp_path / "b"), "--dry-run",
                                 "--medusa", heads, "--medusa-choices", "[[100000]]"])
    assert "medusa choices: path [100000] takes candidate 100000 of head 0" in _one_line_error(r)
    r = CliRunner().invoke(cli, ["build", str(inputs["hf"]), "-o", str(tmp_path / "b"), "--dry-run",
                                 "--medusa", heads, "--medusa-choices", "{0}, {0, 101}"])
    assert "but the vocabulary has 101 tokens" in _one_line_error(r)
    r = CliRunner().invoke(cli, ["convert", str(inputs["hf"]), "-o", str(tmp_path / "c"), "--medusa", heads,
                                 "--medusa-choices", "[[0], [0, 101]]"])
    assert "but the vocabulary has 101 tokens" in _one_line_error(r)
    r = CliRunner().invoke(cli, ["generate", str(inputs["medusa"]), "--input-ids", "1,2,3", "--max-tokens", "4",
                                 "--medusa-choices", "[[0], [101]]"])
    assert "path [101] takes candidate 101 of head 0, but the vocabulary has 101 tokens" in _one_line_error(r)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_medusa_generate_refuses_a_tree_wider_than_the_vocabulary(inputs):
    from trtbuild.runtime import Model, Request
    from trtbuild.runtime import medusa_generate

    model = Model.load(inputs["medusa"])
    with pytest.raises(GenerationError, match="vocabulary has 101 tokens"):
        medusa_generate(model, [Request((1, 2), 4)], ((0,), (101,)))


# --- item 10: an unreadable heads file never suggests an unsafe load ---------------------------------


def test_unreadable_medusa_heads_file_is_one_safe_line(tmp_path, inputs):
    for args in (["build", str(inputs["hf"]), "-o", str(tmp_path / "b"), "--dry-run"],
                 ["convert", str(inputs["hf"]), "-o", str(tmp_path / "c")]):
        line = _one_line_error(CliRunner().invoke(cli, [*args, "--medusa", str(inputs["random"])]))
        assert line.startswith("Error: cannot read Medusa heads: random.bin: not a safetensors file or a "
                               "weights-only PyTorch checkpoint"), line
        assert "weights_only=False" not in line and "`weights_only` set to `False`" not in line
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:  # a plain pickle calling os.system: refused, the refusal without the advice
        f.write(b"\x80\x04cposix\nsystem\n(Vtrue\ntR.")
    line = _one_line_error(CliRunner().invoke(cli, ["convert", str(inputs["hf"]), "-o", str(tmp_path / "c"),
                                                    "--medusa", str(evil)]))
    assert line.startswith("Error: cannot read Medusa heads: evil.pt: refused to unpickle (weights_only=True)")
    assert "False" not in line


# --- item 12: build's help and ranges; plan names the model's positions --------------------------------


def test_every_build_option_has_help_and_a_range():
    for p in build_command.params:
        if isinstance(p, click.Option):
            assert p.help, f"--{p.name} has no help text"
            if p.type is click.INT or isinstance(p.type, click.IntRange):
                assert isinstance(p.type, click.IntRange), f"--{p.name} shows no range"
    kinds = {p.name: p.type for p in build_command.params}
    assert isinstance(kinds["kv_cache_free_gpu_mem_fraction"], click.FloatRange)
    out = CliRunner().invoke(cli, ["build", "--help"]).output
    assert "--quantize [none|fp8|int4_awq|int8_sq|w4a8_awq]" in out and "[0<x<=1]" in out


def test_plan_names_the_models_positions(tmp_path):
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0}
    f = tmp_path / "config.json"
    f.write_text(json.dumps(cfg))
    r = CliRunner().invoke(cli, ["plan", str(f), "--max-seq-len", "1000000000"])
    assert r.exit_code == 0, r.output
    assert "max_seq_len 1000000000 exceeds the model's 8192 positions (max_position_embeddings)" in r.output
    assert "fits: no" in r.output
    r = CliRunner().invoke(cli, ["plan", str(f), "--max-seq-len", "8193", "--gpu", "h200-141gb"])
    assert "exceeds the model's 8192 positions" in r.output and "fits: no" in r.output  # memory alone would fit
    r = CliRunner().invoke(cli, ["plan", str(f), "--max-seq-len", "8192", "--json"])
    assert json.loads(r.output)["model_positions"] == 8192
