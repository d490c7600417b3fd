"""Text in and out of `generate`: prompts (plain or in the chat template) or token ids -> requests,
default end ids, stop words -> token ids; a result -> its text or its JSON object.

The tokenizer is the checkpoint's own (`load_tokenizer`); without tokenizer files only token ids
work (prompts and stop words need it), and results print as ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.runtime.generate import Request, Result
from trtbuild.runtime.sampling import SamplingParams
from trtbuild.runtime.tokenizer import default_end_ids, load_tokenizer


def encode_prompts(tok, prompts: Sequence[str], chat: bool = False) -> list[tuple[int, ...]]:
    """Token ids of each prompt; `chat`: wrapped as one user turn in the model's chat template (its
    special tokens come from the template, none are added)."""
    if chat:
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in prompts]
    else:
        texts = list(prompts)
    return [tuple(tok(t, add_special_tokens=not chat)["input_ids"]) for t in texts]


def stop_ids(tok, stops: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Each stop word's token ids, as the model would emit them (no special tokens)."""
    return tuple(tuple(tok(s, add_special_tokens=False)["input_ids"]) for s in stops)


def requests(ckpt_dir: Path, tok, *, prompts: Sequence[str] = (), input_ids: Sequence[tuple[int, ...]] = (),
             chat: bool = False, max_tokens: int, params: SamplingParams, end_ids: Sequence[int] = (),
             ignore_eos: bool = False, stops: Sequence[str] = ()) -> list[Request]:
    """One request per prompt (or per token-id list): end ids `end_ids`, else the checkpoint's EOS
    ids (none with `ignore_eos`); stop words encoded with `tok`."""
    ids = encode_prompts(tok, prompts, chat) if prompts else [tuple(x) for x in input_ids]
    ends = () if ignore_eos else (tuple(end_ids) or default_end_ids(ckpt_dir, tok))
    stop = stop_ids(tok, stops) if stops else ()
    return [Request(p, max_tokens, params, ends, stop) for p in ids]


def tokenizer_for(ckpt_dir: Path, prompts: Sequence[str], stops: Sequence[str]):
    """The checkpoint's tokenizer: required for prompts or stop words, else None when absent."""
    return load_tokenizer(ckpt_dir, required=bool(prompts or stops))


def render(result: Result, tok, decoding=None, as_json: bool = False) -> str:
    """The result's text (its ids, comma-separated, without a tokenizer), or its JSON object:
    output_ids, text, finish_reason, num_steps, tokens_per_step; with speculative decoding
    accepted_draft_tokens and acceptance_length; with lookahead compression_ratio and "W,N,G"."""
    import json

    text = tok.decode(result.output_ids, skip_special_tokens=True) if tok is not None else None
    if not as_json:
        return text if text is not None else ",".join(map(str, result.output_ids))
    obj = {"output_ids": list(result.output_ids), "text": text, "finish_reason": result.finish_reason,
           "num_steps": result.num_steps, "tokens_per_step": result.tokens_per_step}
    if decoding is not None:
        obj.update(accepted_draft_tokens=result.accepted_draft_tokens, acceptance_length=result.tokens_per_step)
    if isinstance(decoding, LookaheadSpec):
        obj.update(compression_ratio=result.compression_ratio, lookahead="{},{},{}".format(*decoding.as_tuple()))
    return json.dumps(obj)
