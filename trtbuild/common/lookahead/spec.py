"""The lookahead (W, N, G) spec with TensorRT-LLM's names, legality rules and draft-length formula.

W = max_window_size (lookahead-branch columns), N = max_ngram_size (tokens per n-gram, so at most
N tokens are emitted per step), G = max_verification_set_size (candidate n-grams verified per
step). The engine is built for max_draft_len = (0 if N == 1 else N - 2) + (W - 1 + G) * (N - 1)
(`LookaheadDecodingConfig::calculateSpeculativeResourceTuple`, decodingConfig.cpp:85-95 at the
commit below); the server's (W, N, G) must give exactly that number, and a request may only ask for
(w, n, g) <= (W, N, G).

Two sets of rules, both TensorRT-LLM's:
- any spec (a request's included): the executor's `LookaheadDecodingConfig` constructor and
  `isLegal`, N >= 1, W >= 1, G >= 0, N = 1 only with W = 1 and G = 0
  (NVIDIA/TensorRT-LLM@0371ba0f36bc6bef9766df5cac0f478af12dea5f:cpp/tensorrt_llm/executor/decodingConfig.cpp:34-39,
  68-78), so (1, 1, 0) is a legal request for plain decoding;
- the spec an engine is built for (`check_engine`, `parse_engine_lookahead`: build, convert): the LLM API's
  `LookaheadDecodingConfig` refuses W, N or G <= 0 ("Value must be positive":
  NVIDIA/TensorRT-LLM@fcd3f31682808ae56118ae43c1d7864a3a945e6f:tensorrt_llm/llmapi/llm_args.py:572-578; its 1.x
  version declares the three fields PositiveInt), and a spec whose max_draft_len is 0, (1, 1, 0) or
  (1, 2, 0), has nothing to speculate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trtbuild.common.errors import ConfigError

FIELDS = ("max_window_size", "max_ngram_size", "max_verification_set_size")


@dataclass(frozen=True)
class LookaheadSpec:
    max_window_size: int  # W
    max_ngram_size: int  # N
    max_verification_set_size: int  # G

    def __post_init__(self) -> None:
        w, n, g = self.max_window_size, self.max_ngram_size, self.max_verification_set_size
        if any(isinstance(x, bool) or not isinstance(x, int) for x in (w, n, g)):
            raise ConfigError(f"lookahead (W, N, G) must be integers, got ({w!r}, {n!r}, {g!r})")
        if w < 1:
            raise ConfigError(f"lookahead window size W must be >= 1, got {w}")
        if n < 1:
            raise ConfigError(f"lookahead n-gram size N must be >= 1, got {n}")
        if g < 0:
            raise ConfigError(f"lookahead verification set size G must be >= 0, got {g}")
        if n == 1 and (w != 1 or g != 0):
            raise ConfigError(f"lookahead ({w},{n},{g}): N = 1 is plain decoding and needs W = 1 and G = 0")

    @property
    def max_draft_len(self) -> int:
        """Draft tokens per step the engine must be built for (TensorRT-LLM's formula)."""
        n = self.max_ngram_size
        return (0 if n == 1 else n - 2) + (self.max_window_size - 1 + self.max_verification_set_size) * (n - 1)

    def check_engine(self) -> None:
        """Refuse a spec no engine should be built for (see the module docstring); one-line errors."""
        if self.max_draft_len == 0:
            raise ConfigError(f"lookahead {format_spec(self)} gives max_draft_len 0 ((N-2) + (W-1+G)(N-1)): "
                              "nothing to speculate (use e.g. 4,3,4, or build without --lookahead)")
        if self.max_verification_set_size < 1:
            raise ConfigError(f"lookahead {format_spec(self)}: an engine needs verification set size G >= 1 "
                              "(TensorRT-LLM's LookaheadDecodingConfig takes positive W, N and G)")

    @property
    def decoding_tokens(self) -> int:
        """Tokens in one step's forward pass: the last accepted token plus the drafts."""
        return self.max_draft_len + 1

    def check_request(self, request: LookaheadSpec) -> None:
        """A per-request (w, n, g) must not exceed this (server/engine) spec."""
        mine, theirs = self.as_tuple(), request.as_tuple()
        if any(r > m for r, m in zip(theirs, mine)):
            raise ConfigError(f"request lookahead {format_spec(request)} exceeds the engine's {format_spec(self)} "
                              "(each of w, n, g must be <= W, N, G)")

    def as_tuple(self) -> tuple[int, int, int]:
        return self.max_window_size, self.max_ngram_size, self.max_verification_set_size

    def to_dict(self) -> dict[str, int]:
        return dict(zip(FIELDS, self.as_tuple()))

    @classmethod
    def from_dict(cls, d: object) -> LookaheadSpec:
        if not isinstance(d, dict) or set(d) != set(FIELDS):
            raise ConfigError(f"lookahead config must be an object with exactly {', '.join(FIELDS)}; got {d!r}")
        return cls(*(d[f] for f in FIELDS))


def parse_lookahead(text: str) -> LookaheadSpec:
    """'W,N,G' (e.g. '4,3,4') -> LookaheadSpec."""
    m = re.fullmatch(r"\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*", text or "")
    if not m:
        raise ConfigError(f"lookahead spec must be 'W,N,G' (three integers, e.g. 4,3,4), got {text!r}")
    return LookaheadSpec(*(int(x) for x in m.groups()))


def parse_engine_lookahead(text: str) -> LookaheadSpec:
    """'W,N,G' for the spec an engine is built for (build, convert): parse_lookahead + check_engine."""
    spec = parse_lookahead(text)
    spec.check_engine()
    return spec


def format_spec(spec: LookaheadSpec) -> str:
    return "({},{},{})".format(*spec.as_tuple())
