"""trtbuild's checkpoints against NVIDIA ModelOpt's, tensor by tensor and config.json key by key.

The oracle is `modelopt.torch.export.export_tensorrt_llm_checkpoint` from nvidia-modelopt==0.37.0
(the version TensorRT-LLM 1.2 pins), run on CPU in its own venv (`make oracle`, never the project's
.venv) by tests/oracle/export_modelopt.py, once per session for every case. trtbuild converts the
same tiny random checkpoints in-process. Every tensor of every rank file must be bit-identical
(torch.equal, same dtype and shape) and every config.json key equal, except the differences listed
below as data, each with its reason and the ModelOpt source line it rests on (tests/oracle/compare.py
applies them). An unlisted difference fails; so does a listed one that no case shows any more.

Without tensorrt_llm (it cannot be installed here) ModelOpt writes config.json itself: the
TensorRT-LLM path (nvidia-modelopt==0.37.0:modelopt/torch/export/tensorrt_llm_utils.py:193-229)
fails to import it and falls through to the manual one (:231-379). The config rules describe that
manual config.json; test_oracle_environment checks that tensorrt_llm is absent.

Medusa: ModelOpt's TensorRT-LLM export has a Medusa path (model_config_export.py:369-371,
layer_utils.py:1660-1710, tensorrt_llm_utils.py:369-377), so heads are compared against ModelOpt
like every other tensor. TensorRT-LLM's own examples/medusa/convert_checkpoint.py needs
tensorrt_llm and cannot run here, so it is no second oracle. Version-2 heads (no per-head lm_head;
trtbuild copies the base lm_head into each) are not compared: ModelOpt's HF Medusa heads always
carry their own lm_head, so an oracle input for them would be trtbuild's answer written by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import fasterdecoding_heads as write_heads, make_hf_model, require_oracle
from oracle.compare import ABSENT, Comparison, ConfigRule, FileRule, TensorRule, compare_checkpoints
from trtbuild.convert import MANIFEST, TOKENIZER_FILES, convert

EXPORT_SCRIPT = Path(__file__).resolve().parent / "oracle" / "export_modelopt.py"
PINNED = {"nvidia-modelopt": "0.37.0", "transformers": "4.57.1"}  # tests/oracle/requirements.txt
MO = "nvidia-modelopt==0.37.0:modelopt/torch/export/"  # the prefix of every ModelOpt source citation


# --- the cases ------------------------------------------------------------------------------------

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@dataclass(frozen=True)
class Case:
    name: str
    arch: str
    tp: int = 1
    pp: int = 1
    dtype: str = "float16"  # "auto": trtbuild's default against ModelOpt's dtype=None
    overrides: dict = field(default_factory=dict)  # on tiny_config: 3 layers, 8 heads / 2 kv heads, vocab 101
    medusa: tuple[int, int, str] | None = None  # (heads, layers per head, "mtsp" | "module"): export_modelopt.py

    @property
    def world_size(self) -> int:
        return self.tp * self.pp


# ModelOpt splits pp only evenly (postprocess.py:274 asserts num_layers % pp == 0): pp cases have 4 layers.
# Vocabulary 101 everywhere: lm_head (and Medusa lm_heads) zero-padded to 102 / 104 rows for tp 2 / 4.
CASES = (
    Case("llama-gqa-kv2-tp4", "LlamaForCausalLM", tp=4),  # kv heads repeated (layer_utils.py:495-512)
    Case("llama-mqa-tp2-bf16", "LlamaForCausalLM", tp=2, dtype="bfloat16", overrides={"num_key_value_heads": 1}),
    # fp32 source: trtbuild's "auto" and ModelOpt's dtype=None both give float16 (model_config_export.py:123-130)
    Case("llama-tied-auto-tp2", "LlamaForCausalLM", tp=2, dtype="auto", overrides={"tie_word_embeddings": True}),
    Case("llama3-rope-bf16", "LlamaForCausalLM", dtype="bfloat16", overrides={"rope_parameters": LLAMA3_ROPE}),
    Case("llama-tp2xpp2", "LlamaForCausalLM", tp=2, pp=2, overrides={"num_hidden_layers": 4}),
    Case("mistral-gqa", "MistralForCausalLM"),
    Case("mistral-mha-headdim16-tp2-bf16", "MistralForCausalLM", tp=2, dtype="bfloat16",
         overrides={"num_key_value_heads": 8, "head_dim": 16}),
    Case("qwen2-bias-theta1e6-tp2-bf16", "Qwen2ForCausalLM", tp=2, dtype="bfloat16",
         overrides={"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}),
    Case("qwen2-bias-kv2-tp4", "Qwen2ForCausalLM", tp=4),  # biases of repeated kv heads (layer_utils.py:530-533)
    Case("qwen2-tied-pp2", "Qwen2ForCausalLM", pp=2, overrides={"tie_word_embeddings": True, "num_hidden_layers": 4}),
    Case("medusa-llama-3x1", "LlamaForCausalLM", medusa=(3, 1, "mtsp")),
    Case("medusa-llama-2x2-tp2-bf16", "LlamaForCausalLM", tp=2, dtype="bfloat16", medusa=(2, 2, "module")),
    Case("medusa-qwen2-4x1-tp2", "Qwen2ForCausalLM", tp=2, medusa=(4, 1, "mtsp")),
)


def oracle_decoder_type(case: Case) -> str | None:
    """The decoder_type ModelOpt exports a case with; None: its own choice (get_model_type).

    Qwen2 is exported as "llama". ModelOpt picks "qwen" for it (model_utils.py:30), and its own
    config.json writer (the path taken without tensorrt_llm) refuses "qwen": the manual branch
    handles gpt/gemma/llama/... (tensorrt_llm_utils.py:243) and raises NotImplementedError for the
    rest (tensorrt_llm_utils.py:345-350). For a dense Qwen2 the weight export does not depend on
    "qwen": decoder_type == "qwen" is read only when HF gives no hidden_act (layer_utils.py:896),
    for MoE blocks (layer_utils.py:1282-1357) and for a model without lm_head
    (model_config_export.py:356-366). So Qwen2 tensors are ModelOpt's own; its config.json is
    ModelOpt's llama form, with "decoder": "llama" and no Qwen fields (those are listed below).
    """
    return "llama" if case.arch == "Qwen2ForCausalLM" else None


# --- the intended differences, as data ------------------------------------------------------------


def _vocab_shard(t: torch.Tensor, tp: int, tp_rank: int) -> torch.Tensor:
    """Rows of the tp rank's block of the table zero-padded to ceil(V/tp)*tp rows."""
    rows = -(-t.shape[0] // tp)
    padded = torch.cat([t, t.new_zeros(rows * tp - t.shape[0], *t.shape[1:])])
    return padded[tp_rank * rows:(tp_rank + 1) * rows]


TENSOR_RULES = (
    TensorRule(r"^transformer\.vocab_embedding\.weight$", _vocab_shard,
               "ModelOpt always splits the embedding across tp ranks (use_parallel_embedding=true, "
               "embedding_sharding_dim=0): zero-padded to ceil(V/tp)*tp rows, rank r holds the r-th block. "
               "trtbuild writes use_parallel_embedding=false (TensorRT-LLM's default) and the whole table "
               "on every tp rank", MO + "postprocess.py:95-98, model_config_utils.py:230-243"),
)

_NOT_WRITTEN = MO + "tensorrt_llm_utils.py:139-181,231-237,371-377 (all ModelOpt writes for llama)"


def _oracle_only(key, value, reason, source):
    return ConfigRule(key, ABSENT, value, reason, MO + source)


def _trt_only(key, value, reason):
    return ConfigRule(key, value, ABSENT, reason + "; ModelOpt does not write it", _NOT_WRITTEN)


def _medusa_tree(c) -> object:
    """trtbuild's tree, if it is one the heads can run (paths of depth 1..heads, at most max_draft_len)."""
    tree, t = c.trt["medusa_choices"], c.trt
    ok = (isinstance(tree, list) and 0 < len(tree) <= t["max_draft_len"]
          and all(isinstance(p, list) and 1 <= len(p) <= t["num_medusa_heads"] for p in tree))
    return tree if ok else "a tree of depth <= num_medusa_heads with <= max_draft_len nodes"


_LLAMA_DEFAULT = "TensorRT-LLM LLaMAConfig default, written explicitly (formats sheet §1a)"
_DENSE_MOE = "TensorRT-LLM MoeConfig of a dense model (ModelOpt writes `moe` only for MoE: tensorrt_llm_utils.py:353)"
_QWEN_FIELD = "TensorRT-LLM QWenConfig field for qwen2, written explicitly"
_QWEN2 = "Qwen2ForCausalLM"

CONFIG_RULES = (
    ConfigRule("logits_dtype", "float32", lambda c: "float16" if c.oracle["dtype"] == "bfloat16" else c.oracle["dtype"],
               "trtbuild keeps logits in float32 (TensorRT-LLM PretrainedConfig default); ModelOpt writes the "
               "weights' dtype, float16 for bfloat16", MO + "tensorrt_llm_utils.py:146"),
    ConfigRule("use_parallel_embedding", False, True, "the embedding split (TENSOR_RULES)",
               MO + "tensorrt_llm_utils.py:159"),
    _oracle_only("producer.name", "modelopt", "ModelOpt's provenance stamp", "tensorrt_llm_utils.py:140-143"),
    _oracle_only("producer.version", "0.37.0", "ModelOpt's provenance stamp", "tensorrt_llm_utils.py:140-143"),
    _oracle_only("share_embedding_table", False, "ModelOpt exports the HF lm_head module as lm_head.weight, tied "
                 "or not (model_config_export.py:313-328), so nothing is shared; trtbuild writes lm_head.weight too",
                 "tensorrt_llm_utils.py:172"),
    _oracle_only("bias", False, "ModelOpt's own field: whether attention dense (o_proj) has a bias",
                 "tensorrt_llm_utils.py:175"),
    _oracle_only("rotary_pct", 1.0, "ModelOpt's own field; trtbuild says it with rotary_embedding_dim",
                 "tensorrt_llm_utils.py:176"),
    _oracle_only("rank", lambda c: c.case.world_size - 1, "ModelOpt's own field: config.json is written by the last "
                 "rank (model_config_export.py:515-531)", "tensorrt_llm_utils.py:177"),
    _oracle_only("decoder", "llama", "ModelOpt's decoder_type: llama for Llama and Mistral (model_utils.py:21-22), "
                 "and the one Qwen2 is exported with (oracle_decoder_type)", "tensorrt_llm_utils.py:178"),
    _oracle_only("rmsnorm", True, "ModelOpt's own field", "tensorrt_llm_utils.py:179"),
    _oracle_only("lm_head_bias", False, "ModelOpt's own field", "tensorrt_llm_utils.py:180"),
    _oracle_only("base_architecture", lambda c: c.case.arch, "ModelOpt records the base model of a MedusaForCausalLM; "
                 "trtbuild's model_type says it", "tensorrt_llm_utils.py:372"),
    _trt_only("rotary_scaling", None, "plain RoPE: trtbuild writes null, ModelOpt omits the key (it writes it only "
              "when HF rope_scaling is set: tensorrt_llm_utils.py:234-235); both mean no scaling"),
    _trt_only("rotary_scaling.type", lambda c: c.oracle["rotary_scaling.rope_type"],
              "trtbuild writes `type` next to `rope_type` (TensorRT-LLM reads `type` first); ModelOpt copies HF's "
              "rope_scaling dict (hf_config_map.py:80, tensorrt_llm_utils.py:235), which under transformers 4.57.1 "
              "holds only `rope_type` (transformers==4.57.1:models/llama/configuration_llama.py:212-213)"),
    _trt_only("rotary_embedding_dim", lambda c: int(c.oracle["head_size"] * c.oracle["rotary_pct"]),
              "head_size * ModelOpt's rotary_pct"),
    _trt_only("tie_word_embeddings", lambda c: bool(c.hf.get("tie_word_embeddings")), "HF's flag, passed through"),
    _trt_only("attn_bias", lambda c: c.case.arch == _QWEN2, "q/k/v biases (Qwen2 only)"),
    _trt_only("model_type", lambda c: c.hf["model_type"], "HF's model_type, passed through"),
    _trt_only("sliding_window", lambda c: c.hf.get("sliding_window"), "Mistral's window, for the reference runtime"),
    _trt_only("medusa_choices", _medusa_tree, "trtbuild stores the Medusa tree with the checkpoint "
              "(default mc_sim_7b_63 cut to the head count)"),
    *(_trt_only(k, v, _LLAMA_DEFAULT) for k, v in {
        "qk_layernorm": False, "runtime_defaults": None, "mlp_bias": False, "fc_after_embed": False,
        "use_input_layernorm_in_first_layer": True, "use_last_layernorm": True, "layer_idx_offset": 0}.items()),
    *(_trt_only(k, v, _DENSE_MOE) for k, v in {
        "moe.num_experts": 0, "moe.shared_expert_intermediate_size": 0, "moe.top_k": 0,
        "moe.sparse_mixer_epsilon": 0.01, "moe.tp_mode": 0,
        "moe.normalization_mode": lambda c: 0 if c.case.arch == _QWEN2 else None}.items()),
    *(_trt_only(k, v, _QWEN_FIELD) for k, v in {
        "qwen_type": "qwen2", "use_logn_attn": False, "seq_length": 8192, "moe_intermediate_size": 0,
        "moe_shared_expert_intermediate_size": 0, "disable_weight_only_quant_plugin": False}.items()),
)

UNQUANTIZED = {"quant_algo": None, "kv_cache_quant_algo": None, "quantized_layers": {}}


def _unquantized(path: Path) -> str | None:
    return None if json.loads(path.read_text()) == UNQUANTIZED else f"not the unquantized file: {path.read_text()}"


_SELF_CONTAINED = "copied from the HF directory: the checkpoint is self-contained for tokenisation and generation"
FILE_RULES = {
    "quant_cfg.json": FileRule("oracle", "ModelOpt writes the per-layer quantization file even when nothing is "
                               "quantized: process_layer_quant_config drops `quantized_layers` only for exactly one "
                               "quantization format, and the file is written whenever that key is there; "
                               "TensorRT-LLM reads it only for MIXED_PRECISION",
                               MO + "model_config_export.py:518-525, quant_utils.py:589-593,668-677", _unquantized),
    MANIFEST: FileRule("trtbuild", "trtbuild's manifest: options, sha256 of sources and outputs", "trtbuild.convert"),
    **{n: FileRule("trtbuild", _SELF_CONTAINED, "trtbuild.convert.TOKENIZER_FILES") for n in TOKENIZER_FILES},
}
# The tiny models have no tokenizer: of TOKENIZER_FILES only generation_config.json (save_pretrained) occurs.
NEVER_OCCURS = {f"file:{n}" for n in TOKENIZER_FILES if n != "generation_config.json"}


# --- running both converters ----------------------------------------------------------------------


def oracle_input(hf_dir: Path, out: Path) -> Path:
    """The same checkpoint with config.json in the form transformers 4.57.1 (the oracle's) reads.

    transformers 5 saves `rope_parameters` (rope_theta and the scaling in one dict); 4.57.1 knows
    only `rope_theta` and `rope_scaling` and silently takes its defaults (10000.0, None) when they
    are missing (transformers==4.57.1:models/llama/configuration_llama.py:179-180; mistral :134,
    qwen2 :165), and ModelOpt reads rotary_base and rope_scaling from that config object
    (nvidia-modelopt==0.37.0:modelopt/torch/export/hf_config_map.py:53,80; model_config_export.py:151).
    test_oracle_reads_only_the_old_rope_form shows the loss. The weights are the very same file.
    """
    from trtbuild.quantize.driver import transformers4_view

    return transformers4_view(hf_dir, out)


def run_oracle(py: Path, jobs: list[dict], work: Path) -> dict:
    (work / "jobs.json").write_text(json.dumps(jobs, indent=1))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the project's environment
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(py), str(EXPORT_SCRIPT), str(work / "jobs.json"), str(work / "result.json")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=work)
    if proc.returncode != 0 or not (work / "result.json").is_file():
        pytest.fail(f"the ModelOpt oracle failed (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads((work / "result.json").read_text())


@dataclass
class Run:
    case: Case
    hf_config: dict  # the source config.json, as transformers 5 wrote it
    trt_dir: Path
    oracle_dir: Path
    oracle: dict  # {"ok", "error", "decoder_type"} from export_modelopt.py


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict:
    """Every case converted by both: {"versions": {...}, "runs": {name: Run}, "raw_rope": (dir, status)}."""
    py = require_oracle()
    work = tmp_path_factory.mktemp("modelopt-oracle")
    jobs, inputs = [], {}
    for i, case in enumerate(CASES):
        d = work / f"case{i}"
        make_hf_model(d / "hf", case.arch, seed=i, **case.overrides)
        hf_config = json.loads((d / "hf" / "config.json").read_text())
        job = {"name": case.name, "hf_dir": str(oracle_input(d / "hf", d / "hf-oracle")),
               "out_dir": str(d / "modelopt"), "tp": case.tp, "pp": case.pp,
               "dtype": None if case.dtype == "auto" else case.dtype,  # None: ModelOpt's own default
               "decoder_type": oracle_decoder_type(case), "medusa": None}
        heads = None
        if case.medusa:
            K, L, via = case.medusa
            heads = write_heads(d / "heads", K, L, hf_config["hidden_size"], hf_config["vocab_size"], seed=100 + i)
            job["medusa"] = {"file": str(heads / "medusa_lm_head.safetensors"), "num_heads": K, "num_layers": L,
                             "via": via}
        jobs.append(job)
        inputs[case.name] = (case, d, hf_config, heads)
    # the llama3 checkpoint as transformers 5 wrote it, fed to the oracle unconverted
    raw_src = inputs["llama3-rope-bf16"][1] / "hf"
    jobs.append({"name": "raw-rope-parameters", "hf_dir": str(raw_src), "out_dir": str(work / "raw-rope"),
                 "tp": 1, "pp": 1, "dtype": "bfloat16", "decoder_type": None, "medusa": None})
    result = run_oracle(py, jobs, work)
    runs = {}
    for name, (case, d, hf_config, heads) in inputs.items():
        trt = convert(d / "hf", d / "trtbuild", dtype=case.dtype, tp=case.tp, pp=case.pp, medusa=heads)
        runs[name] = Run(case, hf_config, trt, d / "modelopt", result["jobs"][name])
    return {"versions": result["versions"], "runs": runs,
            "raw_rope": (work / "raw-rope", result["jobs"]["raw-rope-parameters"])}


def compare(run: Run, trt_dir: Path | None = None) -> Comparison:
    """trtbuild's checkpoint of `run` (or `trt_dir` instead) against ModelOpt's, with the rules above."""
    assert run.oracle["ok"], f"ModelOpt could not export {run.case.name}:\n{run.oracle['error']}"
    return compare_checkpoints(trt_dir or run.trt_dir, run.oracle_dir, case=run.case, hf_config=run.hf_config,
                               tp=run.case.tp, config_rules=CONFIG_RULES, tensor_rules=TENSOR_RULES,
                               file_rules=FILE_RULES)


# --- the tests ------------------------------------------------------------------------------------


def test_oracle_environment(oracle):
    """The oracle is the pinned ModelOpt, without tensorrt_llm (so config.json is ModelOpt's own)."""
    v = oracle["versions"]
    assert {k: v[k] for k in PINNED} == PINNED
    assert v["tensorrt_llm"] is None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matches_modelopt(oracle, case):
    cmp = compare(oracle["runs"][case.name])
    assert not cmp.mismatches, f"{case.name}: differences from ModelOpt that are not listed:\n" + "\n".join(
        f"  {m.where}: {m.detail}" for m in cmp.mismatches)


def test_every_listed_difference_occurs(oracle):
    """A listed difference that no case shows is stale: remove it, so the table says what is true."""
    seen = set().union(*(compare(r).rules_seen for r in oracle["runs"].values()))
    listed = ({f"config:{r.key}" for r in CONFIG_RULES} | {f"tensor:{r.pattern}" for r in TENSOR_RULES}
              | {f"file:{n}" for n in FILE_RULES}) - NEVER_OCCURS
    assert sorted(listed - seen) == []


def _edited(run: Run, tmp_path: Path, rank: int, edit: Callable[[dict], None]) -> Path:
    """A copy of trtbuild's checkpoint with one rank file edited in place."""
    bad = tmp_path / "edited"
    shutil.copytree(run.trt_dir, bad)
    tensors = load_file(bad / f"rank{rank}.safetensors")
    edit(tensors)
    save_file(tensors, str(bad / f"rank{rank}.safetensors"))
    return bad


def test_swapped_k_and_v_inside_fused_qkv_is_reported_exactly(oracle, tmp_path):
    run = oracle["runs"]["llama-mqa-tp2-bf16"]  # qkv rows per rank: 4 q heads, 1 k head, 1 v head, 8 rows each
    name = "transformer.layers.1.attention.qkv.weight"

    def swap_k_v(t):
        q, k, v = t[name].split([32, 8, 8])
        t[name] = torch.cat([q, v, k]).contiguous()

    cmp = compare(run, _edited(run, tmp_path, 1, swap_k_v))
    assert [m.where for m in cmp.mismatches] == [f"rank1.safetensors:{name}"]


def test_swapped_fc_and_gate_are_reported_exactly(oracle, tmp_path):
    run = oracle["runs"]["llama-tp2xpp2"]
    fc, gate = "transformer.layers.0.mlp.fc.weight", "transformer.layers.0.mlp.gate.weight"

    def swap_fc_gate(t):
        t[fc], t[gate] = t[gate], t[fc]

    cmp = compare(run, _edited(run, tmp_path, 3, swap_fc_gate))
    assert sorted(m.where for m in cmp.mismatches) == [f"rank3.safetensors:{fc}", f"rank3.safetensors:{gate}"]


def test_wrong_config_value_and_broken_listed_difference_are_reported(oracle, tmp_path):
    run = oracle["runs"]["llama3-rope-bf16"]
    bad = tmp_path / "edited"
    shutil.copytree(run.trt_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["rotary_scaling"]["factor"] = 8.0  # a wrong value under a compared key
    cfg["logits_dtype"] = "float16"  # a listed difference that no longer holds as listed
    (bad / "config.json").write_text(json.dumps(cfg))
    assert [m.where for m in compare(run, bad).mismatches] == ["config.json:logits_dtype",
                                                               "config.json:rotary_scaling.factor"]


def test_oracle_reads_only_the_old_rope_form(oracle):
    """Fed transformers 5's `rope_parameters` as is, the oracle loses rope_theta and the llama3 scaling."""
    out, status = oracle["raw_rope"]
    assert status["ok"], status["error"]
    raw = json.loads((out / "config.json").read_text())
    assert raw["rotary_base"] == 10000.0 and "rotary_scaling" not in raw
    rewritten = json.loads((oracle["runs"]["llama3-rope-bf16"].oracle_dir / "config.json").read_text())
    assert rewritten["rotary_base"] == 500000.0 and rewritten["rotary_scaling"]["factor"] == 32.0
