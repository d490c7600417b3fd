"""Triton Python model `postprocessing` (written by trtbuild): token ids -> text."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from trtbuild.triton_repo.python_models import Postprocessor, cancel_dir, read_tag


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        self.impl = Postprocessor(Path(args["model_repository"]) / p["tokenizer_dir"],
                                  p.get("skip_special_tokens", "true") == "true")
        self.cancelled = cancel_dir()

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()  # [B, beam, n]
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()  # [B, beam]
            if request.is_cancelled():  # the client left an ensemble stream: tell tensorrt_llm
                job = read_tag(tokens[0, 0], int(lengths[0, 0]))
                if job is not None:
                    (self.cancelled / str(job)).touch()
                # Empty text, not an error: Triton 2.51's ensemble stops counting its steps down
                # once one has failed, so the tensorrt_llm step's final flag (sent once it has
                # cancelled the job) would never end the ensemble request, and a shutdown would
                # wait out its exit timeout for it.
                empty = [b""] * (tokens.shape[0] * tokens.shape[1])
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT", np.array(empty, dtype=object))]))
                continue
            # one string per beam, flat, as upstream's postprocessing answers (model.py@c2e65b8:143-153),
            # so upstream's clients read text_output[0]
            texts = [self.impl(list(tokens[b, k, : lengths[b, k]])).encode("utf-8")
                     for b in range(tokens.shape[0]) for k in range(tokens.shape[1])]
            out = pb_utils.Tensor("OUTPUT", np.array(texts, dtype=object))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
