"""Prompts for calibration and benchmarks: read from a file, or cut from local Python sources.

Nothing is downloaded: the default code corpus is the Python standard library installed here.
"""

from __future__ import annotations

import json
import random
import re
import sysconfig
from pathlib import Path

from trtbuild.common.errors import ConfigError


def read_prompts(path, tok, chat: bool) -> list[list[int]]:
    """Prompts from a file: JSON lines with "input_ids" or "prompt", else one text prompt per line."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines:
        raise ConfigError(f"{path}: no prompts")
    out = []
    for i, ln in enumerate(lines, 1):
        obj = None
        if ln.lstrip().startswith("{"):
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{i}: invalid JSON ({e.msg})") from None
        if isinstance(obj, dict) and isinstance(obj.get("input_ids"), list):
            out.append([int(t) for t in obj["input_ids"]])
            continue
        text = obj["prompt"] if isinstance(obj, dict) and isinstance(obj.get("prompt"), str) else ln
        if tok is None:
            raise ConfigError("text prompts need the checkpoint's tokenizer files")
        if chat:
            ids = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True)
            out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
        else:
            out.append(tok(text)["input_ids"])
    return out


_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(.*$", re.MULTILINE)


def code_prompts(files: list[Path], tok, n: int, context_tokens: int, seed: int) -> list[list[int]]:
    """`n` code-completion prompts: the start of a function (its `def` line and the line after it)
    with up to `context_tokens` tokens of the file before it, from functions picked at random."""
    rng = random.Random(seed)
    sites = []
    for f in files:
        text = f.read_text(errors="replace")
        sites += [(text, m.end()) for m in _DEF.finditer(text) if m.start() > 400]
    if not sites:
        raise ConfigError("no Python functions found for code-completion prompts")
    out = []
    for text, end in rng.sample(sites, min(n, len(sites))):
        nl = text.find("\n", end + 1)
        cut = end + 1 if nl < 0 else nl + 1  # the def line and the next one
        ids = tok(text[max(0, cut - 8 * context_tokens):cut], add_special_tokens=False)["input_ids"]
        out.append(list(ids[-context_tokens:]))
    return out


def stdlib_files() -> list[Path]:
    """The standard library's top-level .py files: local text that exists on every machine."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def split_files(files: list[Path], holdout: float = 0.2) -> tuple[list[Path], list[Path]]:
    """Deterministic train/held-out split by file name (every 5th file is held out)."""
    step = max(int(round(1 / holdout)), 2)
    held = [f for i, f in enumerate(sorted(files)) if i % step == step - 1]
    return [f for f in files if f not in held], held


def corpus_prompts(files: list[Path], tok, n: int, length: int, seed: int, chat: bool = True) -> list[list[int]]:
    """`n` prompts of `length` tokens cut at random places from `files`; half of them wrapped in the
    model's chat template as a request about the text (an instruct model mostly sees chats)."""
    rng = random.Random(seed)
    texts = [f.read_text(errors="replace") for f in files]
    texts = [t for t in texts if len(t) > 2000]
    if not texts:
        raise ConfigError("corpus is empty (need text files of at least 2000 characters)")
    out = []
    asks = ("Explain what this code does:", "Summarise this text:", "Continue this:", "What is the purpose of this?")
    while len(out) < n:
        text = rng.choice(texts)
        start = rng.randrange(0, len(text) - 1500)
        ids = tok(text[start:start + 1500], add_special_tokens=False)["input_ids"][:length]
        if chat and tok.chat_template and len(out) % 2:
            snippet = tok.decode(ids[: length // 2])
            msgs = [{"role": "user", "content": f"{rng.choice(asks)}\n{snippet}"}]
            ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        out.append(list(ids))
    return out
