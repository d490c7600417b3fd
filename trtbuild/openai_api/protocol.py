"""The OpenAI API's request and response shapes, as pure functions: a request body -> a `Generation`
(every parameter checked, an `APIError` with OpenAI's status, type and param otherwise), and the
bodies and stream chunks of `/v1/completions` and `/v1/chat/completions`.

Field names and limits follow OpenAI's API reference (the `openai` package's types: CompletionCreateParams,
ChatCompletionCreateParams); trtbuild's extensions, which the `openai` client passes through
`extra_body` and ignores in answers: `min_tokens`, `ignore_eos`, `speculation` (a request's
speculation mode) in a request, `trtbuild` (speculative statistics) in a response.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from trtbuild.common.errors import TrtbuildError

MAX_STOPS = 4  # OpenAI's limit on `stop` sequences
SPECULATION = ("auto", "always", "off")


class APIError(TrtbuildError):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Limits:
    """What the served engine allows: the longest prompt and prompt + output, in tokens."""

    max_input_len: int
    max_seq_len: int


@dataclass(frozen=True)
class Generation:
    """One request to the ensemble, as the frontend will send it (`n` copies for `n` choices)."""

    prompt: str                 # the text the ensemble tokenizes (chat: rendered with the template)
    prompt_tokens: int          # what the ensemble's tokenizer makes of it
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    logprobs: bool = False
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    echo: bool = False
    speculation: str | None = None


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(key, f"'{key}' must be a number between {lo:g} and {hi:g}, got {v!r}")
    if not lo <= v <= hi:
        raise bad(key, f"'{key}' must be between {lo:g} and {hi:g}, got {v!r}")
    return float(v)


def _integer(body: dict, key: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(key, f"'{key}' must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise bad(key, f"'{key}' must be " + (f"between {lo} and {hi}" if hi is not None else f"at least {lo}")
                  + f", got {v}")
    return v


def _flag(body: dict, key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(key, f"'{key}' must be true or false, got {v!r}")
    return v


def _top_p(body: dict) -> float:
    v = _number(body, "top_p", 0, 1, 1.0)
    if v == 0:  # an empty nucleus: say so rather than pick a meaning
        raise bad("top_p", "'top_p' must be above 0 (for greedy decoding use 'temperature': 0)")
    return v


def _stops(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad("stop", "'stop' must be a string or a list of strings")
    if len(items) > MAX_STOPS:
        raise bad("stop", f"'stop' takes at most {MAX_STOPS} sequences, got {len(items)}")
    if any(not s for s in items):
        raise bad("stop", "'stop' sequences must not be empty")
    return tuple(dict.fromkeys(items))


def check_model(body: dict, served: str) -> None:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise bad("model", "'model' is required: the name /v1/models lists")
    if name != served:
        raise APIError(404, f"the model '{name}' does not exist: this server serves '{served}'", param="model",
                       code="model_not_found")


def _common(body: dict, prompt: str, prompt_tokens: int, limits: Limits, max_tokens: int | None,
            default_max: int | None) -> Generation:
    if prompt_tokens < 1:
        raise bad("prompt", "the prompt is empty")
    if prompt_tokens > limits.max_input_len:
        raise bad("messages" if "messages" in body else "prompt",
                  f"the prompt is {prompt_tokens} tokens; this engine takes at most {limits.max_input_len} input "
                  f"tokens (max_input_len) and {limits.max_seq_len} in all (max_seq_len)", "context_length_exceeded")
    room = limits.max_seq_len - prompt_tokens
    if max_tokens is None:
        max_tokens = room if default_max is None else min(default_max, room)
    if max_tokens < 1 or prompt_tokens + max_tokens > limits.max_seq_len:
        raise bad("max_tokens", f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceed this "
                  f"engine's {limits.max_seq_len} tokens (max_seq_len): at most {room} new tokens",
                  "context_length_exceeded")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise bad("stream_options", "'stream_options' is only allowed with 'stream': true")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "'stream_options' must be an object")
    include_usage = _flag(options or {}, "include_usage")
    n = _integer(body, "n", 1, 16) or 1
    if n > 1 and stream:
        raise bad("n", "'n' > 1 is not supported with 'stream': true (send n requests)")
    seed = _integer(body, "seed", 0, 2**63 - 1)
    min_tokens = _integer(body, "min_tokens", 0) or 0
    if _flag(body, "ignore_eos"):
        min_tokens = max_tokens
    if min_tokens > max_tokens:
        raise bad("min_tokens", f"'min_tokens' ({min_tokens}) is above max_tokens ({max_tokens})")
    speculation = body.get("speculation")
    if speculation is not None and speculation not in SPECULATION:
        raise bad("speculation", f"'speculation' must be one of {', '.join(SPECULATION)}, got {speculation!r}")
    return Generation(prompt, prompt_tokens, max_tokens, temperature=_number(body, "temperature", 0, 2, 1.0),
                      top_p=_top_p(body), seed=seed, stop=_stops(body),
                      presence_penalty=_number(body, "presence_penalty", -2, 2, 0.0),
                      frequency_penalty=_number(body, "frequency_penalty", -2, 2, 0.0), min_tokens=min_tokens,
                      stream=stream, include_usage=include_usage, n=n, speculation=speculation)


def completion_prompts(body: dict) -> list[str]:
    """The prompts of a /v1/completions body: a string or a list of strings."""
    p = body.get("prompt")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p and all(isinstance(s, str) for s in p):
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) for t in p) or \
            isinstance(p, list) and p and all(isinstance(s, list) for s in p):
        raise bad("prompt", "token-id prompts are not supported: send the prompt as text")
    raise bad("prompt", "'prompt' is required: a string or a list of strings")


def parse_completion(body: dict, prompt: str, prompt_tokens: int, limits: Limits) -> Generation:
    """A /v1/completions request for one of its prompts (the tokens counted by the caller)."""
    if body.get("best_of") not in (None, 1):
        raise bad("best_of", "'best_of' is not supported")
    if body.get("suffix") is not None:
        raise bad("suffix", "'suffix' is not supported")
    logprobs = _integer(body, "logprobs", 0, 5)
    if logprobs:
        raise bad("logprobs", "this engine returns the log probability of the chosen token only: use 'logprobs': 0")
    g = _common(body, prompt, prompt_tokens, limits, _integer(body, "max_tokens", 1), 16)
    return replace(g, logprobs=logprobs is not None, echo=_flag(body, "echo"))


def chat_messages(body: dict) -> list[dict]:
    """The messages of a chat body, content lists of text parts joined into strings."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "'messages' is required: a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise bad(f"messages[{i}]", f"messages[{i}] needs a role: system, developer, user, assistant or tool")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad(f"messages[{i}].content", "only text content parts are supported")
            content = "".join(p["text"] for p in content)
        if content is None and m["role"] == "assistant":
            content = ""
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content", f"messages[{i}].content must be a string or a list of text parts")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": content})
    return out


