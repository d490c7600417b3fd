"""Triton Python model `tensorrt_llm_bls` (written by trtbuild): preprocessing -> tensorrt_llm ->
text in one model, with upstream's inputs and outputs (tensorrt_llm_bls/config.pbtxt@c2e65b8).
Every request input is forwarded to the model that reads it, under that model's name (as
upstream's `lib/triton_decoder.py` maps them), so the composing models honour or refuse it; every
tensorrt_llm output is passed back. Streaming text: `accumulate_tokens` true sends the whole text
so far in each response, as upstream; false sends the new text only, computed from all tokens so
far, so a multi-byte character or a leading space is never broken (upstream decodes each response's
tokens alone).

Load-aware lookahead (tensorrt-llm backend, a lookahead engine; `speculation_lookahead` "W,N,G" set):
each request gets the lookahead inputs `LookaheadSteering.choose` picks from the number of BLS requests
in flight (`InFlight`, shared by the sibling instances), the request's own sizes (Triton parameters
lookahead_window_size / _ngram_size / _verification_set_size) and its "speculation" parameter. Other
builds: nothing new (the torch tensorrt_llm model governs itself and reads "speculation" itself)."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from trtbuild.triton_repo.python_models import (LOOKAHEAD_INPUTS, Detokenizer, InFlight, LookaheadSteering,
                                                cancel_dir, load_decoder, own_lookahead, read_tag)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
PRE_INPUTS = {"text_input": "QUERY", "decoder_text_input": "DECODER_QUERY", "max_tokens": "REQUEST_OUTPUT_LEN",
              "bad_words": "BAD_WORDS_DICT", "stop_words": "STOP_WORDS_DICT",
              "embedding_bias_words": "EMBEDDING_BIAS_WORDS", "embedding_bias_weights": "EMBEDDING_BIAS_WEIGHTS",
              "end_id": "END_ID", "pad_id": "PAD_ID", "prompt_table_extra_id": "PROMPT_TABLE_EXTRA_ID"}
LLM_FROM_PRE = {"INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
                "REQUEST_OUTPUT_LEN": "request_output_len", "STOP_WORDS_IDS": "stop_words_list",
                "BAD_WORDS_IDS": "bad_words_list", "EMBEDDING_BIAS": "embedding_bias", "OUT_END_ID": "end_id",
                "OUT_PAD_ID": "pad_id"}
LLM_FROM_REQUEST = {"exclude_input_in_output": "exclude_input_in_output", "top_k": "runtime_top_k",
                    "top_p": "runtime_top_p", "temperature": "temperature", "length_penalty": "len_penalty",
                    "repetition_penalty": "repetition_penalty", "min_tokens": "min_tokens",
                    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                    "seed": "seed", "return_log_probs": "return_log_probs",
                    "return_context_logits": "return_context_logits",
                    "return_generation_logits": "return_generation_logits",
                    "return_perf_metrics": "return_perf_metrics", "return_num_input_tokens": "return_num_input_tokens",
                    "return_num_output_tokens": "return_num_output_tokens",
                    "num_return_sequences": "num_return_sequences",
                    "beam_width": "beam_width", "stream": "streaming",
                    "prompt_embedding_table": "prompt_embedding_table", "prompt_vocab_size": "prompt_vocab_size",
                    "lora_task_id": "lora_task_id", "lora_weights": "lora_weights", "lora_config": "lora_config",
                    "guided_decoding_guide_type": "guided_decoding_guide_type",
                    "guided_decoding_guide": "guided_decoding_guide"}
MULTIMODAL = ("image_input", "image_bytes_input", "image_url_input", "video_bytes_input")
PASSED_BACK = ("cum_log_probs", "output_log_probs", "context_logits", "generation_logits", "batch_index",
               "sequence_index", "kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
               "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
               "acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens", "num_input_tokens",
               "num_output_tokens")


def _forwarded(request) -> dict:
    """The request's Triton parameters for a BLS request: the Python backend takes bool, int and str
    values only, so a number such as posterior_threshold travels as its text (typical_from reads both)."""
    return {k: str(v) if isinstance(v, float) else v for k, v in json.loads(request.parameters() or "{}").items()}


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.llm = p["tensorrt_llm_model_name"]
        self.draft = p.get("tensorrt_llm_draft_model_name", "")
        self.accumulate = p.get("accumulate_tokens", "false").lower() in ("true", "1")
        self.tok = load_decoder(Path(args["model_repository"]) / p["tokenizer_dir"])
        self.cancelled = cancel_dir()
        self.steering = LookaheadSteering.from_parameters(p)
        self.in_flight = InFlight(self.cancelled / "bls-in-flight") if self.steering is not None else None

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            token = self.in_flight.enter() if self.in_flight is not None else None
            try:
                self._one(request, sender)
            except Exception as e:  # an error of a composing model or a bad request
                sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))),
                            flags=FINAL)
            finally:
                if token is not None:
                    InFlight.leave(token)
        return None

    def _one(self, request, sender):
        def get(name):  # with the batch dimension the composing models expect: [1, ...]
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                return None
            a = t.as_numpy()
            return a.reshape(1, *a.shape[1:]) if a.ndim > 1 else a.reshape(1, -1)

        for name in MULTIMODAL:
            if get(name) is not None:
                raise ValueError(f"{name}: this engine has no multimodal encoder (multimodal_encoders_name is empty)")
        drafts = get("num_draft_tokens")
        if drafts is not None and int(drafts.reshape(-1)[0]) > 0 and not self.draft:
            raise ValueError("num_draft_tokens needs a draft model (tensorrt_llm_draft_model_name is empty); "
                             "this engine drafts with Medusa or lookahead itself")
        use_draft_logits = get("use_draft_logits")
        if use_draft_logits is not None and bool(use_draft_logits.reshape(-1)[0]) and not self.draft:
            raise ValueError("use_draft_logits needs a draft model (tensorrt_llm_draft_model_name is empty)")
        pre_in = [pb_utils.Tensor(dst, get(src)) for src, dst in PRE_INPUTS.items() if get(src) is not None]
        pre = pb_utils.InferenceRequest(model_name="preprocessing", inputs=pre_in,
                                        requested_output_names=list(LLM_FROM_PRE)).exec()
        if pre.has_error():
            raise RuntimeError(pre.error().message())
        llm_in = [pb_utils.Tensor(dst, t.as_numpy()) for src, dst in LLM_FROM_PRE.items()
                  if (t := pb_utils.get_output_tensor_by_name(pre, src)) is not None]
        llm_in += [pb_utils.Tensor(dst, get(src)) for src, dst in LLM_FROM_REQUEST.items() if get(src) is not None]
        if self.steering is not None:
            # INT32 [1] per request, as upstream's client sends them (inflight_batcher_llm_client.py@c2e65b8:205-216)
            params = json.loads(request.parameters() or "{}")
            sizes = self.steering.choose(self.in_flight.count(), own_lookahead(params), params.get("speculation"))
            llm_in += [pb_utils.Tensor(name, np.array([[v]], dtype=np.int32))
                       for name, v in zip(LOOKAHEAD_INPUTS, sizes)]
        stream = get("stream")
        streaming = bool(stream is not None and stream.reshape(-1)[0])
        detok = Detokenizer(self.tok)
        last, pending, sent_before, gone = None, "", "", False
        # the request's Triton parameters (`_forwarded`) reach tensorrt_llm as an ensemble's steps get them (trtbuild's
        # typical acceptance is asked there: trtbuild.triton_repo.llm_requests.typical_from)
        for resp in pb_utils.InferenceRequest(model_name=self.llm, inputs=llm_in,
                                              requested_output_names=["output_ids", "sequence_length", *PASSED_BACK],
                                              parameters=_forwarded(request)).exec(decoupled=True):
            if resp.has_error():
                raise RuntimeError(resp.error().message())
            if not resp.output_tensors():
                continue  # the empty final flag response
            ids = pb_utils.get_output_tensor_by_name(resp, "output_ids").as_numpy()
            n = int(pb_utils.get_output_tensor_by_name(resp, "sequence_length").as_numpy().reshape(-1)[0])
            if gone or sender.is_cancelled():
                # the client left: tell tensorrt_llm (as postprocessing does for the ensemble), whose
                # final response then ends this loop; the BLS request completes without text
                job = read_tag(ids.reshape(-1), n)
                if not gone and job is not None:
                    (self.cancelled / str(job)).touch()
                gone = True
                continue
            delta = detok.add([int(t) for t in ids.reshape(-1)[:n]])
            if streaming and last is not None and (self.accumulate or pending):
                # one response behind the model, so the last one can carry the final flag
                sender.send(self._text(sent_before if self.accumulate else pending, last))
            pending, last, sent_before = delta, resp, detok.sent
        if gone:
            sender.send(flags=FINAL)
            return
        if last is None:
            raise RuntimeError(f"{self.llm} returned no response")
        tail = detok.add([], final=True)
        if streaming:
            text = detok.sent if self.accumulate else pending + tail
        else:
            text = detok.sent
        sender.send(self._text(text, last), flags=FINAL)

    @staticmethod
    def _text(text, llm_resp):
        out = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=object))]  # as upstream's
        for name in PASSED_BACK:
            t = pb_utils.get_output_tensor_by_name(llm_resp, name)
            if t is not None:
                out.append(pb_utils.Tensor(name, t.as_numpy()))
        return pb_utils.InferenceResponse(output_tensors=out)
