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
from trtbuild.common.errors import BuildError, ConfigError
from trtbuild.common.spec import BuildSpec

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


def test_every_tokenizer_file_reaches_the_repository(tmp_path, hf):
    """Issue 15: one tokenizer file list. Whatever the checkpoint carries (added_tokens.json,
    chat_template.json, ...) is what the engine directory and the repository's tokenizer/ get, for a
    build and for a dry run."""
    import shutil

    from trtbuild.common.tokenizer_files import TOKENIZER_FILES

    model = tmp_path / "hf"
    shutil.copytree(hf, model)
    for name in TOKENIZER_FILES:
        if not (model / name).is_file():  # placeholders: a plain torch build never loads them
            (model / name).write_text(json.dumps({"file": name}) if name.endswith(".json") else f"{name}\n")
    out = tmp_path / "out"
    build(BuildSpec(model=str(model), max_seq_len=64), out, echo=_quiet)
    carried = {n for n in TOKENIZER_FILES if (out / "checkpoint" / n).is_file()}
    assert carried == set(TOKENIZER_FILES)
    for d in (out / "engine", out / "triton_repo" / "preprocessing" / "tokenizer"):
        assert {n for n in TOKENIZER_FILES if (d / n).is_file()} == carried, d
        for n in carried:
            assert (d / n).read_bytes() == (out / "checkpoint" / n).read_bytes(), (d, n)
    build(BuildSpec(model=str(model), max_seq_len=64), tmp_path / "dry", echo=_quiet, dry_run=True)
    tok = tmp_path / "dry" / "triton_repo" / "preprocessing" / "tokenizer"
    assert {p.name for p in tok.iterdir()} == set(TOKENIZER_FILES)


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
    import trtbuild.runtime as rt
    from trtbuild.runtime.generate import Result

    real = rt.decode

    def broken(model, reqs, decoding="engine", *a, **kw):  # a decoder that drops the last token of each output
        return [Result(r.output_ids[:-1] + (0,), r.finish_reason, r.num_steps) for r in real(model, reqs, decoding)]

    monkeypatch.setattr(rt, "decode", broken)
    with pytest.raises(BuildError, match="self-check failed: prompt 0 decodes differently"):
        build(BuildSpec(model=str(hf), lookahead="2,2,1", max_seq_len=128), tmp_path / "out", echo=_quiet)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


# --- speculation: auto | always | off (issue 16) --------------------------------------------------


@pytest.mark.parametrize("flag,want", [(None, "auto"), ("off", "off"), ("always", "always")])
def test_speculation_lands_in_the_spec_and_next_to_the_engine(tmp_path, hf, flag, want):
    """Default auto; the mode is in spec.yaml (read back typed), the engine's trtbuild.json (what the
    server reads: engine_speculation) and the dry run's marker, for a speculative and a plain build."""
    from trtbuild.common.engine_config import MANIFEST, engine_speculation
    from trtbuild.common.spec import ResolvedSpec

    for name, extra in (("lookahead", ["--lookahead", "2,2,1"]), ("plain", [])):
        out = tmp_path / name
        args = ["build", str(hf), "-o", str(out), "--max-seq-len", "128", *extra]
        r = CliRunner().invoke(cli, args + (["--speculation", flag] if flag else []))
        assert r.exit_code == 0, r.output
        assert yaml.safe_load((out / "spec.yaml").read_text())["speculation"] == want, name
        assert ResolvedSpec.from_yaml(out / "spec.yaml").speculation == want
        manifest = json.loads((out / "engine" / MANIFEST).read_text())
        assert manifest == {"backend": "torch", "checkpoint": "../checkpoint",
                            "engine_version": manifest["engine_version"], "speculation": want}
        assert engine_speculation(out / "engine") == want and verify_build(out) == []
    dry = tmp_path / "dry"
    r = CliRunner().invoke(cli, ["build", str(hf), "-o", str(dry), "--backend", "tensorrt-llm", "--gpu", "h100-80gb",
                                 "--lookahead", "2,2,1", "--max-seq-len", "128", "--dry-run",
                                 *(["--speculation", flag] if flag else [])])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((dry / "spec.yaml").read_text())["speculation"] == want
    assert json.loads((dry / "trtbuild.json").read_text())["speculation"] == want


