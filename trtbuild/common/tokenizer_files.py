"""The one list of files that travel with a model for tokenisation and generation defaults.

`convert` copies them from the HF directory into the checkpoint, `build` from the checkpoint into
the engine directory, the repository writer from the engine directory into
preprocessing/tokenizer/: one list, so a file the checkpoint carries reaches the server.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)


def tokenizer_files(directory: Path) -> list[Path]:
    """The files of TOKENIZER_FILES that `directory` holds, in the list's order."""
    directory = Path(directory)
    return [directory / n for n in TOKENIZER_FILES if (directory / n).is_file()]
