"""The logic behind the repository's Python models (pre/postprocessing, BLS, and the torch
backend's `tensorrt_llm`), free of Triton so it can be tested directly. The `model.py` files copied
into the repository are thin Triton adapters over these classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

END = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence

# Cancellation through an ensemble. Triton 2.51 checks an ensemble's cancellation only between
# steps, so the in-flight tensorrt_llm step of a stream whose client left never hears of it; the
# postprocessing steps created afterwards arrive cancelled, though. The torch tensorrt_llm model
# therefore tags each response's output_ids *after* sequence_length (padding every reader skips)
# with [TAG, job id]; postprocessing, seeing a cancelled request, drops a file named after the job
# into a directory shared by the sibling stubs of one tritonserver, and tensorrt_llm cancels it.
TAG = -29810


def tag_tokens(tokens: list[int], job_id: int) -> list[int]:
    return list(tokens) + [TAG, job_id]


def read_tag(row, length: int) -> int | None:
    """The job id tagged after `length` valid tokens of an output_ids row, if any."""
    if len(row) >= length + 2 and int(row[length]) == TAG:
        return int(row[length + 1])
    return None


def cancel_dir() -> Path:
    """A directory shared by the Python models of one tritonserver: the one `TritonServer` names in
    TRTBUILD_CANCEL_DIR (and removes when it stops), else one named after their common parent."""
    import os
    import tempfile

    d = Path(os.environ.get("TRTBUILD_CANCEL_DIR") or Path(tempfile.gettempdir()) / f"trtbuild-cancel-{os.getppid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


class RequestError(ValueError):
    """A bad request: answered with an error response, the server stays up."""


def word_list(words: list[str], tokenizer) -> np.ndarray:
    """TensorRT-LLM's word-list form [2, L] int32: row 0 the concatenated ids, row 1 the cumulative
    end offsets padded with -1; [2, 0] for no words."""
    ids, offsets = [], []
    for w in words:
        if not w:
            continue
        toks = tokenizer(w, add_special_tokens=False)["input_ids"]
        if not toks:
            continue
        ids += toks
        offsets.append(len(ids))
    if not ids:
        return np.zeros((2, 0), dtype=np.int32)
    out = np.full((2, len(ids)), -1, dtype=np.int32)
    out[0] = ids
    out[1, : len(offsets)] = offsets
    return out


def words_from_list(arr: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Inverse of `word_list`: [2, L] -> the words as id tuples."""
    arr = np.asarray(arr).reshape(2, -1)
    words, start = [], 0
    for end in arr[1]:
        if end < 0:
            break
        words.append(tuple(int(t) for t in arr[0, start:end]))
        start = int(end)
    return tuple(words)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class FastDecoder:
    """`decode` of a tokenizer.json through the `tokenizers` library alone (what transformers' fast
    tokenizers call, with clean_up_tokenization_spaces off): the BLS runs max_batch_size stubs, and
    each importing transformers (and with it torch) cost ~300 MB and seconds of start-up."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))

    def decode(self, ids, skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def load_decoder(path: Path):
    """A decoder for text out: FastDecoder where there is a tokenizer.json, else the full tokenizer."""
    return FastDecoder(path) if (Path(path) / "tokenizer.json").is_file() else load_tokenizer(path)


def utf8(value, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    return str(value)


class Preprocessor:
    """text -> ids, with the request limits of the engine checked."""

    def __init__(self, tokenizer_dir: Path, add_special_tokens: bool, max_input_len: int, max_seq_len: int,
                 end_ids: tuple[int, ...], vocab_size: int | None = None) -> None:
        self.tok = load_tokenizer(tokenizer_dir)
        self.vocab_size = vocab_size or len(self.tok)
        self.add_special_tokens = add_special_tokens
        self.max_input_len, self.max_seq_len = max_input_len, max_seq_len
        self.end_id = end_ids[0] if end_ids else (self.tok.eos_token_id or 0)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.end_id

    def __call__(self, query, max_tokens: int, bad_words: list, stop_words: list, end_id: int | None,
                 pad_id: int | None, decoder_query=None, bias_words: list | None = None,
                 bias_weights: list | None = None, prompt_table_extra_id=None) -> dict[str, np.ndarray]:
        if decoder_query is not None and utf8(decoder_query, "decoder_text_input"):
            raise RequestError("decoder_text_input is for encoder-decoder engines; this engine is decoder-only")
        if prompt_table_extra_id is not None:
            raise RequestError("prompt_table_extra_id needs a prompt table; this engine has none "
                               "(max_prompt_embedding_table_size 0)")
        text = utf8(query, "text_input")
        if not text:
            raise RequestError("text_input is empty")
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {max_tokens}")
        ids = self.tok(text, add_special_tokens=self.add_special_tokens)["input_ids"]
        if not ids:
            raise RequestError("text_input encodes to no tokens")
        if len(ids) > self.max_input_len:
            raise RequestError(f"prompt has {len(ids)} tokens, more than max_input_len {self.max_input_len}")
        if len(ids) + max_tokens > self.max_seq_len:
            raise RequestError(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds max_seq_len "
                               f"{self.max_seq_len}")
        bad = [utf8(w, "bad_words") for w in bad_words]
        stop = [utf8(w, "stop_words") for w in stop_words]
        out = {} if not bias_words else {"EMBEDDING_BIAS": self.embedding_bias(bias_words, bias_weights or [])[None]}
        return out | {
            "INPUT_ID": np.array([ids], dtype=np.int32),
            "REQUEST_INPUT_LEN": np.array([[len(ids)]], dtype=np.int32),
            "REQUEST_OUTPUT_LEN": np.array([[max_tokens]], dtype=np.int32),
            "BAD_WORDS_IDS": word_list(bad, self.tok)[None],
            "STOP_WORDS_IDS": word_list(stop, self.tok)[None],
            "OUT_END_ID": np.array([[self.end_id if end_id is None else end_id]], dtype=np.int32),
            "OUT_PAD_ID": np.array([[self.pad_id if pad_id is None else pad_id]], dtype=np.int32),
        }


    def embedding_bias(self, words: list, weights: list) -> np.ndarray:
        """[V] fp32: each word's weight added at each of its token ids, as upstream's preprocessing
        does (preprocessing/1/model.py@c2e65b8 `_get_embedding_bias`; the words are encoded without
        special tokens here, so a BOS is never biased)."""
        if len(words) != len(weights):
            raise RequestError(f"embedding_bias_words has {len(words)} words but embedding_bias_weights "
                               f"{len(weights)} weights")
        bias = np.zeros(self.vocab_size, dtype=np.float32)
        for w, x in zip(words, weights):
            for t in self.tok(utf8(w, "embedding_bias_words"), add_special_tokens=False)["input_ids"]:
                bias[t] += float(x)
        return bias


class Postprocessor:
    """ids -> text. A streamed chunk is decoded after an anchor token and the anchor's text is cut
    off, so a chunk's leading space survives (SentencePiece drops it when decoding alone)."""

    def __init__(self, tokenizer_dir: Path, skip_special_tokens: bool = True) -> None:
        self.tok = load_tokenizer(tokenizer_dir)
        self.skip = skip_special_tokens
        self.anchor = self.tok("a", add_special_tokens=False)["input_ids"][:1]
        self.anchor_text = self._decode(self.anchor)

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def __call__(self, tokens: list[int]) -> str:
        if not tokens:
            return ""
        text = self._decode(self.anchor + list(tokens))
        return text[len(self.anchor_text):] if text.startswith(self.anchor_text) else self._decode(list(tokens))


