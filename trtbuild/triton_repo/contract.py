"""The `tensorrt_llm` model's parameter contract, as the C++ `tensorrtllm` backend reads it.

Read in tensorrtllm_backend@c2e65b8 (the backend source the 1.2.1 line ships):
`inflight_batcher_llm/src/model_instance_state.cc` (abbreviated `mis.cc` below) and
`inflight_batcher_llm/src/model_state.cc` (`ms.cc`), `utils.cc`. Every value is a string in the
config; `ModelState::GetParameter<T>` parses it (ms.cc:249-335):

- a key that is absent throws "Cannot find parameter with name: KEY" (ms.cc:262-266);
- int: `std::stoi` (leading blanks, a sign, digits; anything after the digits is ignored; no digit
  throws), uint32: `std::stoul`, float: `std::stof`;
- bool: exactly `True true TRUE 1` / `False false FALSE 0`, anything else throws (ms.cc:310-326);
- int list: `csvStrToVecInt` (utils.cc:474), list of lists: `csvStrToVecVecInt` (utils.cc:495), the
  `{0}, {0, 1}` form, where an element not closed by `}` at the end of the string is dropped.

Most keys are read inside try/catch: a missing or unparsable value falls back to a default with a
warning. Five are not (`REQUIRED`): the model fails to load. trtbuild writes only keys of this table
(`CPP_PARAMETERS`), and the torch backend's Python `tensorrt_llm` model reads its config through
`read_parameters`, with the same keys, the same required ones and the same parsing, so every
served test here exercises what a GPU host will read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trtbuild.common.errors import ConfigError

SRC = "tensorrtllm_backend@c2e65b8:inflight_batcher_llm/src"


class ContractError(ConfigError):
    """A tensorrt_llm config the C++ backend would refuse to load (message as the backend's)."""


@dataclass(frozen=True)
class Param:
    key: str
    kind: str  # string | bool | int | uint | float | int_list | int_lists | choice
    required: bool  # read with no fallback: the load fails without it
    default: object  # the backend's value when the key is absent or does not parse
    choices: tuple[str, ...] = ()
    cite: str = ""


# Every key trtbuild may write for tensorrt_llm, as the C++ backend reads it.
CPP_PARAMETERS: tuple[Param, ...] = (
    Param("gpt_model_type", "choice", True, None, ("V1", "v1", "inflight_batching", "inflight_fused_batching"),
          f"{SRC}/model_instance_state.cc:62-76"),
    Param("gpt_model_path", "string", False, "", cite=f"{SRC}/model_instance_state.cc:746-772"),
    Param("tokenizer_dir", "string", True, None, cite=f"{SRC}/model_instance_state.cc:413"),
    Param("xgrammar_tokenizer_info_path", "string", True, None, cite=f"{SRC}/model_instance_state.cc:414"),
    Param("guided_decoding_backend", "string", True, None, cite=f"{SRC}/model_instance_state.cc:415-446"),
    Param("max_beam_width", "int", False, 1, cite=f"{SRC}/model_instance_state.cc:459-468"),
    Param("batch_scheduler_policy", "choice", False, "guaranteed_no_evict", ("max_utilization", "guaranteed_no_evict"),
          f"{SRC}/model_instance_state.cc:356-378"),
    Param("kv_cache_free_gpu_mem_fraction", "float", False, None, cite=f"{SRC}/model_instance_state.cc:96-106"),
    Param("max_attention_window_size", "int_list", False, None, cite=f"{SRC}/model_instance_state.cc:141-151"),
    Param("enable_kv_cache_reuse", "bool", False, True, cite=f"{SRC}/model_instance_state.cc:167-176"),
    Param("normalize_log_probs", "bool", False, True, cite=f"{SRC}/model_instance_state.cc:503-512"),
    Param("enable_chunked_context", "bool", False, False, cite=f"{SRC}/model_instance_state.cc:518-533"),
    Param("decoding_mode", "choice", False, None,
          ("top_k", "top_p", "top_k_top_p", "beam_search", "medusa", "redrafter", "lookahead", "eagle"),
          f"{SRC}/model_instance_state.cc:545-590"),
    Param("medusa_choices", "int_lists", False, None, cite=f"{SRC}/model_instance_state.cc:596-608"),
    Param("lookahead_window_size", "uint", False, None, cite=f"{SRC}/model_instance_state.cc:627-646"),
    Param("lookahead_ngram_size", "uint", False, None, cite=f"{SRC}/model_instance_state.cc:627-646"),
    Param("lookahead_verification_set_size", "uint", False, None, cite=f"{SRC}/model_instance_state.cc:627-646"),
    Param("exclude_input_in_output", "bool", False, False, cite=f"{SRC}/model_instance_state.cc:797-806"),
    Param("cancellation_check_period_ms", "int", False, 100, cite=f"{SRC}/model_instance_state.cc:809-818"),
    Param("stats_check_period_ms", "int", False, 100, cite=f"{SRC}/model_instance_state.cc:821-830"),
)
BY_KEY = {p.key: p for p in CPP_PARAMETERS}
REQUIRED = tuple(p.key for p in CPP_PARAMETERS if p.required)


# --- value parsing, as GetParameter<T> -------------------------------------------------------------

_INT = re.compile(r"\s*([+-]?\d+)")
_FLOAT = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan))", re.I)
INT32_MAX = 2**31 - 1


