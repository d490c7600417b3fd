"""Write a Triton model repository for an engine directory (`trtbuild repo`, and `build`).

    REPO/
      ensemble/config.pbtxt, 1/               text_input -> preprocessing -> tensorrt_llm -> postprocessing
      preprocessing/config.pbtxt, 1/model.py, tokenizer/   (the engine's own tokenizer, copied)
      tensorrt_llm/config.pbtxt, 1/[model.py]  tensorrt-llm: backend "tensorrtllm"; torch: a Python model
      postprocessing/config.pbtxt, 1/model.py
      tensorrt_llm_bls/config.pbtxt, 1/model.py
      trtbuild.json

Every value comes from the engine (config.json, trtbuild.json) and the build's spec.yaml when
present; every `${...}` is filled (a missing one is an error), and each config.pbtxt is parsed back
as a Triton ModelConfig before the repository is published. `decoupled_mode` follows one
streaming switch for tensorrt_llm and the BLS. Paths inside are relative to each model's
directory, except the engine (`gpt_model_path`) for the tensorrtllm backend, which must be absolute
there. The tensorrt_llm model's parameters are the C++ backend's keys (`contract.py`), checked
before anything is written. The engine is read once (`EngineConfig.read`), the spec as
`ResolvedSpec.from_yaml`; their typed decoding becomes the backend's strings only here.

The BLS's speculation parameters (`bls_speculation`): the build's mode (`speculation`, the spec's,
else the engine's trtbuild.json) and, for a tensorrt-llm lookahead engine only, the engine's "W,N,G"
(`speculation_lookahead`) and the in-flight threshold (`speculation_max_in_flight`) by which the BLS
picks each request's lookahead sizes; empty `speculation_lookahead`: the BLS steers nothing.

May import: trtbuild.common, trtbuild.convert, trtbuild.runtime (the Python models run the runtime).
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

from trtbuild.common.engine_config import EngineConfig, engine_speculation
from trtbuild.common.errors import ConfigError
from trtbuild.common.fsutil import MARKER, staging_dir
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.common.medusa.choices import MedusaSpec
from trtbuild.common.spec import ResolvedSpec
from trtbuild.common.tokenizer_files import tokenizer_files
from trtbuild.triton_repo import contract
from trtbuild.triton_repo.python_models import DEFAULT_MAX_IN_FLIGHT
from trtbuild.triton_repo.templates import TEMPLATES

MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")


def _read_engine(engine_dir: Path) -> tuple[EngineConfig, dict, ResolvedSpec | None]:
    """The engine's config.json, its trtbuild marker and the build's spec.yaml (None: an engine
    directory outside a build, `trtbuild repo` on it; the defaults then apply)."""
    try:
        marker = json.loads((engine_dir / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{engine_dir} is not an engine directory built by trtbuild ({e})") from None
    cfg = EngineConfig.read(engine_dir)
    spec_file = engine_dir.parent / "spec.yaml"
    return cfg, marker, ResolvedSpec.from_yaml(spec_file) if spec_file.is_file() else None


def parameters(cfg: EngineConfig, marker: dict, spec: ResolvedSpec | None, engine_param: str,
               streaming: bool, speculation: str = "always") -> dict[str, dict[str, str]]:
    """Template values per model, all strings; `tensorrt_llm` also gets `parameters`, its key/value
    list rendered from `tensorrt_llm_parameters` (checked against the C++ backend's contract).
    `speculation`: the build's mode (`write_repo`: the spec's, else the engine's trtbuild.json)."""
    max_batch = str(cfg.max_batch_size)
    common = {"triton_max_batch_size": max_batch, "decoupled_mode": "true" if streaming else "false",
              "logits_datatype": "TYPE_FP32", "encoder_input_features_data_type": "TYPE_FP16",
              "max_queue_delay_microseconds": "0", "max_queue_size": "0"}
    end_ids = spec.end_ids if spec is not None else ()
    torch_backend = marker.get("backend") == "torch"
    tok = "../preprocessing/tokenizer"
    llm = tensorrt_llm_parameters(cfg, spec, engine_param)
    contract.check_written(llm)
    return {
        "ensemble": common,
        "preprocessing": {**common, "tokenizer_dir": "tokenizer", "add_special_tokens": "true",
                          "max_input_len": str(cfg.max_input_len), "max_seq_len": str(cfg.usable_seq_len),
                          "end_ids": ",".join(str(i) for i in end_ids),
                          "vocab_size": str(cfg.vocab_size),
                          "preprocessing_instance_count": "1"},
        "postprocessing": {**common, "tokenizer_dir": tok, "skip_special_tokens": "true",
                           "postprocessing_instance_count": "1"},
        "tensorrt_llm": {**common, "triton_backend": "python" if torch_backend else "tensorrtllm",
                         "parameters": "".join(_param(k, v) for k, v in llm.items())},
        # accumulate_tokens false: streamed responses carry the new text only, what upstream's
        # clients append (end_to_end_grpc_client.py); one BLS instance serves one request at a time,
        # so as many instances as the engine has rows (docs/model_config.md@c2e65b8)
        "tensorrt_llm_bls": {**common, "accumulate_tokens": "false", "tensorrt_llm_model_name": "tensorrt_llm",
                             "tensorrt_llm_draft_model_name": "", "multimodal_encoders_name": "",
                             "tokenizer_dir": tok, "bls_instance_count": max_batch,
                             **bls_speculation(cfg, torch_backend, speculation)},
    }


def bls_speculation(cfg: EngineConfig, torch_backend: bool, mode: str,
                    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> dict[str, str]:
    """The BLS's speculation parameters. It steers lookahead per request only for a tensorrt-llm
    lookahead engine (the C++ executor takes a (w, n, g) per request, python_models.LookaheadSteering);
    a torch engine's tensorrt_llm model governs itself, and TensorRT-LLM has nothing per request for
    Medusa (DecodingConfig::setMedusaChoices is executor-wide, read once from the model's medusa_choices:
    tensorrtllm_backend@c2e65b8:inflight_batcher_llm/src/model_instance_state.cc:596-609)."""
    d = cfg.decoding
    steer = isinstance(d, LookaheadSpec) and not torch_backend
    return {"speculation": mode,
            "speculation_lookahead": (f"{d.max_window_size},{d.max_ngram_size},{d.max_verification_set_size}"
                                      if steer else ""),
            "speculation_max_in_flight": str(max_in_flight)}


def tensorrt_llm_parameters(cfg: EngineConfig, spec: ResolvedSpec | None, engine_param: str) -> dict[str, str]:
    """The tensorrt_llm model's parameters: the C++ backend's keys (contract.CPP_PARAMETERS), filled
    from the engine and spec; keys it would default are written only where trtbuild's value differs
    or matters to the reader. The decoding is the engine's own (`cfg.decoding`), turned into the
    backend's strings only here."""
    kv_fraction = spec.kv_cache_free_gpu_mem_fraction if spec is not None else 0.9
    p = {"gpt_model_type": "inflight_fused_batching", "gpt_model_path": engine_param,
         # read with no fallback; empty: no tokenizer for guided decoding, which stays off
         "tokenizer_dir": "", "xgrammar_tokenizer_info_path": "", "guided_decoding_backend": "",
         "max_beam_width": "1", "batch_scheduler_policy": "guaranteed_no_evict",
         "kv_cache_free_gpu_mem_fraction": str(kv_fraction),
         "enable_kv_cache_reuse": "false", "normalize_log_probs": "true", "enable_chunked_context": "true",
         "exclude_input_in_output": "true", "cancellation_check_period_ms": "100", "stats_check_period_ms": "100"}
    if cfg.sliding_window and cfg.sliding_window < cfg.max_seq_len:
        # without it the executor attends over max_seq_len (mis.cc:141-151): a Mistral engine must say it
        p["max_attention_window_size"] = str(cfg.sliding_window)
    d = cfg.decoding
    if isinstance(d, MedusaSpec):
        p["decoding_mode"] = "medusa"
        p["medusa_choices"] = str(d)
    elif isinstance(d, LookaheadSpec):
        p["decoding_mode"] = "lookahead"
        p["lookahead_window_size"] = str(d.max_window_size)
        p["lookahead_ngram_size"] = str(d.max_ngram_size)
        p["lookahead_verification_set_size"] = str(d.max_verification_set_size)
    else:
        p["decoding_mode"] = "top_k_top_p"
    return p


def _param(key: str, value: str) -> str:
    return f"parameters: {{\n  key: \"{key}\"\n  value: {{ string_value: \"{value}\" }}\n}}\n"


def render(name: str, values: dict[str, str]) -> str:
    try:
        text = TEMPLATES[name].substitute(values)
    except KeyError as e:
        raise ConfigError(f"{name}/config.pbtxt: no value for ${{{e.args[0]}}}") from None
    if "${" in text:
        raise ConfigError(f"{name}/config.pbtxt: unfilled placeholder left")
    return text


def parse_config(text: str):
    """The rendered text as a Triton ModelConfig protobuf (raises ConfigError if it does not parse)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ConfigError(f"config.pbtxt does not parse as a Triton ModelConfig: {e}") from None


def write_repo(engine_dir: Path, out: Path, *, streaming: bool = True, force: bool = False,
               engine_dir_in_repo: str | None = None) -> Path:
    """Write the repository for `engine_dir` at `out`; returns `out`.

    engine_dir_in_repo: the engine path the server will see (default: the absolute path here for the
    tensorrtllm backend, a path relative to tensorrt_llm/ for the torch backend)."""
    engine_dir, out = Path(engine_dir), Path(out)
    cfg, marker, spec = _read_engine(engine_dir)
    torch_backend = marker.get("backend") == "torch"
    if engine_dir_in_repo is None:
        engine_dir_in_repo = (os.path.relpath(engine_dir.resolve(), out.resolve() / "tensorrt_llm") if torch_backend
                              else str(engine_dir.resolve()))
    values = parameters(cfg, marker, spec, engine_dir_in_repo, streaming,
                        speculation=spec.speculation if spec is not None else engine_speculation(engine_dir))
    texts = {name: render(name, values[name]) for name in MODELS}
    for name, text in texts.items():
        parse_config(text)
    with staging_dir(out, force, kind="triton_repo", inputs=[engine_dir]) as tmp:
        for name in MODELS:
            (tmp / name / "1").mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(texts[name])
        sources = resources.files("trtbuild.triton_repo") / "models"
        for name in ("preprocessing", "postprocessing", "tensorrt_llm_bls") + (("tensorrt_llm",) if torch_backend else ()):
            (tmp / name / "1" / "model.py").write_text((sources / f"{name}.py").read_text())
        (tmp / "preprocessing" / "tokenizer").mkdir()
        for f in tokenizer_files(engine_dir):
            shutil.copy2(f, tmp / "preprocessing" / "tokenizer" / f.name)
        # engine_dir: the engine as the server sees it (absolute for tensorrt-llm, relative to
        # tensorrt_llm/ for torch), not where it was read from (a build's staging directory)
        (tmp / MARKER).write_text(json.dumps({"kind": "triton_repo", "engine_dir": engine_dir_in_repo,
                                              "backend": marker.get("backend"), "streaming": streaming,
                                              "world_size": cfg.world_size}, indent=2) + "\n")
    return out
