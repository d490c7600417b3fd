"""config.pbtxt templates of the five models. The client-facing models (ensemble, tensorrt_llm_bls,
tensorrt_llm) declare exactly upstream's tensors (`upstream.py`: names, dtypes, dims, optional,
reshape, ragged) and the ensemble has upstream's step maps, so upstream's clients work unchanged;
preprocessing/postprocessing declare what the ensemble maps to and from them.

`${name}` is filled by `render` with `string.Template.substitute`: a missing value is an error, never
a leftover placeholder. The `tensorrt_llm` model's `parameters` are not template variables: they are
rendered from the checked key/value list of `contract.py` (`${parameters}`), so a key written is a
key the C++ backend reads.
"""

from __future__ import annotations

from string import Template

from trtbuild.triton_repo import upstream as up
from trtbuild.triton_repo.upstream import Tensor


def _io(t: Tensor) -> str:
    # a data_type such as ${logits_datatype} stays upstream's template variable, filled by `render`
    lines = [f"    name: \"{t.name}\"", f"    data_type: {t.data_type}", f"    dims: [ {', '.join(map(str, t.dims))} ]"]
    if t.reshape:
        lines.append("    reshape: { shape: [ ] }")
    if t.optional:
        lines.append("    optional: true")
    if t.ragged:
        lines.append("    allow_ragged_batch: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def _block(kind: str, items: tuple[Tensor, ...]) -> str:
    return f"{kind} [\n" + ",\n".join(_io(t) for t in items) + "\n]\n"


def _params(keys: list[str]) -> str:
    """Python-model parameters (read by trtbuild's own model.py files), each filled from `${key}`."""
    return "".join(f"parameters: {{\n  key: \"{k}\"\n  value: {{ string_value: \"${{{k}}}\" }}\n}}\n" for k in keys)


def _pick(table: tuple[Tensor, ...], names: list[str]) -> tuple[Tensor, ...]:
    by_name = {t.name: t for t in table}
    return tuple(by_name[n] for n in names)


_STEPS = {model: (ins, outs) for model, ins, outs in up.ENSEMBLE_STEPS}
DYNAMIC_BATCHING = ("dynamic_batching {\n  preferred_batch_size: [ ${triton_max_batch_size} ]\n"
                    "  max_queue_delay_microseconds: ${max_queue_delay_microseconds}\n"
                    "  default_queue_policy: { max_queue_size: ${max_queue_size} }\n}\n")

# preprocessing: upstream's tensors that the ensemble maps (the multimodal ones are not declared)
PREPROCESSING = Template(
    "name: \"preprocessing\"\nbackend: \"python\"\nmax_batch_size: ${triton_max_batch_size}\n"
    + DYNAMIC_BATCHING  # as upstream: preprocessing/config.pbtxt@c2e65b8:30-36
    + _block("input", _pick(up.PREPROCESSING_INPUTS, [k for k, _ in _STEPS["preprocessing"][0]]))
    + _block("output", _pick(up.PREPROCESSING_OUTPUTS, [k for k, _ in _STEPS["preprocessing"][1]]))
    + _params(["tokenizer_dir", "add_special_tokens", "max_input_len", "max_seq_len", "end_ids", "vocab_size"])
    + "instance_group [\n  {\n    count: ${preprocessing_instance_count}\n    kind: KIND_CPU\n  }\n]\n")

POSTPROCESSING = Template(
    "name: \"postprocessing\"\nbackend: \"python\"\nmax_batch_size: ${triton_max_batch_size}\n"
    # no dynamic_batching, unlike upstream (postprocessing/config.pbtxt@c2e65b8:30): Triton's dynamic
    # batcher answers a cancelled request itself, and postprocessing must see an ensemble's cancelled
    # steps to stop the torch backend's request (python_models.py, "Cancellation through an ensemble")
    + _block("input", up.POSTPROCESSING_INPUTS)
    + _block("output", up.POSTPROCESSING_OUTPUTS)
    + _params(["tokenizer_dir", "skip_special_tokens"])
    + "instance_group [\n  {\n    count: ${postprocessing_instance_count}\n    kind: KIND_CPU\n  }\n]\n")

TENSORRT_LLM = Template(
    "name: \"tensorrt_llm\"\nbackend: \"${triton_backend}\"\nmax_batch_size: ${triton_max_batch_size}\n\n"
    "model_transaction_policy {\n  decoupled: ${decoupled_mode}\n}\n\n"
    + DYNAMIC_BATCHING + "\n"
    + _block("input", up.TENSORRT_LLM_INPUTS) + _block("output", up.TENSORRT_LLM_OUTPUTS)
    + "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
    + "${parameters}")

BLS = Template(
    "name: \"tensorrt_llm_bls\"\nbackend: \"python\"\nmax_batch_size: ${triton_max_batch_size}\n\n"
    "model_transaction_policy {\n  decoupled: ${decoupled_mode}\n}\n\n"
    + _block("input", up.TENSORRT_LLM_BLS_INPUTS)
    + _block("output", up.TENSORRT_LLM_BLS_OUTPUTS)
    + _params(["accumulate_tokens", "tensorrt_llm_model_name", "tensorrt_llm_draft_model_name",
               "multimodal_encoders_name", "tokenizer_dir",
               "speculation", "speculation_lookahead", "speculation_max_in_flight"])
    + "instance_group [\n  {\n    count: ${bls_instance_count}\n    kind: KIND_CPU\n  }\n]\n")


def _step(model: str, pairs_in: tuple[tuple[str, str], ...], pairs_out: tuple[tuple[str, str], ...]) -> str:
    ins = "".join(f"      input_map {{\n        key: \"{k}\"\n        value: \"{v}\"\n      }}\n" for k, v in pairs_in)
    outs = "".join(f"      output_map {{\n        key: \"{k}\"\n        value: \"{v}\"\n      }}\n" for k, v in pairs_out)
    return f"    {{\n      model_name: \"{model}\"\n      model_version: -1\n{ins}{outs}    }}"


ENSEMBLE = Template(
    "name: \"ensemble\"\nplatform: \"ensemble\"\nmax_batch_size: ${triton_max_batch_size}\n"
    + _block("input", up.ENSEMBLE_INPUTS)
    + _block("output", up.ENSEMBLE_OUTPUTS)
    + "ensemble_scheduling {\n  step [\n"
    + ",\n".join(_step(model, ins, outs) for model, ins, outs in up.ENSEMBLE_STEPS)
    + "\n  ]\n}\n")

TEMPLATES = {"ensemble": ENSEMBLE, "preprocessing": PREPROCESSING, "tensorrt_llm": TENSORRT_LLM,
             "postprocessing": POSTPROCESSING, "tensorrt_llm_bls": BLS}