def parse_chat(body: dict, prompt: str, prompt_tokens: int, limits: Limits) -> Generation:
    """A /v1/chat/completions request, `prompt` the messages rendered with the chat template."""
    for key in ("tools", "functions"):
        if body.get(key):
            raise bad(key, f"'{key}' (function calling) is not supported")
    if body.get("response_format") not in (None, {"type": "text"}):
        raise bad("response_format", "only 'response_format': {'type': 'text'} is supported")
    a, b = _integer(body, "max_tokens", 1), _integer(body, "max_completion_tokens", 1)
    if a is not None and b is not None and a != b:
        raise bad("max_completion_tokens", "'max_tokens' and 'max_completion_tokens' differ: give one")
    logprobs = _flag(body, "logprobs")
    top = _integer(body, "top_logprobs", 0, 20)
    if top is not None and not logprobs:
        raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    if top:
        raise bad("top_logprobs", "this engine returns the log probability of the chosen token only: "
                  "'top_logprobs' must be 0")
    g = _common(body, prompt, prompt_tokens, limits, b if b is not None else a, None)
    return replace(g, logprobs=logprobs)


class StopMatcher:
    """Finds the first stop sequence in a growing text and says how much of it may be streamed now:
    everything except a tail that is the beginning of a stop sequence."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)
        self.text = ""
        self.sent = 0
        self.stopped = False

    def _held(self) -> int:
        """The longest unsent tail of the text that a stop sequence begins with."""
        room = len(self.text) - self.sent
        return max((k for s in self.stops for k in range(min(len(s) - 1, room), 0, -1)
                    if self.text.endswith(s[:k])), default=0)

    def add(self, delta: str, final: bool = False) -> str:
        """Append `delta`; return the text newly safe to send (all of it once stopped or `final`)."""
        if self.stopped:
            return ""
        start = max(0, len(self.text) - self.longest + 1)  # a stop may begin in the old text's tail
        self.text += delta
        hits = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
        end = len(self.text) if (self.stopped or final) else len(self.text) - self._held()
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def speculation_stats(drafted: int, accepted: int) -> dict:
    """The `trtbuild` extension field of a response: the request's draft tokens verified and accepted."""
    return {"draft_tokens": drafted, "accepted_draft_tokens": accepted,
            "acceptance_rate": accepted / drafted if drafted else 0.0}
