"""Triton Python model `preprocessing` (written by trtbuild): text -> token ids, limits checked."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from trtbuild.triton_repo.python_models import Preprocessor, RequestError


def _params(args):
    cfg = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}


def _opt(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        p = _params(args)
        here = Path(args["model_repository"])
        self.impl = Preprocessor(here / p["tokenizer_dir"], p["add_special_tokens"] == "true",
                                 int(p["max_input_len"]), int(p["max_seq_len"]),
                                 tuple(int(x) for x in p["end_ids"].split(",") if x),
                                 int(p["vocab_size"]) if p.get("vocab_size") else None)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                query = _opt(request, "QUERY").reshape(-1)[0]
                # An INT32 tensor (the upstream ensemble's max_tokens type): over HTTP generate, Triton
                # converts the JSON number before any model runs and keeps its low 32 bits
                # (4294967299 arrives as 3, 2**31 + 5 as -2147483643; a number >= 2**63, a float or a
                # string is refused by Triton itself). The raw value never reaches this model, so a
                # wrapped value that lands in range cannot be told apart; what lands below 1 is refused
                # (Preprocessor), and the limits (max_seq_len) bound the rest.
                max_tokens = int(_opt(request, "REQUEST_OUTPUT_LEN").reshape(-1)[0])
                bad, stop = _opt(request, "BAD_WORDS_DICT"), _opt(request, "STOP_WORDS_DICT")
                end, pad = _opt(request, "END_ID"), _opt(request, "PAD_ID")
                decoder = _opt(request, "DECODER_QUERY")
                words, weights = _opt(request, "EMBEDDING_BIAS_WORDS"), _opt(request, "EMBEDDING_BIAS_WEIGHTS")
                out = self.impl(query, max_tokens,
                                [] if bad is None else list(bad.reshape(-1)),
                                [] if stop is None else list(stop.reshape(-1)),
                                None if end is None else int(end.reshape(-1)[0]),
                                None if pad is None else int(pad.reshape(-1)[0]),
                                decoder_query=None if decoder is None else decoder.reshape(-1)[0],
                                bias_words=None if words is None else list(words.reshape(-1)),
                                bias_weights=None if weights is None else list(weights.reshape(-1)),
                                prompt_table_extra_id=_opt(request, "PROMPT_TABLE_EXTRA_ID"))
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in out.items()]))
            except RequestError as e:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))))
        return responses
