"""`trtbuild build`: engine directories for both backends, static validation (one test per rule),
the memory planner, the lock file, incremental builds, inspect, and the build-time self-check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from conftest import make_hf_model
from trtbuild.builder import build, verify_build
from trtbuild.builder.gpus import GPUS
from trtbuild.builder.plan import dims_from_config, plan
from trtbuild.cli import cli
from trtbuild.errors import BuildError, ConfigError
from trtbuild.spec import BuildSpec

H, V = 64, 101


def _heads(path: Path, K: int = 4, hidden: int = H, vocab: int | None = V) -> Path:
    """FasterDecoding-style heads (ResBlock + own lm_head unless vocab is None) as safetensors."""
    g = torch.Generator().manual_seed(1)
    sd = {}
    for h in range(K):
        sd[f"{h}.0.linear.weight"] = torch.randn(hidden, hidden, generator=g) * 0.1
        sd[f"{h}.0.linear.bias"] = torch.randn(hidden, generator=g) * 0.1
        if vocab is not None:
            sd[f"{h}.1.weight"] = torch.randn(vocab, hidden, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("build") / "hf"
    make_hf_model(d)
    return d


@pytest.fixture(scope="module")
def heads(hf) -> Path:
    return _heads(hf.parent / "heads" / "medusa_lm_head.safetensors")


def _quiet(_: str) -> None:
    pass


# --- torch backend: engine dirs, lock, generate ---------------------------------------------------


def test_torch_builds_plain_medusa_lookahead(tmp_path, hf, heads):
    outs = {}
    for name, extra in {"plain": {}, "medusa": {"medusa": str(heads), "medusa_choices": "{0}, {1}, {0, 0}"},
                        "lookahead": {"lookahead": "4,3,4"}}.items():
        spec = BuildSpec(model=str(hf), max_seq_len=256, max_batch_size=4, max_num_tokens=32, **extra)
        r = build(spec, tmp_path / name, echo=_quiet)
        assert not r.reused
        outs[name] = tmp_path / name
    modes = {"plain": (1, 0, "LlamaForCausalLM"), "medusa": (4, 63, "MedusaForCausalLM"),
             "lookahead": (8, 15, "LlamaForCausalLM")}
    for name, out in outs.items():
        assert {p.name for p in out.iterdir()} == {"checkpoint", "engine", "spec.yaml", "trtbuild.json", "triton_repo"}
        cfg = json.loads((out / "engine" / "config.json").read_text())
        assert set(cfg) == {"version", "pretrained_config", "build_config"}
        mode, draft, arch = modes[name]
        bc = cfg["build_config"]
        assert cfg["pretrained_config"]["architecture"] == arch
        assert (bc["speculative_decoding_mode"], bc["max_draft_len"], bc["max_beam_width"]) == (mode, draft, 1)
        assert bc["max_batch_size"] == 4 and bc["max_input_len"] == 255
        assert bc["max_seq_len"] == 256 + draft  # TensorRT-LLM adds max_draft_len
        assert bc["max_num_tokens"] == max(32, 4 * (draft + 1))  # raised for speculative decoding
        assert bc["plugin_config"]["gemm_plugin"] == "float16" and bc["plugin_config"]["paged_kv_cache"] is True
        lock = json.loads((out / "engine" / "trtbuild.lock.json").read_text())
        assert set(lock) >= {"build_key", "spec_hash", "versions", "gpu", "inputs", "checkpoint", "engine"}
        assert lock["versions"]["trtbuild"] and lock["versions"]["torch"] == torch.__version__
        assert lock["gpu"] is None  # a CPU build
        assert "rank0.safetensors" in lock["checkpoint"] and "config.json" in lock["engine"]
        assert verify_build(out) == []
        spec = yaml.safe_load((out / "spec.yaml").read_text())
        assert spec["max_seq_len"] == 256 and spec["end_ids"] == [2] and spec["max_draft_len"] == draft
    # greedy decoding through each engine dir: identical text
    run = CliRunner().invoke
    got = {}
    for name, out in outs.items():
        r = run(cli, ["generate", str(out / "engine"), "--input-ids", "5,6,7,8,5,6,7,8", "--max-tokens", "24",
                      "--json", "--ignore-eos"])
        assert r.exit_code == 0, r.output
        got[name] = json.loads(r.output)
    assert got["plain"]["output_ids"] == got["medusa"]["output_ids"] == got["lookahead"]["output_ids"]
    assert got["lookahead"]["lookahead"] == "4,3,4" and "accepted_draft_tokens" in got["medusa"]


def test_build_is_the_default_command(tmp_path, hf, heads):
    r = CliRunner().invoke(cli, [str(hf), "--medusa", str(heads), "-o", str(tmp_path / "out"), "--max-seq-len", "128"])
    assert r.exit_code == 0, r.output
    assert "self-check: greedy speculative output equals plain output" in r.output
    assert json.loads((tmp_path / "out" / "engine" / "config.json").read_text())["build_config"]["max_draft_len"] == 63


def test_incremental_rebuilds(tmp_path, hf, heads):
    out = tmp_path / "out"
    spec = BuildSpec(model=str(hf), medusa=str(heads), medusa_choices="{0}, {0, 0}", max_seq_len=128)
    first = build(spec, out, echo=_quiet)
    stamp = (out / "engine" / "config.json").stat().st_mtime_ns
    again = build(spec, out, echo=_quiet)
    assert again.reused and (out / "engine" / "config.json").stat().st_mtime_ns == stamp
    assert again.lock["build_key"] == first.lock["build_key"]
    # the resolved spec.yaml fed back in is the same build
    assert build(BuildSpec.from_yaml(out / "spec.yaml"), out, echo=_quiet).reused
    # a different tree rebuilds
    other = build(BuildSpec(model=str(hf), medusa=str(heads), medusa_choices="{0}, {1}", max_seq_len=128), out,
                  echo=_quiet)
    assert not other.reused and other.lock["build_key"] != first.lock["build_key"]
    assert json.loads((out / "checkpoint" / "config.json").read_text())["medusa_choices"] == [[0], [1]]
    # a tampered output is never reused
    cfg = out / "engine" / "config.json"
    cfg.write_text(cfg.read_text().replace('"max_beam_width": 1', '"max_beam_width": 2'))
    assert verify_build(out) == ["engine/config.json (changed)"]
    assert not build(BuildSpec(model=str(hf), medusa=str(heads), medusa_choices="{0}, {1}", max_seq_len=128), out,
                     echo=_quiet).reused
    assert verify_build(out) == []


def test_flags_override_the_spec_file(tmp_path, hf):
    f = tmp_path / "spec.yaml"
    f.write_text(f"model: {hf}\nlookahead: [4, 3, 4]\nmax-seq-len: 200\nmax_batch_size: 2\n")
    r = CliRunner().invoke(cli, ["build", "--spec", str(f), "-o", str(tmp_path / "o"), "--max-batch-size", "3",
                                 "--dry-run"])
    assert r.exit_code == 0, r.output
    spec = yaml.safe_load((tmp_path / "o" / "spec.yaml").read_text())
    assert (spec["lookahead"], spec["max_seq_len"], spec["max_batch_size"], spec["max_draft_len"]) == ("4,3,4", 200, 3, 15)
    assert not (tmp_path / "o" / "engine").exists()


def test_self_check_failure_fails_the_build(tmp_path, hf, monkeypatch):
    import trtbuild.runtime.lookahead as la
    from trtbuild.runtime.generate import Result

    real = la.lookahead_generate

    def broken(model, reqs, spec, limit=None):  # a decoder that drops the last token of each output
        return [Result(r.output_ids[:-1] + (0,), r.finish_reason, r.num_steps) for r in real(model, reqs, spec, limit)]

    monkeypatch.setattr(la, "lookahead_generate", broken)
    with pytest.raises(BuildError, match="self-check failed: prompt 0 decodes differently"):
        build(BuildSpec(model=str(hf), lookahead="2,2,1", max_seq_len=128), tmp_path / "out", echo=_quiet)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


# --- tensorrt-llm backend -------------------------------------------------------------------------

# trtllm-build flags of TensorRT-LLM 1.2 (tensorrt_llm/commands/build.py) that trtbuild may emit
TRTLLM_BUILD_FLAGS = {"--checkpoint_dir", "--output_dir", "--max_batch_size", "--max_input_len", "--max_seq_len",
                      "--max_num_tokens", "--max_beam_width", "--gemm_plugin", "--gpt_attention_plugin",
                      "--remove_input_padding", "--context_fmha", "--kv_cache_type", "--use_paged_context_fmha",
                      "--tokens_per_block", "--speculative_decoding_mode", "--max_draft_len", "--workers",
                      "--gather_context_logits"}


@pytest.mark.parametrize("extra,mode,draft", [
    ({"medusa_choices": "mc_sim_7b_63"}, "medusa", 63),
    ({"lookahead": "7,7,7"}, "lookahead_decoding", 83),
])
def test_trtllm_dry_run_prints_the_trtllm_build_command(tmp_path, hf, heads, extra, mode, draft):
    if mode == "medusa":
        extra = {**extra, "medusa": str(heads)}
    args = ["build", str(hf), "-o", str(tmp_path / "o"), "--backend", "tensorrt-llm", "--gpu", "h100-80gb",
            "--max-seq-len", "512", "--max-batch-size", "16", "--dry-run"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("trtllm-build "))
    flags = re.findall(r"(--\w+)", line)
    assert set(flags) <= TRTLLM_BUILD_FLAGS
    for f in ("--speculative_decoding_mode", "--max_draft_len", "--max_seq_len", "--max_batch_size",
              "--max_num_tokens", "--gemm_plugin"):
        assert f in flags
    assert f"--speculative_decoding_mode {mode}" in line and f"--max_draft_len {draft}" in line
    assert "--max_seq_len 512" in line and "--max_batch_size 16" in line
    assert f"--max_num_tokens {max(8192, 16 * (draft + 1))}" in line
    bc = json.loads((tmp_path / "o" / "build_config.json").read_text())
    assert bc["max_draft_len"] == draft and bc["speculative_decoding_mode"] == {"medusa": 4, "lookahead_decoding": 8}[mode]
    assert "trtbuild convert" in (tmp_path / "o" / "commands.sh").read_text()


def test_trtllm_build_without_tensorrt_llm_stops_clearly(tmp_path, hf):
    try:
        import tensorrt_llm  # noqa: F401
        pytest.skip("TensorRT-LLM is installed here")
    except ImportError:
        pass
    r = CliRunner().invoke(cli, ["build", str(hf), "-o", str(tmp_path / "o"), "--backend", "tensorrt-llm",
                                 "--gpu", "a100-80gb", "--max-seq-len", "128"])
    assert r.exit_code == 1
    assert r.output.startswith("Error: the tensorrt-llm backend needs TensorRT-LLM 1.2.x, which is not importable here")
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.trtllm
def test_trtllm_engine_build_on_gpu(tmp_path, hf, heads):
    """Runs only where a GPU and TensorRT-LLM 1.2 are present."""
    r = build(BuildSpec(model=str(hf), backend="tensorrt-llm", gpu="h100-80gb", medusa=str(heads),
                        medusa_choices="{0}, {0, 0}", max_seq_len=256), tmp_path / "o", echo=_quiet)
    assert (tmp_path / "o" / "engine" / "rank0.engine").is_file() and r.lock["gpu"]["detected"]


# --- validation: one test per rule ----------------------------------------------------------------


def _bad_cases(hf: Path, heads: Path, tmp: Path) -> list[tuple[dict, str]]:
    no_eos = tmp / "no-eos"
    if not no_eos.exists():
        make_hf_model(no_eos)
        (no_eos / "generation_config.json").unlink()
    wide = _heads(tmp / "wide" / "medusa_lm_head.safetensors", hidden=32, vocab=V)
    other_vocab = _heads(tmp / "vocab" / "medusa_lm_head.safetensors", vocab=99)
    return [
        ({"medusa": str(heads), "medusa_choices": "[[0, 0, 0, 0, 0]]"}, "tree depth 5 exceeds the 4 Medusa heads"),
        ({"medusa": str(heads), "max_draft_len": 10}, "nodes exceed max_draft_len 10"),
        ({"lookahead": "4,3,4", "max_draft_len": 10}, r"lookahead \(4,3,4\) needs max_draft_len 15"),
        ({"tp": 3}, "tp=3 does not divide num_attention_heads=8"),
        ({"tp": 2, "gpus": 1, "gpu": "a100-80gb"}, r"tp=2 x pp=1 needs 2 GPUs, but the target has 1"),
        ({"max_seq_len": 100000}, "max_seq_len 100000 exceeds the model's 512 positions"),
        ({"max_seq_len": 128, "max_input_len": 128}, "max_input_len 128 must be < max_seq_len 128"),
        ({"medusa": str(wide)}, "Medusa heads have hidden size 32, the base model 64"),
        ({"medusa": str(other_vocab)}, "lm_head has vocabulary 99, the base model 101"),
        ({"end_ids": (2, 500)}, r"end id 500 is outside the vocabulary \[0, 101\)"),
        ({"model": str(no_eos)}, "no eos_token_id in generation_config.json"),
        ({"quantization": "fp8", "gpu": "a100-80gb", "backend": "tensorrt-llm"},
         "FP8 needs compute capability >= 8.9"),
        ({"dtype": "bfloat16", "gpu": "t4-16gb", "backend": "tensorrt-llm"}, "bfloat16 needs compute capability >= 8.0"),
        ({"lookahead": "4,3,4", "gpu": "v100-32gb", "dtype": "float16", "backend": "tensorrt-llm"},
         "Medusa and lookahead decoding need compute capability >= 8.0; v100-32gb is 7.0"),
        ({"lookahead": "4,3,4", "gather_context_logits": True}, "gather_context_logits cannot be combined"),
        ({"backend": "tensorrt-llm", "gpu": "cpu"}, "the tensorrt-llm backend builds GPU engines"),
        ({"medusa": str(heads), "lookahead": "4,3,4"}, "--medusa and --lookahead are exclusive"),
        ({"max_draft_len": 4}, "--max-draft-len needs --medusa or --lookahead"),
        ({"gpu": "t4-16gb", "dtype": "float16", "max_num_tokens": 10**9}, "does not fit: weights"),
        ({"gpu": "b300"}, "unknown GPU 'b300'"),
        ({"lookahead": "4,0,4"}, "n-gram size N must be >= 1"),
    ]


def test_every_validation_rule_has_its_message(tmp_path, hf, heads):
    for overrides, msg in _bad_cases(hf, heads, tmp_path / "inputs"):
        spec = BuildSpec(model=str(hf)).merged(overrides)
        out = tmp_path / "out"
        with pytest.raises(ConfigError, match=msg):
            build(spec, out, echo=_quiet)
        assert not out.exists(), overrides


def test_validation_errors_are_one_line_at_the_cli(tmp_path, hf):
    r = CliRunner().invoke(cli, [str(hf), "-o", str(tmp_path / "o"), "--max-seq-len", "64", "--max-input-len", "64"])
    assert r.exit_code == 1 and r.output == "Error: max_input_len 64 must be < max_seq_len 64 (a request needs room " \
                                            "for at least one output token)\n"
    f = tmp_path / "s.yaml"
    f.write_text("modle: x\n")
    r = CliRunner().invoke(cli, ["build", "--spec", str(f), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and r.output.strip() == f"Error: spec {f}: unknown setting(s) modle"


def test_out_dir_with_user_data_is_refused(tmp_path, hf):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        build(BuildSpec(model=str(hf), max_seq_len=64), out, echo=_quiet)
    with pytest.raises(ConfigError, match="not written by trtbuild"):
        build(BuildSpec(model=str(hf), max_seq_len=64), out, force=True, echo=_quiet)
    assert (out / "notes.txt").read_text() == "keep me"


# --- planner ----------------------------------------------------------------------------------------

LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
             "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
             "tie_word_embeddings": False}
LLAMA3_70B = {**LLAMA3_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64}


def test_planner_llama3():
    p8 = plan(dims_from_config(LLAMA3_8B), GPUS["h100-80gb"], dtype="bfloat16")
    assert p8.kv_cache_bytes_per_token == 131072 == 2 * 32 * 8 * 128 * 2
    assert 14.9e9 < p8.weights_bytes < 16.1e9 and p8.fits  # 8.03B parameters in bf16
    d70 = dims_from_config(LLAMA3_70B)
    tp8 = plan(d70, GPUS["h100-80gb"], tp=8, dtype="bfloat16")
    tp1 = plan(d70, GPUS["h100-80gb"], tp=1, dtype="bfloat16")
    assert tp8.fits and tp8.max_kv_tokens > 100_000 and tp8.kv_cache_bytes_per_token == 2 * 80 * 1 * 128 * 2
    assert not tp1.fits and tp1.max_kv_tokens == 0 and tp1.weights_bytes > 80 * 2**30
    assert tp1.recommended["tp"] == 2


def test_plan_cli_json(tmp_path):
    f = tmp_path / "config.json"
    f.write_text(json.dumps(LLAMA3_70B))
    r = CliRunner().invoke(cli, ["plan", str(f), "--gpu", "h100-80gb", "--tp", "8", "--json"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.output)
    assert {"weights_bytes", "kv_cache_bytes_per_token", "max_kv_tokens", "fits", "recommended"} <= set(p)
    assert p["fits"] is True and p["kv_cache_bytes_per_token"] == 40960
    r = CliRunner().invoke(cli, ["plan", str(f), "--gpu", "h100-80gb"])
    assert r.exit_code == 0 and "fits: no" in r.output and '"tp": 2' in r.output


# --- inspect ----------------------------------------------------------------------------------------


def test_inspect_and_verify(tmp_path, hf):
    out = tmp_path / "out"
    build(BuildSpec(model=str(hf), lookahead="4,3,4", max_seq_len=128), out, echo=_quiet)
    run = CliRunner().invoke
    for path, kind in ((out, "build"), (out / "engine", "engine"), (out / "checkpoint", "checkpoint")):
        r = run(cli, ["inspect", str(path), "--json", "--verify"])
        assert r.exit_code == 0, r.output
        info = json.loads(r.output.split("\nverified:")[0])
        assert info["kind"] == kind and info["verified"] == []
        assert info["decoding"] == {"mode": "lookahead", "max_window_size": 4, "max_ngram_size": 3,
                                    "max_verification_set_size": 4, "max_draft_len": 15}
    r = run(cli, ["inspect", str(out / "engine")])
    assert "max_draft_len" in r.output and "spec_hash" in r.output
    rank = out / "checkpoint" / "rank0.safetensors"
    data = bytearray(rank.read_bytes())
    data[-1] ^= 1
    rank.write_bytes(bytes(data))
    r = run(cli, ["inspect", str(out), "--verify"])
    assert r.exit_code == 1 and "checkpoint/rank0.safetensors (changed)" in r.output
    r = run(cli, ["inspect", str(tmp_path)])
    assert r.exit_code == 1 and "neither a checkpoint, an engine nor a build directory" in r.output
