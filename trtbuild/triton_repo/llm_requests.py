"""One request to the `tensorrt_llm` model, read as the C++ backend reads it, for the torch backend.

Inputs are upstream's tensors (`upstream.TENSORRT_LLM_INPUTS`). Each is honoured, or, where the
request asks for something this engine cannot do, refused for that request with a clear error
(`RequestError`; the server stays up). Upstream's default values are always accepted; nothing is
silently ignored. Defaults and rules follow TensorRT-LLM's executor:

- sampling: `temperature` 1.0, `runtime_top_k` 0, `runtime_top_p` 0.0, and top_k = top_p = 0 is
  greedy (top_k 1); top_k > 0 with top_p 0 means top_p 1; top_p is clamped to [0, 1] and top_k to
  [0, 1024] (TensorRT-LLM `DefaultDecodingParams`, `regularizeTopKTopP`/`clampTopP` in
  cpp/tensorrt_llm/kernels/samplingTopKKernels.h); `seed` defaults to 0
  (`DefaultDecodingParams::getSeed`), so an unseeded sampled request is reproducible, as upstream;
- `exclude_input_in_output` defaults to the model's parameter; false puts the prompt in front of
  the generated tokens of a non-streamed response (a streamed response carries new tokens only);
- `beam_width`, `num_return_sequences`: 1 (this engine decodes one beam); `len_penalty`,
  `early_stopping`, `beam_search_diversity_rate` only act on beam search and are accepted as such;
- `bad_words_list` bans a bad word's last token wherever the rest ends the sequence so far, and
  `embedding_bias` is added to the logits first, as TensorRT-LLM's ban-words and penalty layers do
  (`trtbuild.runtime.sampling`);
- refused when present: encoder/decoder inputs, draft-model inputs, prompt tables, LoRA, mrope,
  disaggregated context phase, KV retention hints, guided decoding, context / generation logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.runtime.decoding import TypicalAcceptance
from trtbuild.runtime.generate import Request
from trtbuild.runtime.sampling import SamplingParams
from trtbuild.triton_repo.python_models import RequestError, words_from_list

# Inputs this engine cannot serve: present at all -> the request is refused with the reason.
REFUSED_IF_PRESENT = {
    "encoder_input_features": "encoder inputs need an encoder-decoder engine; this engine is decoder-only",
    "encoder_output_lengths": "encoder inputs need an encoder-decoder engine; this engine is decoder-only",
    "decoder_input_ids": "decoder_input_ids need an encoder-decoder engine; this engine is decoder-only",
    "decoder_input_lengths": "decoder_input_lengths need an encoder-decoder engine; this engine is decoder-only",
    "cross_attention_mask": "cross attention needs an encoder-decoder engine; this engine is decoder-only",
    "skip_cross_attn_blocks": "cross attention needs an encoder-decoder engine; this engine is decoder-only",
    "draft_input_ids": "draft tokens from a draft model are not supported (this engine drafts with Medusa or "
                       "lookahead itself)",
    "draft_logits": "draft logits from a draft model are not supported",
    "draft_acceptance_threshold": "draft acceptance from a draft model is not supported",
    "prompt_embedding_table": "prompt tables need an engine built with max_prompt_embedding_table_size > 0",
    "prompt_table_extra_ids": "prompt tables need an engine built with max_prompt_embedding_table_size > 0",
    "mrope_rotary_cos_sin": "mrope inputs are for multimodal engines",
    "mrope_position_deltas": "mrope inputs are for multimodal engines",
    "lora_task_id": "LoRA needs an engine built with the LoRA plugin; this engine has none",
    "lora_weights": "LoRA needs an engine built with the LoRA plugin; this engine has none",
    "lora_config": "LoRA needs an engine built with the LoRA plugin; this engine has none",
    "context_phase_params": "disaggregated serving (context_phase_params) is not supported by the torch backend",
    "retention_token_range_starts": "KV cache retention hints need KV cache reuse, which the torch backend "
                                    "does not have",
    "retention_token_range_ends": "KV cache retention hints need KV cache reuse",
    "retention_token_range_priorities": "KV cache retention hints need KV cache reuse",
    "retention_token_range_durations_ms": "KV cache retention hints need KV cache reuse",
    "retention_decode_priority": "KV cache retention hints need KV cache reuse",
    "retention_decode_duration_ms": "KV cache retention hints need KV cache reuse",
    "guided_decoding_guide_type": "guided decoding needs guided_decoding_backend xgrammar; it is off for this model",
    "guided_decoding_guide": "guided decoding needs guided_decoding_backend xgrammar; it is off for this model",
}
# Inputs accepted at their default value only: (default, reason when another value is sent).
DEFAULT_ONLY = {
    "beam_width": (1, "beam_width {v}: this engine decodes one beam (max_beam_width 1)"),
    "num_return_sequences": (1, "num_return_sequences {v}: one sequence per request here; send several requests "
                                "with different seeds"),
    "return_context_logits": (False, "return_context_logits needs an engine built with gather_context_logits"),
    "return_generation_logits": (False, "return_generation_logits needs an engine built with "
                                        "gather_generation_logits"),
    "stop": (False, "stop=true cancels a request by id, which this model does not track; close the stream instead"),
    "prompt_vocab_size": (0, "prompt_vocab_size {v}: this engine has no prompt table"),
    # top-p decay: TensorRT-LLM's defaults (DefaultDecodingParams: decay 1.0 = none, min 1e-6, reset -1)
    "runtime_top_p_decay": (1.0, "runtime_top_p_decay {v} (top-p decay) is not supported by the torch backend"),
    "runtime_top_p_min": (1e-6, "runtime_top_p_min {v} (top-p decay) is not supported by the torch backend"),
    "runtime_top_p_reset_ids": (-1, "runtime_top_p_reset_ids {v} (top-p decay) is not supported by the torch "
                                    "backend"),
}
TOP_K_MAX = 1024  # TensorRT-LLM samplingTopKKernels.h TOP_K_MAX


@dataclass(frozen=True)
class LlmRequest:
    request: Request
    streaming: bool
    exclude_input: bool
    return_log_probs: bool
    return_perf_metrics: bool
    lookahead: LookaheadSpec | None = None
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    typical: TypicalAcceptance | None = None
    speculation: str | None = None  # the request's own speculation mode (None: the engine's)


# Typical acceptance (trtbuild's extension; TensorRT-LLM has no such rule): asked per request through
# Triton's request parameters (KServe `parameters`, not tensors), so upstream's tensors stay as they
# are: {"typical_acceptance": true[, "posterior_threshold": 0.09][, "posterior_alpha": 0.3]}.
TYPICAL_PARAMETERS = ("typical_acceptance", "posterior_threshold", "posterior_alpha")


def typical_from(parameters: dict) -> TypicalAcceptance | None:
    """The request's acceptance rule from its Triton request parameters: None = lossless (default)."""
    on = parameters.get("typical_acceptance", False)
    if not isinstance(on, bool):
        raise RequestError(f"typical_acceptance must be true or false, got {on!r}")
    rule = {}
    for key in TYPICAL_PARAMETERS[1:]:
        v = parameters.get(key)
        if v is None:
            continue
        if isinstance(v, str):  # a BLS forwards numbers as text (the Python backend takes no floats)
            try:
                v = float(v)
            except ValueError:
                raise RequestError(f"{key} must be a number in [0, 1], got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise RequestError(f"{key} must be a number in [0, 1], got {v!r}")
        if not on:
            raise RequestError(f"{key} tunes typical acceptance: send typical_acceptance=true with it")
        rule[key] = float(v)
    return TypicalAcceptance(**rule) if on else None


def speculation_from(parameters: dict) -> str | None:
    """The request's speculation mode from its Triton request parameters ("speculation": auto | always |
    off; trtbuild's extension, like typical acceptance); None = the engine's."""
    from trtbuild.common.spec import SPECULATION_MODES

    mode = parameters.get("speculation")
    if mode is not None and mode not in SPECULATION_MODES:
        raise RequestError(f"speculation must be one of {', '.join(SPECULATION_MODES)}, got {mode!r}")
    return mode


def _scalar(inputs: dict, name: str, default=None):
    a = inputs.get(name)
    if a is None:
        return default
    a = np.asarray(a).reshape(-1)
    if a.size == 0:
        return default
    return a[0].item()


def sampling_from(inputs: dict) -> SamplingParams:
    """TensorRT-LLM's sampling defaults and regularisation (module docstring)."""
    temperature = float(_scalar(inputs, "temperature", 1.0))
    top_k = int(_scalar(inputs, "runtime_top_k", 0))
    top_p = float(_scalar(inputs, "runtime_top_p", 0.0))
    # utils.cc@c2e65b8:556-562: a top_p <= 0 counts as not given
    top_k, top_p = min(max(top_k, 0), TOP_K_MAX), min(max(top_p, 0.0), 1.0)
    if top_k == 0 and top_p == 0.0:
        top_k = 1  # greedy
    if top_p == 0.0:
        top_p = 1.0
    if temperature < 0:
        raise RequestError(f"temperature must be >= 0, got {temperature}")
    kw = {}
    for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
        v = _scalar(inputs, name)
        if v is not None:
            kw[name] = float(v)
    try:
        return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=int(_scalar(inputs, "seed", 0)), **kw)
    except Exception as e:  # GenerationError: a value out of range
        raise RequestError(str(e)) from None