def stoi(text: str) -> int:
    """std::stoi: a leading integer; the rest of the string is ignored."""
    m = _INT.match(text)
    if not m:
        raise ValueError(f"stoi: no conversion of {text!r}")
    value = int(m.group(1))
    if not -(2**31) <= value <= INT32_MAX:
        raise ValueError(f"stoi: {text!r} out of range")
    return value


def stoul(text: str) -> int:
    """std::stoul cast to uint32 (a negative number wraps, as in C++)."""
    m = _INT.match(text)
    if not m:
        raise ValueError(f"stoul: no conversion of {text!r}")
    return int(m.group(1)) % 2**64 % 2**32


def stof(text: str) -> float:
    m = _FLOAT.match(text)
    if not m:
        raise ValueError(f"stof: no conversion of {text!r}")
    return float(m.group(1))


def parse_bool(text: str) -> bool:
    if text in ("True", "true", "TRUE", "1"):
        return True
    if text in ("False", "false", "FALSE", "0"):
        return False
    raise ValueError(f"Cannot convert {text} to a boolean.")


def csv_ints(text: str) -> list[int]:
    """utils.cc:474 csvStrToVecInt: comma-separated ints; stops at the first empty field."""
    if not text:
        raise ValueError("Cannot convert empty string to vector of vector of ints")
    out = []
    for field in text.split(","):
        field = field.lstrip()
        if not field:
            break
        out.append(stoi(field))
    if not out:
        raise ValueError("Empty vector")
    return out


def csv_int_lists(text: str) -> list[list[int]]:
    """utils.cc:495 csvStrToVecVecInt: `{0}, {0, 1}, ...`; a last element without its `}` is dropped."""
    if not text:
        raise ValueError("Cannot convert empty string to vector of vector of ints")
    out, pos = [], 0
    while True:
        end = text.find("}", pos)
        if end < 0:  # getline ran to the end of the string: eof, the loop stops
            break
        chunk = text[pos:end]
        if not chunk:
            break
        out.append(csv_ints(chunk[1:] if chunk.startswith("{") else chunk))
        pos = end + 1
        comma = text.find(",", pos)  # ss.ignore(max, ','): skip past the next comma
        pos = len(text) if comma < 0 else comma + 1
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
    if not out:
        raise ValueError("Empty vector of vector")
    return out


_PARSERS = {"string": str, "bool": parse_bool, "int": stoi, "uint": stoul, "float": stof,
            "int_list": csv_ints, "int_lists": csv_int_lists, "choice": str}


def parse(param: Param, text: str):
    """The value the backend would use for `text` (raises ValueError where it would throw)."""
    value = _PARSERS[param.kind](text)
    if param.kind == "choice" and value not in param.choices:
        raise ValueError(f"{param.key}: {value!r} is not one of {', '.join(param.choices)}")
    return value


def _missing(key: str) -> ContractError:
    return ContractError(f"Cannot find parameter with name: {key}")


def read_parameters(params: dict[str, str]) -> dict[str, object]:
    """The tensorrt_llm parameters as the C++ backend resolves them: required keys checked with its
    messages, every other key parsed or replaced by its default where the backend falls back."""
    if "gpt_model_type" not in params:  # read first, with no fallback (mis.cc:62)
        raise _missing("gpt_model_type")
    try:
        parse(BY_KEY["gpt_model_type"], params["gpt_model_type"])
    except ValueError:
        raise ContractError("Invalid gpt_model_type. Must be v1/inflight_batching/inflight_fused_batching.") from None
    for key in ("tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"):
        if key not in params:
            raise _missing(key)
    out: dict[str, object] = {}
    for p in CPP_PARAMETERS:
        if p.key not in params:
            out[p.key] = p.default
            continue
        try:
            out[p.key] = parse(p, params[p.key])
        except ValueError:
            out[p.key] = p.default  # the backend warns and uses its default
    guided, info = params["guided_decoding_backend"], params["xgrammar_tokenizer_info_path"]
    if guided and not guided.startswith("${") and info and not info.startswith("${") and guided != "xgrammar":
        raise ContractError("Guided decoding is currently supported with 'xgrammar' backend. Invalid "
                            "guided_decoding_backend parameter provided.")
    if out["decoding_mode"] == "lookahead":
        if any(out[k] is None for k in ("lookahead_window_size", "lookahead_ngram_size",
                                        "lookahead_verification_set_size")):
            raise ContractError("Decoding mode is set to lookahead but lookahead parameters are not specified. "
                                "Please set parameters lookahead_window_size, lookahead_ngram_size, and "
                                "lookahead_verification_set_size.")
    return out


def check_written(params: dict[str, str]) -> None:
    """What trtbuild writes: only keys of the table, no template variable left, every value parsing as
    the backend parses it, the required keys present (raises ConfigError naming the key)."""
    for key, value in params.items():
        p = BY_KEY.get(key)
        if p is None:
            raise ConfigError(f"tensorrt_llm parameter {key!r} is not one the tensorrtllm backend reads")
        if "${" in value:
            raise ConfigError(f"tensorrt_llm parameter {key!r} has an unfilled template variable: {value!r}")
        if p.kind != "string":
            try:
                parse(p, value)
            except ValueError as e:
                raise ConfigError(f"tensorrt_llm parameter {key!r}={value!r} does not parse as the backend "
                                  f"parses it ({e})") from None
    for key in REQUIRED:
        if key not in params:
            raise ConfigError(f"tensorrt_llm parameter {key!r} is missing; the tensorrtllm backend needs it")
    read_parameters(params)
