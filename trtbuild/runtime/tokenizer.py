"""The checkpoint's own tokenizer and end ids (the converter copies them into the checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

from trtbuild.common.errors import ConfigError


def load_tokenizer(ckpt_dir: Path, required: bool = True):
    """The HF tokenizer stored in `ckpt_dir` (no network); None if absent and not `required`."""
    if not any((Path(ckpt_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        if not required:
            return None
        raise ConfigError(f"{ckpt_dir} has no tokenizer files; pass --input-ids instead of --prompt/--stop")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ckpt_dir), local_files_only=True)


def default_end_ids(ckpt_dir: Path, tokenizer=None) -> tuple[int, ...]:
    """All EOS ids from generation_config.json, else the tokenizer's EOS; () when neither exists."""
    path = Path(ckpt_dir) / "generation_config.json"
    if path.is_file():
        try:
            eos = json.loads(path.read_text()).get("eos_token_id")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ConfigError(f"{path}: not a valid generation config ({e})") from None
        ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ConfigError(f"{path}: eos_token_id must be an integer or a list of integers, got {eos!r}")
        if ids:
            return tuple(ids)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return (int(tokenizer.eos_token_id),)
    return ()
