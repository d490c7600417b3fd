"""Generated `tensorrt-llm` repositories held against the C++ backend's contract (read at
tensorrtllm_backend@c2e65b8, `trtbuild/triton_repo/contract.py`) and upstream's tensor declarations
(`trtbuild/triton_repo/upstream.py`): required keys present, no fill_template variable names as
keys, values as the backend parses them, every upstream tensor declared with upstream's dtype and
dims. Cases: plain, Medusa, lookahead, tp=2, Mistral with a sliding window shorter than max_seq_len.
Plus the parsers themselves, by hand, on the strings the backend documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import engine_dir, make_hf_model
from trtbuild.common.errors import ConfigError
from trtbuild.triton_repo import contract, parse_config, upstream, write_repo

# upstream's tensorrt_llm/config.pbtxt@c2e65b8 fills these *variables* into differently named keys
# (l.598-609, 610-615): a key with a variable's name is one the backend never reads
VARIABLE_NOT_KEY = {"engine_dir": "gpt_model_path", "batching_strategy": "gpt_model_type",
                    "encoder_engine_dir": "encoder_model_path"}


def _engine(hf: Path, tmp: Path, **kw) -> Path:
    return engine_dir(hf, tmp, max_batch_size=8, **kw)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("conf")
    make_hf_model(d / "llama")
    make_hf_model(d / "mistral", "MistralForCausalLM", sliding_window=64)
    g = torch.Generator().manual_seed(0)
    save_file({f"{h}.0.linear.{n}": torch.randn(*s, generator=g) for h in range(2)
               for n, s in (("weight", (64, 64)), ("bias", (64,)))}, str(d / "medusa_lm_head.safetensors"))
    return {"llama": d / "llama", "mistral": d / "mistral", "heads": d / "medusa_lm_head.safetensors"}


CASES = {"plain": ("llama", {}), "medusa": ("llama", {"medusa_choices": "{0}, {0, 0}, {1}"}),
         "lookahead": ("llama", {"lookahead": "4,3,4"}), "tp2": ("llama", {"tp": 2, "gpus": 2}),
         "mistral_window": ("mistral", {})}


@pytest.fixture(scope="module")
def repos(models, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    out = {}
    for case, (model, kw) in CASES.items():
        kw = dict(kw)
        if "medusa_choices" in kw:
            kw["medusa"] = str(models["heads"])
        tmp = tmp_path_factory.mktemp(case)
        engine = _engine(models[model], tmp, **kw)
        out[case] = engine, write_repo(engine, tmp / "repo")
    return out


def _params(repo: Path) -> dict[str, str]:
    cfg = parse_config((repo / "tensorrt_llm" / "config.pbtxt").read_text())
    return {k: v.string_value for k, v in cfg.parameters.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tensorrt_llm_parameters_are_the_backends_keys(repos, case):
    engine, repo = repos[case]
    text = (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    p = _params(repo)
    assert "${" not in text
    assert not set(p) & set(VARIABLE_NOT_KEY), "a fill_template variable name written as a key"
    assert set(p) <= set(contract.BY_KEY), set(p) - set(contract.BY_KEY)
    for key in contract.REQUIRED + ("gpt_model_path",):
        assert key in p, key
    for key, value in p.items():
        param = contract.BY_KEY[key]
        if param.kind != "string":
            contract.parse(param, value)  # raises where the backend would fall back or throw
    assert p["gpt_model_type"] == "inflight_fused_batching"
    assert p["gpt_model_path"] == str(engine.resolve()) and Path(p["gpt_model_path"]).is_absolute()
    assert p["tokenizer_dir"] == p["xgrammar_tokenizer_info_path"] == p["guided_decoding_backend"] == ""
    resolved = contract.read_parameters(p)
    build = json.loads((engine / "config.json").read_text())["build_config"]
    pre = json.loads((engine / "config.json").read_text())["pretrained_config"]
    if case == "medusa":
        assert resolved["decoding_mode"] == "medusa"
        assert resolved["medusa_choices"] == [[0], [1], [0, 0]] and build["max_draft_len"] >= 3
    elif case == "lookahead":
        from trtbuild.common.lookahead.spec import LookaheadSpec

        assert resolved["decoding_mode"] == "lookahead"
        la = LookaheadSpec(resolved["lookahead_window_size"], resolved["lookahead_ngram_size"],
                           resolved["lookahead_verification_set_size"])
        assert la.max_draft_len == build["max_draft_len"] == 15
    else:
        assert resolved["decoding_mode"] == "top_k_top_p"
    if case == "mistral_window":
        assert pre["sliding_window"] == 64 < build["max_seq_len"]
        assert resolved["max_attention_window_size"] == [64]
    else:
        assert "max_attention_window_size" not in p
    if case == "tp2":
        assert pre["mapping"]["world_size"] == 2


def _declared(repo: Path, model: str):
    cfg = parse_config((repo / model / "config.pbtxt").read_text())
    return cfg


@pytest.mark.parametrize("model,inputs,outputs", [
    ("ensemble", upstream.ENSEMBLE_INPUTS, upstream.ENSEMBLE_OUTPUTS),
    ("tensorrt_llm_bls", upstream.TENSORRT_LLM_BLS_INPUTS, upstream.TENSORRT_LLM_BLS_OUTPUTS),
    ("tensorrt_llm", upstream.TENSORRT_LLM_INPUTS, upstream.TENSORRT_LLM_OUTPUTS)])
def test_every_upstream_tensor_is_declared_as_upstream_declares_it(repos, model, inputs, outputs):
    from tritonclient.grpc import model_config_pb2 as mc

    def dtype(t):
        return {"${logits_datatype}": "TYPE_FP32", "${encoder_input_features_data_type}": "TYPE_FP16"}.get(
            t.data_type, t.data_type)

    for case in CASES:
        cfg = _declared(repos[case][1], model)
        got_in = {t.name: t for t in cfg.input}
        got_out = {t.name: t for t in cfg.output}
        assert set(got_in) == {t.name for t in inputs} and set(got_out) == {t.name for t in outputs}
        for t in inputs:
            g = got_in[t.name]
            assert (mc.DataType.Name(g.data_type), tuple(g.dims), g.optional, g.HasField("reshape"),
                    g.allow_ragged_batch) == (dtype(t), t.dims, t.optional, t.reshape, t.ragged), t.name
        for t in outputs:
            assert (mc.DataType.Name(got_out[t.name].data_type), tuple(got_out[t.name].dims)) == (dtype(t), t.dims)


def test_the_1x_tensors_upstream_clients_rely_on(repos):
    """Written by hand from upstream's files, independently of the tables: the 1.x seed, the inputs
    end_to_end_grpc_client.py always sends, the ten perf outputs."""
    from tritonclient.grpc import model_config_pb2 as mc

    repo = repos["plain"][1]
    for model in ("ensemble", "tensorrt_llm_bls", "tensorrt_llm"):
        cfg = _declared(repo, model)
        names = {t.name: t for t in cfg.input}
        assert "random_seed" not in names and names["seed"].data_type == mc.DataType.Value("TYPE_UINT64")
        for n in ("beam_width", "exclude_input_in_output", "temperature", "return_perf_metrics"):
            assert names[n].optional, (model, n)
        outs = {t.name for t in cfg.output}
        assert set(upstream.PERF_METRICS) <= outs and {"cum_log_probs", "output_log_probs"} <= outs
    assert {t.name for t in _declared(repo, "ensemble").input} >= {"text_input", "max_tokens", "stream"}


def test_batching_and_instances(repos):
    repo = repos["plain"][1]
    pre, post = _declared(repo, "preprocessing"), _declared(repo, "postprocessing")
    assert pre.HasField("dynamic_batching") and list(pre.dynamic_batching.preferred_batch_size) == [8]
    # the one deliberate difference: Triton's dynamic batcher answers cancelled requests itself, and
    # postprocessing must see an ensemble's cancelled steps (test_serve's client leaving mid-stream)
    assert not post.HasField("dynamic_batching")
    bls = _declared(repo, "tensorrt_llm_bls")
    assert bls.instance_group[0].count == 8  # one BLS instance per engine row
    assert {k: v.string_value for k, v in bls.parameters.items()}["accumulate_tokens"] == "false"


# --- the parsers, by hand ---------------------------------------------------------------------------


def test_parsers_follow_the_cpp_rules():
    assert contract.stoi(" 12abc") == 12 and contract.stoi("3.7") == 3 and contract.stoi("-4") == -4
    with pytest.raises(ValueError):
        contract.stoi("")
    with pytest.raises(ValueError):
        contract.stoi("abc")
    assert contract.stof("0.85") == pytest.approx(0.85) and contract.stof("1e-2x") == pytest.approx(0.01)
    for t in ("True", "true", "TRUE", "1"):
        assert contract.parse_bool(t) is True
    for f in ("False", "false", "FALSE", "0"):
        assert contract.parse_bool(f) is False
    for bad in ("yes", "tRue", " true", "", "${exclude_input_in_output}"):
        with pytest.raises(ValueError, match="Cannot convert"):
            contract.parse_bool(bad)
    assert contract.csv_ints("1024,4096") == [1024, 4096] and contract.csv_ints("64,") == [64]
    assert contract.csv_int_lists("{0}, {0, 0}, {1}, {0, 1}") == [[0], [0, 0], [1], [0, 1]]
    assert contract.csv_int_lists("{0}, {1") == [[0]]  # an element not closed by } is dropped
    with pytest.raises(ValueError):
        contract.csv_int_lists("")


def test_read_parameters_fails_as_the_backend_does():
    base = {"gpt_model_type": "inflight_fused_batching", "gpt_model_path": "/e", "tokenizer_dir": "",
            "xgrammar_tokenizer_info_path": "", "guided_decoding_backend": ""}
    assert contract.read_parameters(base)["exclude_input_in_output"] is False  # the backend's default
    for key in ("gpt_model_type", "tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"):
        with pytest.raises(contract.ContractError, match=f"^Cannot find parameter with name: {key}$"):
            contract.read_parameters({k: v for k, v in base.items() if k != key})
    with pytest.raises(contract.ContractError, match="Invalid gpt_model_type"):
        contract.read_parameters(base | {"gpt_model_type": "${batching_strategy}"})
    # an unparsable optional value falls back to the default, as the backend's try/catch does
    r = contract.read_parameters(base | {"enable_kv_cache_reuse": "yes", "max_beam_width": "${max_beam_width}"})
    assert r["enable_kv_cache_reuse"] is True and r["max_beam_width"] == 1
    with pytest.raises(contract.ContractError, match="lookahead parameters are not specified"):
        contract.read_parameters(base | {"decoding_mode": "lookahead", "lookahead_window_size": "4"})
    with pytest.raises(contract.ContractError, match="xgrammar"):
        contract.read_parameters(base | {"guided_decoding_backend": "outlines", "xgrammar_tokenizer_info_path": "/t"})


def test_check_written_refuses_what_the_backend_would_not_read():
    base = {"gpt_model_type": "inflight_fused_batching", "gpt_model_path": "/e", "tokenizer_dir": "",
            "xgrammar_tokenizer_info_path": "", "guided_decoding_backend": ""}
    contract.check_written(base)
    with pytest.raises(ConfigError, match="'engine_dir' is not one the tensorrtllm backend reads"):
        contract.check_written(base | {"engine_dir": "/e"})
    with pytest.raises(ConfigError, match="unfilled template variable"):
        contract.check_written(base | {"gpt_model_path": "${engine_dir}"})
    with pytest.raises(ConfigError, match="does not parse"):
        contract.check_written(base | {"exclude_input_in_output": "yes"})
    with pytest.raises(ConfigError, match="'tokenizer_dir' is missing"):
        contract.check_written({k: v for k, v in base.items() if k != "tokenizer_dir"})