class Detokenizer:
    """Incremental text of a growing token list: deltas that never split a multi-byte character."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self.tok, self.skip = tokenizer, skip_special_tokens
        self.tokens: list[int] = []
        self.sent = ""

    def add(self, tokens: list[int], final: bool = False) -> str:
        self.tokens += tokens
        text = self.tok.decode(self.tokens, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)
        if text.endswith(END) and not final:
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


class Holdback:
    """Streams token chunks but holds back tokens that end inside a multi-byte character, so each
    chunk decodes to whole characters (at most `limit` tokens are held)."""

    def __init__(self, tokenizer, limit: int = 8) -> None:
        self.tok, self.limit = tokenizer, limit
        self.pending: list[int] = []

    def push(self, tokens: list[int], final: bool) -> list[int]:
        self.pending += tokens
        if self.tok is not None and not final and len(self.pending) < self.limit:
            if self.tok.decode(self.pending, skip_special_tokens=False).endswith(END):
                return []
        out, self.pending = self.pending, []
        return out


# Load-aware lookahead through the BLS, tensorrt-llm backend (issue 16). TensorRT-LLM's C++ executor takes
# a lookahead (w, n, g) per request: the backend reads the tensorrt_llm inputs lookahead_window_size /
# _ngram_size / _verification_set_size, all three once the first is present, and needs the model's own
# lookahead parameters (tensorrtllm_backend@c2e65b8:inflight_batcher_llm/src/utils.cc:863-893). The
# decoder takes the request's config, else the executor's
# (NVIDIA/TensorRT-LLM@eb0d81bb:cpp/tensorrt_llm/batch_manager/generateRequestOptions.cpp, operator(),
# the isLookaheadDecoding branch), and sets the row up with it when the request starts:
# LookaheadDecodingLayer<T>::setup (NVIDIA/TensorRT-LLM@05cc2c11:cpp/tensorrt_llm/layers/
# lookaheadDecodingLayer.cpp: tokens per step from calculateSpeculativeResource, at most the engine's) and
# LookaheadAlgorithm::setup (NVIDIA/TensorRT-LLM@2a9abd95:cpp/tensorrt_llm/layers/lookaheadAlgorithm.cpp:
# w <= max_w, n <= max_n, g <= max_g, else the request fails). Legal configs are LookaheadSpec's rules,
# which are LookaheadDecodingConfig::isLegal (NVIDIA/TensorRT-LLM@0371ba0f:cpp/tensorrt_llm/executor/
# decodingConfig.cpp:68-78); "(1, 1, 0) forces non speculative, autoregressive mode"
# (NVIDIA/TensorRT-LLM@7ed07f06:examples/lookahead/README.md:38). The choice holds for the request's
# whole life: the decoder reads it once, at setup. Function names stand where a line was not counted;
# the versions are those the source index stores (the pin, TensorRT-LLM 1.2.1 in tritonserver 26.07,
# is tensorrtllm_backend r26.07's submodule commit ca88df0a, which the index does not hold).
NO_LOOKAHEAD = (1, 1, 0)
LOOKAHEAD_INPUTS = ("lookahead_window_size", "lookahead_ngram_size", "lookahead_verification_set_size")
# The default threshold is TensorRT-LLM's own for its "seamless" lookahead switch: DecodingConfig::
# mLookaheadDecodingMaxNumRequest = 8 (NVIDIA/TensorRT-LLM:cpp/include/tensorrt_llm/executor/executor.h),
# read by TrtGptModelInflightBatching::changeSpecDecMode (lookahead off above 8 scheduled requests), which
# the same file's constructor leaves off for a lookahead engine ("mUseSeamlessLookahead = false", a TODO;
# NVIDIA/TensorRT-LLM:cpp/tensorrt_llm/batch_manager/trtGptModelInflightBatching.cpp, stored copies).
# A documented number, not a measurement: nothing here measures a GPU; `trtbuild bench sweep` gives the
# concurrency above which a speculative build is slower than plain, for a real engine.
DEFAULT_MAX_IN_FLIGHT = 8


def _lookahead(values, what: str) -> tuple[int, int, int]:
    from trtbuild.common.errors import ConfigError
    from trtbuild.common.lookahead.spec import LookaheadSpec

    try:
        s = LookaheadSpec(*values)
    except (ConfigError, TypeError) as e:
        raise RequestError(f"{what}: {e}") from None
    return s.max_window_size, s.max_ngram_size, s.max_verification_set_size


def own_lookahead(params: dict) -> tuple[int, int, int] | None:
    """The request's own lookahead sizes, from its Triton parameters named as tensorrt_llm's inputs
    (the BLS declares upstream's inputs, which have no lookahead tensors): all three or none; ints or
    their text (the BLS's parameters travel as text)."""
    given = [params.get(k) for k in LOOKAHEAD_INPUTS]
    if all(v is None for v in given):
        return None
    if any(v is None for v in given):
        raise RequestError(f"request parameters {', '.join(LOOKAHEAD_INPUTS)}: give all three or none")
    try:
        values = [int(v) if not isinstance(v, bool) else None for v in given]
    except (TypeError, ValueError):
        raise RequestError(f"request parameters {', '.join(LOOKAHEAD_INPUTS)} must be integers, got {given}") from None
    return _lookahead(values, "request lookahead")


@dataclass(frozen=True)
class LookaheadSteering:
    """How the BLS picks each request's lookahead sizes for a tensorrt-llm lookahead engine: the
    engine's (W, N, G) while at most `max_in_flight` BLS requests are in flight (this one included),
    NO_LOOKAHEAD above; `mode` is the build's speculation (auto | always | off)."""

    engine: tuple[int, int, int]
    mode: str
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT

    def __post_init__(self) -> None:
        from trtbuild.common.spec import SPECULATION_MODES

        _lookahead(self.engine, "engine lookahead")
        if self.mode not in SPECULATION_MODES:
            raise ValueError(f"speculation must be one of {', '.join(SPECULATION_MODES)}, got {self.mode!r}")
        if self.max_in_flight < 0:
            raise ValueError(f"speculation_max_in_flight must be >= 0, got {self.max_in_flight}")

    @classmethod
    def from_parameters(cls, p: dict[str, str]) -> LookaheadSteering | None:
        """From the BLS's config parameters (`speculation_lookahead` "W,N,G", empty: the BLS
        steers nothing, `speculation`, `speculation_max_in_flight`)."""
        la = p.get("speculation_lookahead", "")
        if not la:
            return None
        return cls(tuple(int(x) for x in la.split(",")), p.get("speculation", "auto"),
                   int(p.get("speculation_max_in_flight", DEFAULT_MAX_IN_FLIGHT)))

    def choose(self, in_flight: int, own: tuple[int, int, int] | None = None,
               override: object = None) -> tuple[int, int, int]:
        """The lookahead inputs the BLS sends: the request's own sizes when it gave them (each <= the
        engine's, as LookaheadAlgorithm::setup requires), else by the request's "speculation"
        parameter or the build's mode: always = the engine's, off = NO_LOOKAHEAD, auto = by load."""
        from trtbuild.common.spec import SPECULATION_MODES

        if own is not None:
            if any(o > e for o, e in zip(own, self.engine)):
                raise RequestError(f"request lookahead {own} exceeds the engine's (W, N, G) {self.engine}")
            return own
        if override is not None and override not in SPECULATION_MODES:
            raise RequestError(f"request parameter speculation must be one of {', '.join(SPECULATION_MODES)}, "
                               f"got {override!r}")
        mode = override or self.mode
        if mode == "always" or (mode == "auto" and in_flight <= self.max_in_flight):
            return self.engine
        return NO_LOOKAHEAD


class InFlight:
    """The requests in flight across the sibling BLS instances of one tritonserver (each instance is its
    own process, serving one request at a time): one file per request in a shared directory, named
    after its process, so an instance that died leaves no count behind."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def enter(self) -> Path:
        import os
        import secrets

        token = self.dir / f"{os.getpid()}-{secrets.token_hex(8)}"
        token.touch()
        return token

    @staticmethod
    def leave(token: Path) -> None:
        token.unlink(missing_ok=True)

    def count(self) -> int:
        import os

        alive: dict[int, bool] = {}
        n = 0
        for f in self.dir.iterdir():
            try:
                pid = int(f.name.split("-")[0])
            except ValueError:
                continue
            if pid not in alive:
                try:
                    os.kill(pid, 0)
                    alive[pid] = True
                except ProcessLookupError:
                    alive[pid] = False
                except PermissionError:
                    alive[pid] = True
            if alive[pid]:
                n += 1
            else:
                f.unlink(missing_ok=True)
        return n
