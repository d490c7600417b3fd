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
directory, except `engine_dir` for the tensorrtllm backend, which must be absolute there.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

from trtbuild.errors import ConfigError
from trtbuild.fsutil import MARKER, staging_dir
from trtbuild.triton_repo.templates import TEMPLATES

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json")
MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")


def _read_engine(engine_dir: Path) -> tuple[dict, dict, dict]:
    try:
        cfg = json.loads((engine_dir / "config.json").read_text())
        marker = json.loads((engine_dir / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{engine_dir} is not an engine directory built by trtbuild ({e})") from None
    if "build_config" not in cfg or "pretrained_config" not in cfg:
        raise ConfigError(f"{engine_dir}/config.json is not an engine config (no build_config)")
    spec = {}
    spec_file = engine_dir.parent / "spec.yaml"
    if spec_file.is_file():
        import yaml

        spec = yaml.safe_load(spec_file.read_text()) or {}
    return cfg, marker, spec


def parameters(cfg: dict, marker: dict, spec: dict, engine_param: str, streaming: bool) -> dict[str, dict[str, str]]:
    """Template values per model, all strings."""
    bc, pre = cfg["build_config"], cfg["pretrained_config"]
    draft = int(bc.get("max_draft_len") or 0)
    common = {"triton_max_batch_size": str(bc["max_batch_size"]), "decoupled_mode": "true" if streaming else "false"}
    end_ids = spec.get("end_ids") or []
    speculative, decoding = "", "top_k_top_p"
    if pre.get("architecture") == "MedusaForCausalLM":
        from trtbuild.medusa.choices import parse_choices, to_brace

        decoding = "medusa"
        tree = parse_choices([list(p) for p in pre["medusa_choices"]]).choices  # every prefix listed
        speculative = _param("medusa_choices", to_brace(tree))
    elif pre.get("lookahead_config"):
        la = pre["lookahead_config"]
        decoding = "lookahead"
        speculative = "".join(_param(k, str(la[f])) for k, f in (
            ("lookahead_window_size", "max_window_size"), ("lookahead_ngram_size", "max_ngram_size"),
            ("lookahead_verification_set_size", "max_verification_set_size")))
    torch_backend = marker.get("backend") == "torch"
    tok = "../preprocessing/tokenizer"
    return {
        "ensemble": common,
        "preprocessing": {**common, "tokenizer_dir": "tokenizer", "add_special_tokens": "true",
                          "max_input_len": str(bc["max_input_len"]), "max_seq_len": str(int(bc["max_seq_len"]) - draft),
                          "end_ids": ",".join(str(i) for i in end_ids), "preprocessing_instance_count": "1"},
        "postprocessing": {**common, "tokenizer_dir": tok, "skip_special_tokens": "true",
                           "postprocessing_instance_count": "1"},
        "tensorrt_llm": {**common, "triton_backend": "python" if torch_backend else "tensorrtllm",
                         "max_queue_delay_microseconds": "0", "max_beam_width": "1", "engine_dir": engine_param,
                         "batching_strategy": "inflight_fused_batching",
                         "batch_scheduler_policy": "guaranteed_no_evict",
                         "kv_cache_free_gpu_mem_fraction": str(spec.get("kv_cache_free_gpu_mem_fraction", 0.9)),
                         "exclude_input_in_output": "true", "enable_chunked_context": "true",
                         "enable_kv_cache_reuse": "false", "normalize_log_probs": "true",
                         "cancellation_check_period_ms": "100", "stats_check_period_ms": "100",
                         "decoding_mode": decoding, "speculative_parameters": speculative},
        "tensorrt_llm_bls": {**common, "accumulate_tokens": "true", "tensorrt_llm_model_name": "tensorrt_llm",
                             "tokenizer_dir": tok, "logits_datatype": "TYPE_FP32", "bls_instance_count": "1"},
    }


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
    values = parameters(cfg, marker, spec, engine_dir_in_repo, streaming)
    texts = {name: render(name, values[name]) for name in MODELS}
    for name, text in texts.items():
        parse_config(text)
    with staging_dir(out, force) as tmp:
        for name in MODELS:
            (tmp / name / "1").mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(texts[name])
        sources = resources.files("trtbuild.triton_repo") / "models"
        for name in ("preprocessing", "postprocessing", "tensorrt_llm_bls") + (("tensorrt_llm",) if torch_backend else ()):
            (tmp / name / "1" / "model.py").write_text((sources / f"{name}.py").read_text())
        (tmp / "preprocessing" / "tokenizer").mkdir()
        for f in TOKENIZER_FILES:
            if (engine_dir / f).is_file():
                shutil.copy2(engine_dir / f, tmp / "preprocessing" / "tokenizer" / f)
        # engine_dir: the engine as the server sees it (absolute for tensorrt-llm, relative to
        # tensorrt_llm/ for torch), not where it was read from (a build's staging directory)
        (tmp / MARKER).write_text(json.dumps({"kind": "triton_repo", "engine_dir": engine_dir_in_repo,
                                              "backend": marker.get("backend"), "streaming": streaming,
                                              "world_size": (cfg["pretrained_config"].get("mapping") or {})
                                              .get("world_size", 1)}, indent=2) + "\n")
    return out
