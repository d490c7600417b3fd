"""config.pbtxt templates of the five models, with tensorrtllm_backend's model names, tensor names
and parameter keys (`all_models/inflight_batcher_llm`, formats sheet section 2). `${name}` is
filled by `render` with `string.Template.substitute`: a missing value is an error, never a
leftover placeholder. Optional inputs are marked `optional: true`."""

from __future__ import annotations

from string import Template


def _io(name: str, dtype: str, dims: str, optional: bool = False, extra: str = "") -> str:
    opt = "\n    optional: true" if optional else ""
    return f"  {{\n    name: \"{name}\"\n    data_type: {dtype}\n    dims: [ {dims} ]{opt}{extra}\n  }}"


def _block(kind: str, items: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _params(keys: list[str]) -> str:
    return "".join(f"parameters: {{\n  key: \"{k}\"\n  value: {{ string_value: \"${{{k}}}\" }}\n}}\n" for k in keys)


RAGGED = "\n    allow_ragged_batch: true"
SCALAR = "\n    reshape: { shape: [ ] }"

PREPROCESSING = Template(
    "name: \"preprocessing\"\nbackend: \"python\"\nmax_batch_size: ${triton_max_batch_size}\n"
    + _block("input", [
        _io("QUERY", "TYPE_STRING", "1"),
        _io("REQUEST_OUTPUT_LEN", "TYPE_INT32", "1"),
        _io("BAD_WORDS_DICT", "TYPE_STRING", "-1", True),
        _io("STOP_WORDS_DICT", "TYPE_STRING", "-1", True),
        _io("END_ID", "TYPE_INT32", "1", True),
        _io("PAD_ID", "TYPE_INT32", "1", True),
    ])
    + _block("output", [
        _io("INPUT_ID", "TYPE_INT32", "-1"),
        _io("REQUEST_INPUT_LEN", "TYPE_INT32", "1"),
        _io("BAD_WORDS_IDS", "TYPE_INT32", "2, -1"),
        _io("STOP_WORDS_IDS", "TYPE_INT32", "2, -1"),
        _io("REQUEST_OUTPUT_LEN", "TYPE_INT32", "-1"),
        _io("OUT_END_ID", "TYPE_INT32", "1"),
        _io("OUT_PAD_ID", "TYPE_INT32", "1"),
    ])
    + _params(["tokenizer_dir", "add_special_tokens", "max_input_len", "max_seq_len", "end_ids"])
    + "instance_group [\n  {\n    count: ${preprocessing_instance_count}\n    kind: KIND_CPU\n  }\n]\n")

POSTPROCESSING = Template(
    "name: \"postprocessing\"\nbackend: \"python\"\nmax_batch_size: ${triton_max_batch_size}\n"
    + _block("input", [
        _io("TOKENS_BATCH", "TYPE_INT32", "-1, -1"),
        _io("SEQUENCE_LENGTH", "TYPE_INT32", "-1"),
    ])
    + _block("output", [_io("OUTPUT", "TYPE_STRING", "-1")])
    + _params(["tokenizer_dir", "skip_special_tokens"])
    + "instance_group [\n  {\n    count: ${postprocessing_instance_count}\n    kind: KIND_CPU\n  }\n]\n")

_LLM_INPUTS = [
    _io("input_ids", "TYPE_INT32", "-1", extra=RAGGED),
    _io("input_lengths", "TYPE_INT32", "1", extra=SCALAR),
    _io("request_output_len", "TYPE_INT32", "1", extra=SCALAR),
    _io("end_id", "TYPE_INT32", "1", True, SCALAR),
    _io("pad_id", "TYPE_INT32", "1", True, SCALAR),
    _io("stop_words_list", "TYPE_INT32", "2, -1", True, RAGGED),
    _io("bad_words_list", "TYPE_INT32", "2, -1", True, RAGGED),
    _io("runtime_top_k", "TYPE_INT32", "1", True, SCALAR),
    _io("runtime_top_p", "TYPE_FP32", "1", True, SCALAR),
    _io("temperature", "TYPE_FP32", "1", True, SCALAR),
    _io("random_seed", "TYPE_UINT64", "1", True, SCALAR),
    _io("streaming", "TYPE_BOOL", "1", True),
    _io("return_perf_metrics", "TYPE_BOOL", "1", True),
]
_LLM_OUTPUTS = [
    _io("output_ids", "TYPE_INT32", "-1, -1"),
    _io("sequence_length", "TYPE_INT32", "-1"),
    _io("acceptance_rate", "TYPE_FP32", "1"),
    _io("total_accepted_draft_tokens", "TYPE_INT32", "1"),
    _io("total_draft_tokens", "TYPE_INT32", "1"),
]
_TRTLLM_KEYS = ["max_beam_width", "engine_dir", "batching_strategy", "batch_scheduler_policy",
                "kv_cache_free_gpu_mem_fraction", "exclude_input_in_output", "enable_chunked_context",
                "enable_kv_cache_reuse", "normalize_log_probs", "cancellation_check_period_ms",
                "stats_check_period_ms", "decoding_mode"]

TENSORRT_LLM = Template(
    "name: \"tensorrt_llm\"\nbackend: \"${triton_backend}\"\nmax_batch_size: ${triton_max_batch_size}\n\n"
    "model_transaction_policy {\n  decoupled: ${decoupled_mode}\n}\n\n"
    "dynamic_batching {\n  preferred_batch_size: [ ${triton_max_batch_size} ]\n"
    "  max_queue_delay_microseconds: ${max_queue_delay_microseconds}\n}\n\n"
    + _block("input", _LLM_INPUTS) + _block("output", _LLM_OUTPUTS)
    + "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
    + _params(_TRTLLM_KEYS) + "${speculative_parameters}")

BLS = Template(
    "name: \"tensorrt_llm_bls\"\nbackend: \"python\"\nmax_batch_size: ${triton_max_batch_size}\n\n"
    "model_transaction_policy {\n  decoupled: ${decoupled_mode}\n}\n\n"
    + _block("input", [
        _io("text_input", "TYPE_STRING", "1"),
        _io("max_tokens", "TYPE_INT32", "1", extra=SCALAR),
        _io("bad_words", "TYPE_STRING", "-1", True),
        _io("stop_words", "TYPE_STRING", "-1", True),
        _io("end_id", "TYPE_INT32", "1", True, SCALAR),
        _io("pad_id", "TYPE_INT32", "1", True, SCALAR),
        _io("top_k", "TYPE_INT32", "1", True, SCALAR),
        _io("top_p", "TYPE_FP32", "1", True, SCALAR),
        _io("temperature", "TYPE_FP32", "1", True, SCALAR),
        _io("seed", "TYPE_UINT64", "1", True, SCALAR),
        _io("stream", "TYPE_BOOL", "1", True),
    ])
    + _block("output", [
        _io("text_output", "TYPE_STRING", "-1"),
        _io("acceptance_rate", "TYPE_FP32", "1"),
        _io("total_accepted_draft_tokens", "TYPE_INT32", "1"),
        _io("total_draft_tokens", "TYPE_INT32", "1"),
    ])
    + _params(["accumulate_tokens", "tensorrt_llm_model_name", "tokenizer_dir", "logits_datatype"])
    + "instance_group [\n  {\n    count: ${bls_instance_count}\n    kind: KIND_CPU\n  }\n]\n")


def _step(model: str, pairs_in: list[tuple[str, str]], pairs_out: list[tuple[str, str]]) -> str:
    ins = "".join(f"      input_map {{\n        key: \"{k}\"\n        value: \"{v}\"\n      }}\n" for k, v in pairs_in)
    outs = "".join(f"      output_map {{\n        key: \"{k}\"\n        value: \"{v}\"\n      }}\n" for k, v in pairs_out)
    return f"    {{\n      model_name: \"{model}\"\n      model_version: -1\n{ins}{outs}    }}"


ENSEMBLE = Template(
    "name: \"ensemble\"\nplatform: \"ensemble\"\nmax_batch_size: ${triton_max_batch_size}\n"
    + _block("input", [
        _io("text_input", "TYPE_STRING", "1"),
        _io("max_tokens", "TYPE_INT32", "1"),
        _io("bad_words", "TYPE_STRING", "-1", True),
        _io("stop_words", "TYPE_STRING", "-1", True),
        _io("end_id", "TYPE_INT32", "1", True),
        _io("pad_id", "TYPE_INT32", "1", True),
        _io("top_k", "TYPE_INT32", "1", True),
        _io("top_p", "TYPE_FP32", "1", True),
        _io("temperature", "TYPE_FP32", "1", True),
        _io("seed", "TYPE_UINT64", "1", True),
        _io("stream", "TYPE_BOOL", "1", True),
        _io("return_perf_metrics", "TYPE_BOOL", "1", True),
    ])
    + _block("output", [
        _io("text_output", "TYPE_STRING", "-1"),
        _io("acceptance_rate", "TYPE_FP32", "1"),
        _io("total_accepted_draft_tokens", "TYPE_INT32", "1"),
        _io("total_draft_tokens", "TYPE_INT32", "1"),
    ])
    + "ensemble_scheduling {\n  step [\n" + ",\n".join([
        _step("preprocessing",
              [("QUERY", "text_input"), ("REQUEST_OUTPUT_LEN", "max_tokens"), ("BAD_WORDS_DICT", "bad_words"),
               ("STOP_WORDS_DICT", "stop_words"), ("END_ID", "end_id"), ("PAD_ID", "pad_id")],
              [("INPUT_ID", "_INPUT_ID"), ("REQUEST_INPUT_LEN", "_REQUEST_INPUT_LEN"),
               ("REQUEST_OUTPUT_LEN", "_REQUEST_OUTPUT_LEN"), ("STOP_WORDS_IDS", "_STOP_WORDS_IDS"),
               ("BAD_WORDS_IDS", "_BAD_WORDS_IDS"), ("OUT_END_ID", "_PREPROCESSOR_END_ID"),
               ("OUT_PAD_ID", "_PREPROCESSOR_PAD_ID")]),
        _step("tensorrt_llm",
              [("input_ids", "_INPUT_ID"), ("input_lengths", "_REQUEST_INPUT_LEN"),
               ("request_output_len", "_REQUEST_OUTPUT_LEN"), ("end_id", "_PREPROCESSOR_END_ID"),
               ("pad_id", "_PREPROCESSOR_PAD_ID"), ("stop_words_list", "_STOP_WORDS_IDS"),
               ("bad_words_list", "_BAD_WORDS_IDS"), ("runtime_top_k", "top_k"), ("runtime_top_p", "top_p"),
               ("temperature", "temperature"), ("random_seed", "seed"), ("streaming", "stream"),
               ("return_perf_metrics", "return_perf_metrics")],
              [("output_ids", "_TOKENS_BATCH"), ("sequence_length", "_SEQUENCE_LENGTH"),
               ("acceptance_rate", "acceptance_rate"), ("total_accepted_draft_tokens", "total_accepted_draft_tokens"),
               ("total_draft_tokens", "total_draft_tokens")]),
        _step("postprocessing", [("TOKENS_BATCH", "_TOKENS_BATCH"), ("SEQUENCE_LENGTH", "_SEQUENCE_LENGTH")],
              [("OUTPUT", "text_output")]),
    ]) + "\n  ]\n}\n")

TEMPLATES = {"ensemble": ENSEMBLE, "preprocessing": PREPROCESSING, "tensorrt_llm": TENSORRT_LLM,
             "postprocessing": POSTPROCESSING, "tensorrt_llm_bls": BLS}
