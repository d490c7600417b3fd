"""Triton Python model `tensorrt_llm_bls` (written by trtbuild): preprocessing -> tensorrt_llm ->
text in one model, streaming text deltas computed from all tokens so far (accumulate_tokens), so
a streamed multi-byte character or a leading space is never broken, whatever the backend."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from trtbuild.triton_repo.python_models import Detokenizer, load_tokenizer

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
PRE_INPUTS = {"text_input": "QUERY", "max_tokens": "REQUEST_OUTPUT_LEN", "bad_words": "BAD_WORDS_DICT",
              "stop_words": "STOP_WORDS_DICT", "end_id": "END_ID", "pad_id": "PAD_ID"}
LLM_FROM_PRE = {"INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
                "REQUEST_OUTPUT_LEN": "request_output_len", "STOP_WORDS_IDS": "stop_words_list",
                "BAD_WORDS_IDS": "bad_words_list", "OUT_END_ID": "end_id", "OUT_PAD_ID": "pad_id"}
LLM_FROM_REQUEST = {"top_k": "runtime_top_k", "top_p": "runtime_top_p", "temperature": "temperature",
                    "seed": "random_seed", "stream": "streaming"}
STATS = ("acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens")


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.llm = p["tensorrt_llm_model_name"]
        self.tok = load_tokenizer(Path(args["model_repository"]) / p["tokenizer_dir"])

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._one(request, sender)
            except Exception as e:  # an error of a composing model or a bad request
                sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))),
                            flags=FINAL)
        return None

    def _one(self, request, sender):
        def get(name):  # with the batch dimension the composing models expect: [1, ...]
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy().reshape(1, -1)

        pre_in = [pb_utils.Tensor(dst, get(src)) for src, dst in PRE_INPUTS.items() if get(src) is not None]
        pre = pb_utils.InferenceRequest(model_name="preprocessing", inputs=pre_in,
                                        requested_output_names=list(LLM_FROM_PRE)).exec()
        if pre.has_error():
            raise RuntimeError(pre.error().message())
        llm_in = [pb_utils.Tensor(dst, pb_utils.get_output_tensor_by_name(pre, src).as_numpy())
                  for src, dst in LLM_FROM_PRE.items()]
        llm_in += [pb_utils.Tensor(dst, get(src)) for src, dst in LLM_FROM_REQUEST.items() if get(src) is not None]
        stream = get("stream")
        streaming = bool(stream is not None and stream.reshape(-1)[0])
        detok = Detokenizer(self.tok)
        last = None
        for resp in pb_utils.InferenceRequest(model_name=self.llm, inputs=llm_in,
                                              requested_output_names=["output_ids", "sequence_length", *STATS]
                                              ).exec(decoupled=True):
            if resp.has_error():
                raise RuntimeError(resp.error().message())
            if not resp.output_tensors():
                continue  # the empty final flag response
            ids = pb_utils.get_output_tensor_by_name(resp, "output_ids").as_numpy()
            n = int(pb_utils.get_output_tensor_by_name(resp, "sequence_length").as_numpy().reshape(-1)[0])
            delta = detok.add([int(t) for t in ids.reshape(-1)[:n]])
            last = resp
            if streaming and delta:
                sender.send(self._text(delta, resp))
        tail = detok.add([], final=True)
        text = tail if streaming else detok.sent
        sender.send(self._text(text, last), flags=FINAL)

    @staticmethod
    def _text(text, llm_resp):
        out = [pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=object))]
        for name in STATS:
            t = None if llm_resp is None else pb_utils.get_output_tensor_by_name(llm_resp, name)
            dtype = np.float32 if name == "acceptance_rate" else np.int32
            out.append(pb_utils.Tensor(name, t.as_numpy() if t is not None else np.zeros((1, 1), dtype=dtype)))
        return pb_utils.InferenceResponse(output_tensors=out)