def parse_request(inputs: dict, *, default_exclude_input: bool, end_ids: tuple[int, ...],
                  engine_lookahead: LookaheadSpec | None = None, parameters: dict | None = None) -> LlmRequest:
    """inputs: tensor name -> numpy array of one request (batch dimension of 1 or none); parameters:
    its Triton request parameters (`typical_from`)."""
    typical = typical_from(parameters or {})
    speculation = speculation_from(parameters or {})
    for name, reason in REFUSED_IF_PRESENT.items():
        if inputs.get(name) is not None:
            raise RequestError(f"{name}: {reason}")
    for name, (default, reason) in DEFAULT_ONLY.items():
        v = _scalar(inputs, name)
        if v is not None and not (v == default or isinstance(default, float) and np.isclose(v, default, rtol=1e-5)):
            raise RequestError(reason.format(v=v))
    ids = inputs.get("input_ids")
    if ids is None:
        raise RequestError("input_ids is required for a decoder-only engine")
    ids = np.asarray(ids).reshape(-1)
    n = int(_scalar(inputs, "input_lengths", len(ids)))
    if not 0 < n <= len(ids):
        raise RequestError(f"input_lengths {n} does not fit input_ids of {len(ids)} tokens")
    max_new = int(_scalar(inputs, "request_output_len"))
    end = _scalar(inputs, "end_id")
    ends = tuple(dict.fromkeys(([int(end)] if end is not None else []) + list(end_ids)))
    stop = inputs.get("stop_words_list")
    stop_words = words_from_list(stop) if stop is not None and np.asarray(stop).size else ()
    bad = inputs.get("bad_words_list")
    req_kw = {}
    if bad is not None and np.asarray(bad).size and words_from_list(bad):
        req_kw["bad_words"] = words_from_list(bad)
    bias = inputs.get("embedding_bias")
    if bias is not None and np.asarray(bias).size:  # [1, V] from preprocessing; [1, 0] = none
        req_kw["embedding_bias"] = tuple(float(x) for x in np.asarray(bias, dtype=np.float32).reshape(-1))
    return_log_probs = bool(_scalar(inputs, "return_log_probs", False))
    min_tokens = _scalar(inputs, "min_tokens")
    if min_tokens is not None:
        req_kw["min_tokens"] = int(min_tokens)
    if return_log_probs:
        req_kw["return_log_probs"] = True
    try:
        request = Request(tuple(int(t) for t in ids[:n]), max_new, sampling_from(inputs), ends, stop_words, **req_kw)
    except RequestError:
        raise
    except Exception as e:  # GenerationError from the runtime's own checks
        raise RequestError(str(e)) from None
    lookahead = None
    w, ng, g = (_scalar(inputs, f"lookahead_{k}") for k in ("window_size", "ngram_size", "verification_set_size"))
    if any(v is not None for v in (w, ng, g)):
        if engine_lookahead is None:
            # the C++ backend's words (utils.cc@c2e65b8:888-890)
            raise RequestError("Cannot set the request lookahead decoding configuration when model instance "
                               "lookahead parameters are not set.")
        if None in (w, ng, g):
            raise RequestError("lookahead_window_size, lookahead_ngram_size and lookahead_verification_set_size "
                               "must be given together")
        try:
            lookahead = LookaheadSpec(int(w), int(ng), int(g))
        except Exception as e:
            raise RequestError(str(e)) from None
    return LlmRequest(request, bool(_scalar(inputs, "streaming", False)),
                      bool(_scalar(inputs, "exclude_input_in_output", default_exclude_input)), return_log_probs,
                      bool(_scalar(inputs, "return_perf_metrics", False)), lookahead,
                      bool(_scalar(inputs, "return_num_input_tokens", False)),
                      bool(_scalar(inputs, "return_num_output_tokens", False)), typical, speculation)