def test_another_speculation_mode_rebuilds(tmp_path, hf):
    """The mode is part of the build key: a changed mode rebuilds (the engine's manifest changes), the
    same mode is reused, and spec.yaml fed back in keeps it."""
    from trtbuild.common.engine_config import engine_speculation

    out = tmp_path / "o"
    spec = BuildSpec(model=str(hf), lookahead="2,2,1", max_seq_len=128)
    first = build(spec, out, verify=False, echo=_quiet)
    assert build(BuildSpec(model=str(hf), lookahead="2,2,1", max_seq_len=128, speculation="auto"), out,
                 verify=False, echo=_quiet).reused  # auto is the default
    off = build(spec.merged({"speculation": "off"}), out, verify=False, echo=_quiet)
    assert not off.reused and off.lock["build_key"] != first.lock["build_key"]
    assert engine_speculation(out / "engine") == "off"
    assert build(BuildSpec.from_yaml(out / "spec.yaml"), out, verify=False, echo=_quiet).reused
    assert "speculation: 'off'\n" in (out / "spec.yaml").read_text()  # quoted: a bare off is YAML's false


def test_a_bad_speculation_mode_is_one_line(tmp_path, hf):
    from trtbuild.cli.build import build as build_command
    from trtbuild.common.spec import SPECULATION_MODES

    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["build", str(hf), "-o", str(out), "--speculation", "sometimes"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == \
        "Error: Invalid value for '--speculation': 'sometimes' is not one of 'auto', 'always', 'off'."
    assert not out.exists()
    option = next(p for p in build_command.params if p.name == "speculation")
    assert tuple(option.type.choices) == SPECULATION_MODES  # the flag offers exactly the spec's modes
    with pytest.raises(ConfigError, match=r"^speculation must be one of auto, always, off \(or null\), got 'fast'$"):
        BuildSpec(model=str(hf), speculation="fast")


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


# --- dry runs: everything a build writes but the checkpoint and the engine -------------------------

DRY_RUN_FILES = {"spec.yaml", "build_config.json", "engine_config.json", "commands.sh", "triton_repo", "trtbuild.json"}


def _repo_params(cfg) -> dict[str, str]:
    return {p: cfg.parameters[p].string_value for p in cfg.parameters}


def test_dry_run_writes_the_repository_of_the_future_engine(tmp_path, hf):
    from trtbuild.triton_repo import MODELS, parse_config

    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["build", str(hf), "-o", str(out), "--backend", "tensorrt-llm", "--gpu", "h100-80gb",
                                 "--lookahead", "4,3,4", "--max-seq-len", "256", "--max-batch-size", "4", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == DRY_RUN_FILES
    assert f"wrote {out}/spec.yaml, {out}/build_config.json, {out}/engine_config.json, {out}/commands.sh, " \
           f"{out}/triton_repo/ (dry run" in r.output
    engine = str((out / "engine").resolve())
    cfg = parse_config((out / "triton_repo" / "tensorrt_llm" / "config.pbtxt").read_text())
    params = _repo_params(cfg)
    assert cfg.backend == "tensorrtllm" and params["gpt_model_path"] == engine
    assert (params["decoding_mode"], params["lookahead_window_size"], params["lookahead_ngram_size"],
            params["lookahead_verification_set_size"]) == ("lookahead", "4", "3", "4")
    for name in MODELS:  # every model's config parses as a Triton ModelConfig
        parse_config((out / "triton_repo" / name / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 4
    pre = _repo_params(parse_config((out / "triton_repo" / "preprocessing" / "config.pbtxt").read_text()))
    assert (pre["max_seq_len"], pre["max_input_len"], pre["end_ids"]) == ("256", "255", "2")
    assert (out / "triton_repo" / "preprocessing" / "tokenizer" / "generation_config.json").is_file()
    predicted = json.loads((out / "engine_config.json").read_text())
    assert set(predicted) == {"version", "pretrained_config", "build_config"} and predicted["version"] == "1.2.x"
    assert predicted["build_config"] == json.loads((out / "build_config.json").read_text())
    assert predicted["pretrained_config"]["lookahead_config"] == {"max_window_size": 4, "max_ngram_size": 3,
                                                                  "max_verification_set_size": 4}
    # clearly a dry run: no engine, no checkpoint, no lock; the markers say so
    assert not (out / "engine").exists() and not (out / "checkpoint").exists()
    assert not list(out.rglob("trtbuild.lock.json")) and not (out / ".engine-preview").exists()
    marker = json.loads((out / "trtbuild.json").read_text())
    assert marker["kind"] == "dry-run" and marker["engine_dir"] == engine
    assert json.loads((out / "triton_repo" / "trtbuild.json").read_text())["engine_dir"] == engine
    # a real build into OUT is not fooled: here it stops for want of TensorRT-LLM (not "up to date")
    # and leaves the dry run as it was
    try:
        import tensorrt_llm  # noqa: F401
    except ImportError:
        with pytest.raises(BuildError, match="needs TensorRT-LLM 1.2.x"):
            build(BuildSpec(model=str(hf), backend="tensorrt-llm", gpu="h100-80gb", lookahead="4,3,4", max_seq_len=256,
                            max_batch_size=4), out, echo=_quiet)
        assert {p.name for p in out.iterdir()} == DRY_RUN_FILES


def test_a_build_after_a_dry_run_builds(tmp_path, hf):
    out = tmp_path / "o"
    spec = BuildSpec(model=str(hf), lookahead="2,2,1", max_seq_len=128)
    build(spec, out, dry_run=True, echo=_quiet)
    assert json.loads((out / "trtbuild.json").read_text())["kind"] == "dry-run"
    r = build(spec, out, echo=_quiet)  # same spec and inputs: still built, not "reused"
    assert not r.reused and (out / "engine" / "trtbuild.lock.json").is_file() and verify_build(out) == []
    assert json.loads((out / "trtbuild.json").read_text())["kind"] == "build"
    assert not (out / "engine_config.json").exists() and not (out / "build_config.json").exists()
    assert build(spec, out, echo=_quiet).reused
    with pytest.raises(ConfigError, match="holds a build; a dry run does not replace it"):
        build(spec, out, dry_run=True, echo=_quiet)


@pytest.mark.parametrize("extra", [{}, {"medusa_choices": "{0}, {1}, {0, 0}"}, {"lookahead": "4,3,4"}],
                         ids=["plain", "medusa", "lookahead"])
def test_dry_run_predicts_what_the_build_writes(tmp_path, hf, heads, extra):
    """torch backend: the predicted config.json and the dry run's repository are the real build's."""
    from trtbuild.triton_repo import MODELS

    if "medusa_choices" in extra:
        extra = {**extra, "medusa": str(heads)}
    spec = BuildSpec(model=str(hf), max_seq_len=200, max_batch_size=3, **extra)
    build(spec, tmp_path / "dry", dry_run=True, echo=_quiet)
    build(spec, tmp_path / "real", verify=False, echo=_quiet)
    predicted = json.loads((tmp_path / "dry" / "engine_config.json").read_text())
    assert predicted == json.loads((tmp_path / "real" / "engine" / "config.json").read_text())
    for name in MODELS:
        rel = Path("triton_repo") / name / "config.pbtxt"
        assert (tmp_path / "dry" / rel).read_text() == (tmp_path / "real" / rel).read_text(), name
    tok = Path("triton_repo") / "preprocessing" / "tokenizer"
    assert sorted(p.name for p in (tmp_path / "dry" / tok).iterdir()) == \
        sorted(p.name for p in (tmp_path / "real" / tok).iterdir())


# TensorRT-LLM 1.2's BuildConfig fields less auto_parallel_config, dry_run and visualize_network
# (tensorrt_llm/builder.py BuildConfig, EngineConfig.to_dict), and PluginConfig's fields (plugin/plugin.py)
BUILD_CONFIG_KEYS = [
    "max_input_len", "max_seq_len", "opt_batch_size", "max_batch_size", "max_beam_width", "max_num_tokens",
    "opt_num_tokens", "max_prompt_embedding_table_size", "kv_cache_type", "gather_context_logits",
    "gather_generation_logits", "strongly_typed", "force_num_profiles", "profiling_verbosity", "enable_debug_output",
    "max_draft_len", "speculative_decoding_mode", "use_refit", "input_timing_cache", "output_timing_cache",
    "lora_config", "weight_sparsity", "weight_streaming", "plugin_config", "use_strip_plan", "max_encoder_input_len",
    "monitor_memory", "use_mrope"]
PLUGIN_CONFIG_KEYS = [
    "dtype", "bert_attention_plugin", "gpt_attention_plugin", "gemm_plugin", "gemm_swiglu_plugin",
    "fp8_rowwise_gemm_plugin", "qserve_gemm_plugin", "identity_plugin", "nccl_plugin", "lora_plugin", "dora_plugin",
    "weight_only_groupwise_quant_matmul_plugin", "weight_only_quant_matmul_plugin", "smooth_quant_plugins",
    "smooth_quant_gemm_plugin", "layernorm_quantization_plugin", "rmsnorm_quantization_plugin",
    "quantize_per_token_plugin", "quantize_tensor_plugin", "moe_plugin", "mamba_conv1d_plugin",
    "low_latency_gemm_plugin", "low_latency_gemm_swiglu_plugin", "gemm_allreduce_plugin", "context_fmha",
    "bert_context_fmha_fp32_acc", "paged_kv_cache", "remove_input_padding", "norm_quant_fusion", "reduce_fusion",
    "user_buffer", "tokens_per_block", "use_paged_context_fmha", "use_fp8_context_fmha", "fuse_fp4_quant",
    "multiple_profiles", "paged_state", "streamingllm", "manage_weights", "use_fused_mlp", "pp_reduce_scatter"]


@pytest.mark.parametrize("extra,want", [
    # plain, B 4 x S 256: max_num_tokens 8192 capped at 4 * 256 = 1024 (check_max_num_tokens),
    # opt_num_tokens = min(max_batch_size * max_beam_width, max_num_tokens) = 4
    ({"max_batch_size": "4", "max_seq_len": "256"},
     {"max_seq_len": 256, "max_input_len": 255, "max_batch_size": 4, "max_num_tokens": 1024, "opt_num_tokens": 4,
      "max_draft_len": 0, "speculative_decoding_mode": 1, "nccl_plugin": None}),
    # Medusa (63 draft tokens) at tp 2: max_seq_len + 63; 8192 capped at 4 * 256 = 1024, which already
    # exceeds 4 * (63 + 1) = 256; nccl_plugin is the model dtype with more than one rank
    ({"max_batch_size": "4", "max_seq_len": "256", "medusa": None, "tp": "2"},
     {"max_seq_len": 319, "max_input_len": 255, "max_batch_size": 4, "max_num_tokens": 1024, "opt_num_tokens": 4,
      "max_draft_len": 63, "speculative_decoding_mode": 4, "nccl_plugin": "float16"}),
    # lookahead 7,7,7 (83 draft tokens), B 16 x S 64: capped at 16 * 64 = 1024, then raised to
    # 16 * (83 + 1) = 1344; opt_num_tokens min(16, 8192) = 16, derived before the raise
    ({"max_batch_size": "16", "max_seq_len": "64", "lookahead": "7,7,7"},
     {"max_seq_len": 147, "max_input_len": 63, "max_batch_size": 16, "max_num_tokens": 1344, "opt_num_tokens": 16,
      "max_draft_len": 83, "speculative_decoding_mode": 8, "nccl_plugin": None}),
], ids=["plain", "medusa-tp2", "lookahead"])
def test_predicted_build_config_follows_tensorrt_llm(tmp_path, hf, heads, extra, want):
    args = ["build", str(hf), "-o", str(tmp_path / "o"), "--backend", "tensorrt-llm", "--gpu", "h100-80gb", "--dry-run"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v if v is not None else str(heads)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    bc = json.loads((tmp_path / "o" / "build_config.json").read_text())
    assert list(bc) == BUILD_CONFIG_KEYS and list(bc["plugin_config"]) == PLUGIN_CONFIG_KEYS
    pc = bc["plugin_config"]
    assert {k: bc[k] for k in want if k in bc} == {k: v for k, v in want.items() if k in bc}
    assert pc["nccl_plugin"] == want["nccl_plugin"]
    # the same whatever the mode: TensorRT-LLM's defaults and build() overrides
    assert (bc["opt_batch_size"], bc["max_beam_width"], bc["kv_cache_type"], bc["strongly_typed"]) == (8, 1, "PAGED", True)
    assert (bc["output_timing_cache"], bc["max_prompt_embedding_table_size"], bc["gather_generation_logits"]) == \
        ("model.cache", 0, False)
    assert bc["lora_config"] == {"lora_dir": [], "lora_ckpt_source": "hf", "max_lora_rank": 64, "lora_target_modules": [],
                                 "trtllm_modules_to_hf_modules": {}, "max_loras": None, "max_cpu_loras": None,
                                 "swap_gate_up_proj_lora_b_weight": True}
    assert (pc["dtype"], pc["gemm_plugin"], pc["gpt_attention_plugin"]) == ("float16", "float16", "auto")
    assert (pc["paged_kv_cache"], pc["paged_state"], pc["use_paged_context_fmha"], pc["use_fp8_context_fmha"]) == \
        (True, False, True, False)
    assert (pc["tokens_per_block"], pc["remove_input_padding"], pc["context_fmha"], pc["use_fused_mlp"]) == \
        (32, True, True, True)
    assert (pc["moe_plugin"], pc["mamba_conv1d_plugin"], pc["smooth_quant_plugins"], pc["reduce_fusion"]) == \
        ("auto", "auto", True, False)


def test_check_max_num_tokens_by_hand():
    from trtbuild.builder.engine import check_max_num_tokens

    # unset: max_batch_size * max_seq_len; opt_num_tokens: max_batch_size * max_beam_width
    assert check_max_num_tokens(None, None, 8, 100, 128) == (1024, 8)
    assert check_max_num_tokens(8192, None, 8, 100, 128) == (1024, 8)  # capped at 8 * 128
    assert check_max_num_tokens(10, None, 8, 5, 128) == (32, 8)  # at least tokens_per_block with context FMHA
    assert check_max_num_tokens(10, None, 64, 5, 128) == (32, 10)  # opt from the max_num_tokens given
    assert check_max_num_tokens(10, None, 8, 50, 128, enable_context_fmha=False) == (50, 8)  # at least max_input_len
    assert check_max_num_tokens(500, 900, 8, 5, 128) == (500, 500)  # opt_num_tokens <= max_num_tokens


def test_a_build_reports_what_tensorrt_llm_recorded_otherwise():
    from trtbuild.builder.engine import build_config, diff_build_config
    from trtbuild.common.spec import ResolvedSpec

    rs = ResolvedSpec(model="m", backend="tensorrt-llm", gpu="h100-80gb", gpus=1, tp=1, pp=1, dtype="float16",
                      quantization="none", kv_cache=None, group_size=None, calib_prompts=None, calib_size=None,
                      quantize_medusa_heads=False, max_batch_size=4, max_input_len=63, max_seq_len=64, max_num_tokens=8192,
                      max_draft_len=0, medusa=None, medusa_choices=None, lookahead=None, gather_context_logits=False,
                      kv_cache_free_gpu_mem_fraction=0.9, end_ids=(2,), speculation="auto", architecture="LlamaForCausalLM",
                      speculative_decoding_mode=None, world_size=1, medusa_heads=0, medusa_layers=0, medusa_nodes=0,
                      vocab_size=101)
    predicted = build_config(rs)
    assert diff_build_config(predicted, json.loads(json.dumps(predicted))) == []
    recorded = json.loads(json.dumps(predicted))
    recorded["opt_num_tokens"] = 8
    recorded["plugin_config"]["paged_state"] = True
    recorded["auto_parallel_config"] = {}
    del recorded["use_mrope"]
    assert diff_build_config(predicted, recorded) == [
        "TensorRT-LLM recorded build_config.opt_num_tokens = 8 (trtbuild predicted 4)",
        "TensorRT-LLM recorded build_config.plugin_config.paged_state = True (trtbuild predicted False)",
        "TensorRT-LLM recorded no build_config.use_mrope (trtbuild predicted False)",
        "TensorRT-LLM recorded build_config.auto_parallel_config = {}, which trtbuild does not predict"]


@pytest.mark.parametrize("wng", ["1,2,0", "1,1,0"])
@pytest.mark.parametrize("dry", [False, True])
def test_lookahead_with_no_draft_tokens_is_refused(tmp_path, hf, wng, dry):
    out = tmp_path / "o"
    r = CliRunner().invoke(cli, ["build", str(hf), "-o", str(out), "--lookahead", wng, "--max-seq-len", "128",
                                 *(["--dry-run", "--backend", "tensorrt-llm"] if dry else [])])
    assert r.exit_code == 1
    assert r.output == f"Error: lookahead ({wng}) gives max_draft_len 0 ((N-2) + (W-1+G)(N-1)): nothing to " \
                       "speculate (use e.g. 4,3,4, or build without --lookahead)\n"
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- rope scaling in both HF forms -------------------------------------------------------------------


@pytest.mark.parametrize("scaling,limit", [
    (None, 512),
    ({"rope_type": "linear", "factor": 2.0}, 1024),
    ({"rope_type": "dynamic", "factor": 4.0}, 2048),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 128}, 512),  # no factor for llama3, as TensorRT-LLM
])
def test_rope_parameters_and_rope_scaling_allow_the_same_max_seq_len(tmp_path, hf, scaling, limit):
    from trtbuild.builder.validate import resolve_spec

    base = json.loads((hf / "config.json").read_text())
    base.pop("rope_parameters", None)
    forms = {  # transformers >= 5, and before
        "rope_parameters": {**base, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, **(scaling or {})}},
        "rope_scaling": {**base, "rope_theta": 10000.0, "rope_scaling": scaling},
    }
    if scaling:  # the oldest spelling: "type"
        forms["rope_scaling type"] = {**base, "rope_theta": 10000.0,
                                      "rope_scaling": {("type" if k == "rope_type" else k): v for k, v in scaling.items()}}
    for name, config in forms.items():
        d = tmp_path / name.replace(" ", "-")
        d.mkdir()
        for f in hf.iterdir():
            if f.name != "config.json":
                (d / f.name).symlink_to(f)
        (d / "config.json").write_text(json.dumps(config))
        r = resolve_spec(BuildSpec(model=str(d)))
        assert r.spec.max_seq_len == min(limit, 4096), name  # the default: the model's positions
        assert resolve_spec(BuildSpec(model=str(d), max_seq_len=limit)).spec.max_seq_len == limit
        with pytest.raises(ConfigError, match=f"max_seq_len {limit + 1} exceeds the model's {limit} positions"):
            resolve_spec(BuildSpec(model=str(d), max_seq_len=limit + 1))


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
         r"--quantize fp8 needs FP8 tensor cores \(compute capability >= 8.9"),
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
        ({"lookahead": "1,2,0"}, r"lookahead \(1,2,0\) gives max_draft_len 0"),
        ({"lookahead": "3,2,0"}, r"lookahead \(3,2,0\): an engine needs verification set size G >= 1"),
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
