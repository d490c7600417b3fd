"""What tensorrtllm_backend's own repository declares, as data: the input and output tensors of
`all_models/inflight_batcher_llm/{ensemble,tensorrt_llm_bls,tensorrt_llm,preprocessing,postprocessing}`
and the ensemble's step maps, read at tensorrtllm_backend@c2e65b8 (the last commit that holds the
backend sources; the 1.2.1 line ships this interface). trtbuild's templates declare the client-facing
models (ensemble, BLS, tensorrt_llm) from these tables, so an unchanged upstream client finds every
tensor it may send or read, with upstream's name, dtype and dims; the conformance tests hold the
rendered files against them.

A row: (name, data_type, dims, optional, reshape to [], allow_ragged_batch, line in the file).
`${logits_datatype}` / `${encoder_input_features_data_type}` are upstream's template variables.
"""

from __future__ import annotations

from dataclasses import dataclass

UPSTREAM = "tensorrtllm_backend@c2e65b8"


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False
    reshape: bool = False  # `reshape: { shape: [ ] }`: the model sees a scalar per request
    ragged: bool = False  # `allow_ragged_batch: true`
    line: int = 0  # where upstream declares it


def _table(*rows: tuple) -> tuple[Tensor, ...]:
    return tuple(Tensor(*r) for r in rows)


# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/ensemble/config.pbtxt, inputs; the last number of a row is its line there
ENSEMBLE_INPUTS = _table(
    ("text_input", "TYPE_STRING", (1,), False, False, False, 32),
    ("decoder_text_input", "TYPE_STRING", (1,), True, False, False, 37),
    ("max_tokens", "TYPE_INT32", (1,), False, False, False, 43),
    ("num_return_sequences", "TYPE_INT32", (1,), True, False, False, 48),
    ("bad_words", "TYPE_STRING", (-1,), True, False, False, 54),
    ("stop_words", "TYPE_STRING", (-1,), True, False, False, 60),
    ("exclude_input_in_output", "TYPE_BOOL", (1,), True, False, False, 66),
    ("end_id", "TYPE_INT32", (1,), True, False, False, 72),
    ("pad_id", "TYPE_INT32", (1,), True, False, False, 78),
    ("top_k", "TYPE_INT32", (1,), True, False, False, 84),
    ("top_p", "TYPE_FP32", (1,), True, False, False, 90),
    ("temperature", "TYPE_FP32", (1,), True, False, False, 96),
    ("length_penalty", "TYPE_FP32", (1,), True, False, False, 102),
    ("repetition_penalty", "TYPE_FP32", (1,), True, False, False, 108),
    ("min_tokens", "TYPE_INT32", (1,), True, False, False, 114),
    ("presence_penalty", "TYPE_FP32", (1,), True, False, False, 120),
    ("frequency_penalty", "TYPE_FP32", (1,), True, False, False, 126),
    ("seed", "TYPE_UINT64", (1,), True, False, False, 132),
    ("return_log_probs", "TYPE_BOOL", (1,), True, False, False, 138),
    ("return_context_logits", "TYPE_BOOL", (1,), True, False, False, 144),
    ("return_generation_logits", "TYPE_BOOL", (1,), True, False, False, 150),
    ("return_perf_metrics", "TYPE_BOOL", (1,), True, False, False, 156),
    ("beam_width", "TYPE_INT32", (1,), True, False, False, 162),
    ("stream", "TYPE_BOOL", (1,), True, False, False, 168),
    ("prompt_embedding_table", "TYPE_FP16", (-1, -1), True, False, False, 174),
    ("prompt_table_extra_id", "TYPE_UINT64", (1,), True, False, False, 180),
    ("prompt_vocab_size", "TYPE_INT32", (1,), True, False, False, 186),
    ("embedding_bias_words", "TYPE_STRING", (-1,), True, False, False, 192),
    ("embedding_bias_weights", "TYPE_FP32", (-1,), True, False, False, 198),
    ("lora_task_id", "TYPE_UINT64", (1,), True, False, False, 208),
    ("lora_weights", "TYPE_FP16", (-1, -1), True, False, True, 218),
    ("lora_config", "TYPE_INT32", (-1, 3), True, False, True, 238),
    ("guided_decoding_guide_type", "TYPE_STRING", (1,), True, False, True, 245),
    ("guided_decoding_guide", "TYPE_STRING", (1,), True, False, True, 252),
)

# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/ensemble/config.pbtxt, outputs; the last number of a row is its line there
ENSEMBLE_OUTPUTS = _table(
    ("text_output", "TYPE_STRING", (-1,), False, False, False, 261),
    ("cum_log_probs", "TYPE_FP32", (-1,), False, False, False, 266),
    ("output_log_probs", "TYPE_FP32", (-1, -1), False, False, False, 271),
    ("context_logits", "${logits_datatype}", (-1, -1), False, False, False, 276),
    ("generation_logits", "${logits_datatype}", (-1, -1, -1), False, False, False, 281),
    ("batch_index", "TYPE_INT32", (1,), False, False, False, 286),
    ("sequence_index", "TYPE_INT32", (1,), False, False, False, 291),
    ("kv_cache_alloc_new_blocks", "TYPE_INT32", (1,), False, False, False, 296),
    ("kv_cache_reused_blocks", "TYPE_INT32", (1,), False, False, False, 301),
    ("kv_cache_alloc_total_blocks", "TYPE_INT32", (1,), False, False, False, 306),
    ("arrival_time_ns", "TYPE_INT64", (1,), False, False, False, 316),
    ("first_scheduled_time_ns", "TYPE_INT64", (1,), False, False, False, 321),
    ("first_token_time_ns", "TYPE_INT64", (1,), False, False, False, 326),
    ("last_token_time_ns", "TYPE_INT64", (1,), False, False, False, 331),
    ("acceptance_rate", "TYPE_FP32", (1,), False, False, False, 336),
    ("total_accepted_draft_tokens", "TYPE_INT32", (1,), False, False, False, 341),
    ("total_draft_tokens", "TYPE_INT32", (1,), False, False, False, 346),
)

# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/tensorrt_llm_bls/config.pbtxt, inputs; the last number of a row is its line there
TENSORRT_LLM_BLS_INPUTS = _table(
    ("text_input", "TYPE_STRING", (1,), False, False, False, 37),
    ("decoder_text_input", "TYPE_STRING", (1,), True, False, False, 42),
    ("image_input", "TYPE_FP16", (-1, 3, -1, -1), True, False, False, 48),
    ("image_bytes_input", "TYPE_UINT8", (-1, -1, -1, -1), True, False, False, 54),
    ("image_url_input", "TYPE_STRING", (1,), True, False, False, 60),
    ("video_bytes_input", "TYPE_UINT8", (-1, -1, -1, -1), True, False, False, 66),
    ("max_tokens", "TYPE_INT32", (1,), False, False, False, 72),
    ("bad_words", "TYPE_STRING", (-1,), True, False, False, 77),
    ("stop_words", "TYPE_STRING", (-1,), True, False, False, 83),
    ("exclude_input_in_output", "TYPE_BOOL", (1,), True, False, False, 89),
    ("end_id", "TYPE_INT32", (1,), True, False, False, 95),
    ("pad_id", "TYPE_INT32", (1,), True, False, False, 101),
    ("top_k", "TYPE_INT32", (1,), True, False, False, 107),
    ("top_p", "TYPE_FP32", (1,), True, False, False, 113),
    ("temperature", "TYPE_FP32", (1,), True, False, False, 119),
    ("length_penalty", "TYPE_FP32", (1,), True, False, False, 125),
    ("repetition_penalty", "TYPE_FP32", (1,), True, False, False, 131),
    ("min_tokens", "TYPE_INT32", (1,), True, False, False, 137),
    ("presence_penalty", "TYPE_FP32", (1,), True, False, False, 143),
    ("frequency_penalty", "TYPE_FP32", (1,), True, False, False, 149),
    ("seed", "TYPE_UINT64", (1,), True, False, False, 155),
    ("return_log_probs", "TYPE_BOOL", (1,), True, True, False, 161),
    ("return_context_logits", "TYPE_BOOL", (1,), True, True, False, 168),
    ("return_generation_logits", "TYPE_BOOL", (1,), True, True, False, 175),
    ("num_return_sequences", "TYPE_INT32", (1,), True, True, False, 182),
    ("beam_width", "TYPE_INT32", (1,), True, False, False, 189),
    ("stream", "TYPE_BOOL", (1,), True, False, False, 195),
    ("prompt_embedding_table", "TYPE_FP16", (-1, -1), True, False, False, 201),
    ("prompt_vocab_size", "TYPE_INT32", (1,), True, False, False, 207),
    ("prompt_table_extra_id", "TYPE_UINT64", (1,), True, False, False, 213),
    ("embedding_bias_words", "TYPE_STRING", (-1,), True, False, False, 219),
    ("embedding_bias_weights", "TYPE_FP32", (-1,), True, False, False, 225),
    ("num_draft_tokens", "TYPE_INT32", (1,), True, False, False, 231),
    ("use_draft_logits", "TYPE_BOOL", (1,), True, True, False, 237),
    ("lora_task_id", "TYPE_UINT64", (1,), True, True, False, 248),
    ("lora_weights", "TYPE_FP16", (-1, -1), True, False, True, 259),
    ("lora_config", "TYPE_INT32", (-1, 3), True, False, True, 279),
    ("return_perf_metrics", "TYPE_BOOL", (1,), True, True, False, 286),
    ("guided_decoding_guide_type", "TYPE_STRING", (1,), True, False, False, 293),
    ("guided_decoding_guide", "TYPE_STRING", (1,), True, False, False, 299),
)

# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/tensorrt_llm_bls/config.pbtxt, outputs; the last number of a row is its line there
TENSORRT_LLM_BLS_OUTPUTS = _table(
    ("text_output", "TYPE_STRING", (-1,), False, False, False, 307),
    ("cum_log_probs", "TYPE_FP32", (-1,), False, False, False, 312),
    ("output_log_probs", "TYPE_FP32", (-1, -1), False, False, False, 317),
    ("context_logits", "${logits_datatype}", (-1, -1), False, False, False, 322),
    ("generation_logits", "${logits_datatype}", (-1, -1, -1), False, False, False, 327),
    ("batch_index", "TYPE_INT32", (1,), False, False, False, 332),
    ("sequence_index", "TYPE_INT32", (1,), False, False, False, 337),
    ("kv_cache_alloc_new_blocks", "TYPE_INT32", (1,), False, False, False, 342),
    ("kv_cache_reused_blocks", "TYPE_INT32", (1,), False, False, False, 347),
    ("kv_cache_alloc_total_blocks", "TYPE_INT32", (1,), False, False, False, 352),
    ("arrival_time_ns", "TYPE_INT64", (1,), False, False, False, 357),
    ("first_scheduled_time_ns", "TYPE_INT64", (1,), False, False, False, 362),
    ("first_token_time_ns", "TYPE_INT64", (1,), False, False, False, 367),
    ("last_token_time_ns", "TYPE_INT64", (1,), False, False, False, 372),
    ("acceptance_rate", "TYPE_FP32", (1,), False, False, False, 377),
    ("total_accepted_draft_tokens", "TYPE_INT32", (1,), False, False, False, 382),
    ("total_draft_tokens", "TYPE_INT32", (1,), False, False, False, 387),
)

# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt, inputs; the last number of a row is its line there
TENSORRT_LLM_INPUTS = _table(
    ("input_ids", "TYPE_INT32", (-1,), True, False, True, 43),
    ("encoder_input_features", "${encoder_input_features_data_type}", (-1, -1), True, False, True, 50),
    ("encoder_output_lengths", "TYPE_INT32", (1,), True, True, False, 57),
    ("input_lengths", "TYPE_INT32", (1,), False, True, False, 64),
    ("request_output_len", "TYPE_INT32", (1,), False, True, False, 70),
    ("num_return_sequences", "TYPE_INT32", (1,), True, True, False, 76),
    ("draft_input_ids", "TYPE_INT32", (-1,), True, False, True, 83),
    ("decoder_input_ids", "TYPE_INT32", (-1,), True, False, True, 90),
    ("decoder_input_lengths", "TYPE_INT32", (1,), True, True, False, 97),
    ("draft_logits", "${logits_datatype}", (-1, -1), True, False, True, 104),
    ("draft_acceptance_threshold", "TYPE_FP32", (1,), True, True, False, 111),
    ("end_id", "TYPE_INT32", (1,), True, True, False, 118),
    ("pad_id", "TYPE_INT32", (1,), True, True, False, 125),
    ("stop_words_list", "TYPE_INT32", (2, -1), True, False, True, 132),
    ("bad_words_list", "TYPE_INT32", (2, -1), True, False, True, 139),
    ("embedding_bias", "TYPE_FP32", (-1,), True, False, True, 146),
    ("beam_width", "TYPE_INT32", (1,), True, True, False, 153),
    ("temperature", "TYPE_FP32", (1,), True, True, False, 160),
    ("runtime_top_k", "TYPE_INT32", (1,), True, True, False, 167),
    ("runtime_top_p", "TYPE_FP32", (1,), True, True, False, 174),
    ("runtime_top_p_min", "TYPE_FP32", (1,), True, True, False, 181),
    ("runtime_top_p_decay", "TYPE_FP32", (1,), True, True, False, 188),
    ("runtime_top_p_reset_ids", "TYPE_INT32", (1,), True, True, False, 195),
    ("len_penalty", "TYPE_FP32", (1,), True, True, False, 202),
    ("early_stopping", "TYPE_BOOL", (1,), True, True, False, 209),
    ("repetition_penalty", "TYPE_FP32", (1,), True, True, False, 216),
    ("min_tokens", "TYPE_INT32", (1,), True, True, False, 223),
    ("beam_search_diversity_rate", "TYPE_FP32", (1,), True, True, False, 230),
    ("presence_penalty", "TYPE_FP32", (1,), True, True, False, 237),
    ("frequency_penalty", "TYPE_FP32", (1,), True, True, False, 244),
    ("seed", "TYPE_UINT64", (1,), True, True, False, 251),
    ("return_log_probs", "TYPE_BOOL", (1,), True, True, False, 258),
    ("return_context_logits", "TYPE_BOOL", (1,), True, True, False, 265),
    ("return_generation_logits", "TYPE_BOOL", (1,), True, True, False, 272),
    ("return_perf_metrics", "TYPE_BOOL", (1,), True, True, False, 279),
    ("exclude_input_in_output", "TYPE_BOOL", (1,), True, True, False, 286),
    ("stop", "TYPE_BOOL", (1,), True, True, False, 293),
    ("streaming", "TYPE_BOOL", (1,), True, True, False, 300),
    ("prompt_embedding_table", "TYPE_FP16", (-1, -1), True, False, True, 307),
    ("prompt_table_extra_ids", "TYPE_UINT64", (-1,), True, False, True, 314),
    ("prompt_vocab_size", "TYPE_INT32", (1,), True, True, False, 321),
    ("cross_attention_mask", "TYPE_BOOL", (-1, -1), True, False, True, 329),
    ("mrope_rotary_cos_sin", "TYPE_FP32", (-1,), True, False, False, 337),
    ("mrope_position_deltas", "TYPE_INT64", (1,), True, False, False, 343),
    ("lora_task_id", "TYPE_UINT64", (1,), True, True, False, 353),
    ("lora_weights", "TYPE_FP16", (-1, -1), True, False, True, 364),
    ("lora_config", "TYPE_INT32", (-1, 3), True, False, True, 384),
    ("context_phase_params", "TYPE_UINT8", (-1,), True, False, True, 391),
    ("skip_cross_attn_blocks", "TYPE_BOOL", (1,), True, False, True, 399),
    ("retention_token_range_starts", "TYPE_INT32", (-1,), True, False, True, 406),
    ("retention_token_range_ends", "TYPE_INT32", (-1,), True, False, True, 413),
    ("retention_token_range_priorities", "TYPE_INT32", (-1,), True, False, True, 420),
    ("retention_token_range_durations_ms", "TYPE_INT32", (-1,), True, False, True, 427),
    ("retention_decode_priority", "TYPE_INT32", (1,), True, False, True, 434),
    ("retention_decode_duration_ms", "TYPE_INT32", (1,), True, False, True, 441),
    ("guided_decoding_guide_type", "TYPE_STRING", (1,), True, False, True, 448),
    ("guided_decoding_guide", "TYPE_STRING", (1,), True, False, True, 455),
    ("lookahead_window_size", "TYPE_INT32", (1,), True, False, True, 462),
    ("lookahead_ngram_size", "TYPE_INT32", (1,), True, False, True, 469),
    ("lookahead_verification_set_size", "TYPE_INT32", (1,), True, False, True, 476),
)

# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt, outputs; the last number of a row is its line there
TENSORRT_LLM_OUTPUTS = _table(
    ("output_ids", "TYPE_INT32", (-1, -1), False, False, False, 485),
    ("sequence_length", "TYPE_INT32", (-1,), False, False, False, 490),
    ("cum_log_probs", "TYPE_FP32", (-1,), False, False, False, 495),
    ("output_log_probs", "TYPE_FP32", (-1, -1), False, False, False, 500),
    ("context_logits", "${logits_datatype}", (-1, -1), False, False, False, 505),
    ("generation_logits", "${logits_datatype}", (-1, -1, -1), False, False, False, 510),
    ("batch_index", "TYPE_INT32", (1,), False, False, False, 515),
    ("sequence_index", "TYPE_INT32", (1,), False, False, False, 520),
    ("context_phase_params", "TYPE_UINT8", (-1,), False, False, False, 525),
    ("kv_cache_alloc_new_blocks", "TYPE_INT32", (1,), False, False, False, 530),
    ("kv_cache_reused_blocks", "TYPE_INT32", (1,), False, False, False, 535),
    ("kv_cache_alloc_total_blocks", "TYPE_INT32", (1,), False, False, False, 540),
    ("arrival_time_ns", "TYPE_INT64", (1,), False, False, False, 545),
    ("first_scheduled_time_ns", "TYPE_INT64", (1,), False, False, False, 550),
    ("first_token_time_ns", "TYPE_INT64", (1,), False, False, False, 555),
    ("last_token_time_ns", "TYPE_INT64", (1,), False, False, False, 560),
    ("acceptance_rate", "TYPE_FP32", (1,), False, False, False, 565),
    ("total_accepted_draft_tokens", "TYPE_INT32", (1,), False, False, False, 570),
    ("total_draft_tokens", "TYPE_INT32", (1,), False, False, False, 575),
)

# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/preprocessing/config.pbtxt, inputs; the last number of a row is its line there
PREPROCESSING_INPUTS = _table(
    ("QUERY", "TYPE_STRING", (1,), False, False, False, 39),
    ("DECODER_QUERY", "TYPE_STRING", (1,), True, False, False, 44),
    ("IMAGE_BYTES", "TYPE_UINT8", (-1, -1, -1, -1), True, False, False, 50),
    ("IMAGE_URL", "TYPE_STRING", (1,), True, False, False, 56),
    ("VIDEO_BYTES", "TYPE_UINT8", (-1, -1, -1, -1), True, False, False, 62),
    ("REQUEST_OUTPUT_LEN", "TYPE_INT32", (1,), False, False, False, 68),
    ("BAD_WORDS_DICT", "TYPE_STRING", (-1,), True, False, False, 73),
    ("STOP_WORDS_DICT", "TYPE_STRING", (-1,), True, False, False, 79),
    ("EMBEDDING_BIAS_WORDS", "TYPE_STRING", (-1,), True, False, False, 85),
    ("EMBEDDING_BIAS_WEIGHTS", "TYPE_FP32", (-1,), True, False, False, 91),
    ("END_ID", "TYPE_INT32", (1,), True, False, False, 97),
    ("PAD_ID", "TYPE_INT32", (1,), True, False, False, 103),
    ("PROMPT_TABLE_EXTRA_ID", "TYPE_UINT64", (1,), True, False, False, 109),
)

# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/preprocessing/config.pbtxt, outputs; the last number of a row is its line there
PREPROCESSING_OUTPUTS = _table(
    ("INPUT_ID", "TYPE_INT32", (-1,), False, False, False, 117),
    ("REQUEST_INPUT_LEN", "TYPE_INT32", (1,), False, False, False, 122),
    ("DECODER_INPUT_ID", "TYPE_INT32", (-1,), False, False, False, 127),
    ("REQUEST_DECODER_INPUT_LEN", "TYPE_INT32", (1,), False, False, False, 132),
    ("BAD_WORDS_IDS", "TYPE_INT32", (2, -1), False, False, False, 137),
    ("STOP_WORDS_IDS", "TYPE_INT32", (2, -1), False, False, False, 142),
    ("EMBEDDING_BIAS", "TYPE_FP32", (-1,), False, False, False, 147),
    ("REQUEST_OUTPUT_LEN", "TYPE_INT32", (-1,), False, False, False, 152),
    ("OUT_END_ID", "TYPE_INT32", (1,), False, False, False, 157),
    ("OUT_PAD_ID", "TYPE_INT32", (1,), False, False, False, 162),
    ("OUT_PROMPT_TABLE_EXTRA_IDS", "TYPE_UINT64", (-1,), False, False, False, 167),
    ("PIXEL_VALUES", "TYPE_FP16", (-1, -1, -1, -1), False, False, False, 172),
    ("ASPECT_RATIO_IDS", "TYPE_INT64", (-1,), False, False, False, 177),
    ("ASPECT_RATIO_MASK", "TYPE_INT64", (-1, -1), False, False, False, 182),
    ("CROSS_ATTENTION_MASK", "TYPE_INT64", (-1, -1, -1), False, False, False, 187),
    ("IMAGE_SIZES", "TYPE_INT64", (2,), False, False, False, 193),
    ("IS_VIDEO_INPUT", "TYPE_BOOL", (1,), False, False, False, 199),
    ("ATTENTION_MASK", "TYPE_INT64", (-1,), False, False, False, 205),
    ("IMAGE_GRID_THW", "TYPE_INT64", (3,), False, False, False, 210),
    ("VISION_INPUT_ID", "TYPE_INT32", (-1,), False, False, False, 215),
)

# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/postprocessing/config.pbtxt, inputs; the last number of a row is its line there
POSTPROCESSING_INPUTS = _table(
    ("TOKENS_BATCH", "TYPE_INT32", (-1, -1), False, False, False, 33),
    ("SEQUENCE_LENGTH", "TYPE_INT32", (-1,), False, False, False, 38),
)

# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/postprocessing/config.pbtxt, outputs; the last number of a row is its line there
POSTPROCESSING_OUTPUTS = _table(
    ("OUTPUT", "TYPE_STRING", (-1,), False, False, False, 45),
)
# The 1.x copies of these files (NVIDIA/TensorRT-LLM:triton_backend/all_models/inflight_batcher_llm/,
# where the backend moved: ensemble/config.pbtxt@2a9abd95, tensorrt_llm/config.pbtxt@0c8de69a,
# tensorrt_llm_bls/config.pbtxt@0193dbd4) add token counts: two request flags after
# return_perf_metrics and two outputs after total_draft_tokens; the C++ backend writes num_input_tokens
# (the prompt's length) and num_output_tokens (the response's generated tokens) when asked
# (triton_backend/inflight_batcher_llm/src/model_instance_state.cc@c8c6df08, fillTritonResponse).
_COUNT_FLAGS = ("return_num_input_tokens", "return_num_output_tokens")
_COUNTS = _table(("num_input_tokens", "TYPE_INT32", (1,)), ("num_output_tokens", "TYPE_INT32", (1,)))


def _after(table: tuple[Tensor, ...], name: str, added: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    i = [t.name for t in table].index(name) + 1
    return table[:i] + added + table[i:]


ENSEMBLE_INPUTS = _after(ENSEMBLE_INPUTS, "return_perf_metrics",
                         tuple(Tensor(n, "TYPE_BOOL", (1,), True) for n in _COUNT_FLAGS))
TENSORRT_LLM_BLS_INPUTS = _after(TENSORRT_LLM_BLS_INPUTS, "return_perf_metrics",
                                 tuple(Tensor(n, "TYPE_BOOL", (1,), True, True) for n in _COUNT_FLAGS))
TENSORRT_LLM_INPUTS = _after(TENSORRT_LLM_INPUTS, "return_perf_metrics",
                             tuple(Tensor(n, "TYPE_BOOL", (1,), True, True) for n in _COUNT_FLAGS))
ENSEMBLE_OUTPUTS, TENSORRT_LLM_BLS_OUTPUTS, TENSORRT_LLM_OUTPUTS = (
    t + _COUNTS for t in (ENSEMBLE_OUTPUTS, TENSORRT_LLM_BLS_OUTPUTS, TENSORRT_LLM_OUTPUTS))

# The ensemble's steps, (model, [(step input, ensemble tensor)], [(step output, ensemble tensor)]):
# tensorrtllm_backend@c2e65b8:all_models/inflight_batcher_llm/ensemble/config.pbtxt:354 (preprocessing),
# :442 (tensorrt_llm), :658 (postprocessing), with the 1.x token counts (ensemble/config.pbtxt@2a9abd95).
ENSEMBLE_STEPS: tuple[tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]], ...] = (
    ("preprocessing",
     (("QUERY", "text_input"), ("DECODER_QUERY", "decoder_text_input"), ("REQUEST_OUTPUT_LEN", "max_tokens"),
      ("BAD_WORDS_DICT", "bad_words"), ("STOP_WORDS_DICT", "stop_words"),
      ("EMBEDDING_BIAS_WORDS", "embedding_bias_words"), ("EMBEDDING_BIAS_WEIGHTS", "embedding_bias_weights"),
      ("END_ID", "end_id"), ("PAD_ID", "pad_id"), ("PROMPT_TABLE_EXTRA_ID", "prompt_table_extra_id")),
     (("REQUEST_INPUT_LEN", "_REQUEST_INPUT_LEN"), ("INPUT_ID", "_INPUT_ID"),
      ("REQUEST_DECODER_INPUT_LEN", "_REQUEST_DECODER_INPUT_LEN"), ("DECODER_INPUT_ID", "_DECODER_INPUT_ID"),
      ("REQUEST_OUTPUT_LEN", "_REQUEST_OUTPUT_LEN"), ("STOP_WORDS_IDS", "_STOP_WORDS_IDS"),
      ("BAD_WORDS_IDS", "_BAD_WORDS_IDS"), ("EMBEDDING_BIAS", "_EMBEDDING_BIAS"),
      ("OUT_END_ID", "_PREPROCESSOR_END_ID"), ("OUT_PAD_ID", "_PREPROCESSOR_PAD_ID"),
      ("OUT_PROMPT_TABLE_EXTRA_IDS", "_OUT_PROMPT_TABLE_EXTRA_IDS"))),
    ("tensorrt_llm",
     (("input_ids", "_INPUT_ID"), ("decoder_input_ids", "_DECODER_INPUT_ID"), ("input_lengths", "_REQUEST_INPUT_LEN"),
      ("decoder_input_lengths", "_REQUEST_DECODER_INPUT_LEN"), ("exclude_input_in_output", "exclude_input_in_output"),
      ("request_output_len", "_REQUEST_OUTPUT_LEN"), ("end_id", "_PREPROCESSOR_END_ID"),
      ("pad_id", "_PREPROCESSOR_PAD_ID"), ("embedding_bias", "_EMBEDDING_BIAS"), ("runtime_top_k", "top_k"),
      ("runtime_top_p", "top_p"), ("temperature", "temperature"), ("len_penalty", "length_penalty"),
      ("repetition_penalty", "repetition_penalty"), ("min_tokens", "min_tokens"),
      ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"), ("seed", "seed"),
      ("return_log_probs", "return_log_probs"), ("return_context_logits", "return_context_logits"),
      ("return_generation_logits", "return_generation_logits"), ("return_perf_metrics", "return_perf_metrics"),
      ("return_num_input_tokens", "return_num_input_tokens"), ("return_num_output_tokens", "return_num_output_tokens"),
      ("num_return_sequences", "num_return_sequences"), ("beam_width", "beam_width"), ("streaming", "stream"),
      ("prompt_embedding_table", "prompt_embedding_table"), ("prompt_vocab_size", "prompt_vocab_size"),
      ("stop_words_list", "_STOP_WORDS_IDS"), ("bad_words_list", "_BAD_WORDS_IDS"),
      ("prompt_table_extra_ids", "_OUT_PROMPT_TABLE_EXTRA_IDS"), ("lora_task_id", "lora_task_id"),
      ("lora_weights", "lora_weights"), ("lora_config", "lora_config"),
      ("guided_decoding_guide_type", "guided_decoding_guide_type"), ("guided_decoding_guide", "guided_decoding_guide")),
     (("output_ids", "_TOKENS_BATCH"), ("sequence_length", "_SEQUENCE_LENGTH"), ("cum_log_probs", "cum_log_probs"),
      ("output_log_probs", "output_log_probs"), ("context_logits", "context_logits"),
      ("generation_logits", "generation_logits"), ("batch_index", "batch_index"), ("sequence_index", "sequence_index"),
      ("kv_cache_alloc_new_blocks", "kv_cache_alloc_new_blocks"), ("kv_cache_reused_blocks", "kv_cache_reused_blocks"),
      ("kv_cache_alloc_total_blocks", "kv_cache_alloc_total_blocks"), ("arrival_time_ns", "arrival_time_ns"),
      ("first_scheduled_time_ns", "first_scheduled_time_ns"), ("first_token_time_ns", "first_token_time_ns"),
      ("last_token_time_ns", "last_token_time_ns"), ("acceptance_rate", "acceptance_rate"),
      ("total_accepted_draft_tokens", "total_accepted_draft_tokens"), ("total_draft_tokens", "total_draft_tokens"),
      ("num_input_tokens", "num_input_tokens"), ("num_output_tokens", "num_output_tokens"))),
    ("postprocessing",
     (("TOKENS_BATCH", "_TOKENS_BATCH"), ("SEQUENCE_LENGTH", "_SEQUENCE_LENGTH")),
     (("OUTPUT", "text_output"),)),
)

# The ten outputs the C++ backend writes for a request with return_perf_metrics (formats sheet 2.1,
# model_instance_state.cc@c2e65b8 l.1255-1306), in upstream's declaration order.
PERF_METRICS = ("kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
                "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
                "acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens")
