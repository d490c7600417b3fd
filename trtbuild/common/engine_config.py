"""An engine directory's config.json, read once and typed: `EngineConfig.read(engine_dir)`.

TensorRT-LLM's `Engine.save` (and trtbuild's torch backend, `builder.engine.engine_config`) write
{"version", "pretrained_config", "build_config"}. `read` checks the fields its readers use and
gives them typed: the build limits, the speculative decoding mode and the decoding the engine was
built for (`decoding`, a DecodingSpec from the pretrained config's tree or (W, N, G)), plus the
derived `usable_seq_len`. Anything missing or malformed is one ConfigError line naming the file
and the field. Both dicts are kept as read, for the readers that show or compare them whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trtbuild.common.errors import ConfigError
from trtbuild.common.spec import DecodingSpec, Speculation

CONFIG = "config.json"
MANIFEST = "trtbuild.json"  # trtbuild's own record next to the engine (backend, checkpoint, speculation)
# build_config.speculative_decoding_mode: SpeculativeDecodingMode is an IntFlag of auto() values NONE,
# DRAFT_TOKENS_EXTERNAL, MEDUSA, LOOKAHEAD_DECODING, ... (tensorrt_llm/models/modeling_utils.py);
# config.json holds the int. The names are trtllm-build's --speculative_decoding_mode values.
SPEC_MODES: dict[int, str | None] = {1: None, 4: "medusa", 8: "lookahead_decoding"}
SPEC_MODE_IDS: dict[str | None, int] = {name: i for i, name in SPEC_MODES.items()}


class _Bad(Exception):
    """A field that is missing or malformed: (dotted name, what is wrong)."""


def _int(d: dict, section: str, key: str, default: int | None = None, minimum: int = 0) -> int:
    value = d.get(key, default)
    if value is None and default is not None:  # written as null: the default (max_draft_len of a plain engine)
        value = default
    if value is None:
        raise _Bad(f"{section}.{key} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Bad(f"{section}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class EngineConfig:
    version: str
    pretrained_config: dict  # the checkpoint's config.json, as converted (the raw dict)
    build_config: dict  # as recorded (the raw dict: inspect shows it, build compares it to the prediction)
    # build_config, typed
    max_batch_size: int
    max_input_len: int
    max_seq_len: int  # as recorded: TensorRT-LLM's builder has added max_draft_len to the one asked for
    max_num_tokens: int
    max_draft_len: int  # 0 without speculative decoding
    speculative_decoding_mode: str | None  # medusa | lookahead_decoding | None (SPEC_MODES)
    # pretrained_config, typed where readers need it
    architecture: str
    vocab_size: int
    world_size: int  # mapping.world_size (tp x pp)
    sliding_window: int | None  # None: attention over the whole sequence
    decoding: DecodingSpec  # the tree or (W, N, G) stored with the checkpoint; None: plain decoding

    @property
    def usable_seq_len(self) -> int:
        """The longest sequence (prompt + output) a request may have: max_seq_len less max_draft_len.

        TensorRT-LLM's builder adds max_draft_len to the max_seq_len it is given, so the recorded
        value counts the draft positions a speculative step writes past the accepted tokens; the
        server's limit (preprocessing, the scheduler) is the rest. trtbuild.runtime.checkpoint's
        read_config says the same: "the server's limits (triton_repo.parameters, the scheduler):
        max_seq_len counts the drafts"."""
        return self.max_seq_len - self.max_draft_len

    def to_dict(self) -> dict:
        """config.json as read: {"version", "pretrained_config", "build_config"}."""
        return {"version": self.version, "pretrained_config": self.pretrained_config,
                "build_config": self.build_config}

    @classmethod
    def read(cls, engine_dir: Path) -> EngineConfig:
        """`engine_dir`/config.json; one ConfigError line naming the file and the field otherwise."""
        path = Path(engine_dir) / CONFIG
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{engine_dir} is not an engine directory (no {CONFIG})") from None
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None
        return cls.from_dict(cfg, str(path))

    @classmethod
    def from_dict(cls, cfg: object, where: str = CONFIG) -> EngineConfig:
        """An engine config.json's content (`where` names it in errors)."""
        try:
            return cls._from_dict(cfg)
        except _Bad as e:
            raise ConfigError(f"{where}: {e}") from None
        except ConfigError as e:  # the stored tree or (W, N, G) itself
            raise ConfigError(f"{where}: pretrained_config: {e}") from None

    @classmethod
    def _from_dict(cls, cfg: object) -> EngineConfig:
        if not isinstance(cfg, dict):
            raise _Bad("not an engine config (a JSON object with version, pretrained_config, build_config)")
        for key in ("pretrained_config", "build_config"):
            if not isinstance(cfg.get(key), dict):
                raise _Bad(f"{key} is {'missing' if key not in cfg else 'not an object'}: not an engine config")
        version = cfg.get("version")
        if not isinstance(version, str) or not version:
            raise _Bad("version is missing" if version is None else f"version must be a string, got {version!r}")
        bc, pre = cfg["build_config"], cfg["pretrained_config"]
        mode_id = bc.get("speculative_decoding_mode", 1)
        if isinstance(mode_id, bool) or mode_id not in SPEC_MODES:
            raise _Bad(f"build_config.speculative_decoding_mode {mode_id!r} is not one trtbuild serves "
                       "(" + ", ".join(f"{i} ({n or 'none'})" for i, n in SPEC_MODES.items()) + ")")
        arch = pre.get("architecture")
        if not isinstance(arch, str) or not arch:
            raise _Bad("pretrained_config.architecture is missing" if arch is None
                       else f"pretrained_config.architecture must be a string, got {arch!r}")
        mapping = pre.get("mapping") or {}
        if not isinstance(mapping, dict):
            raise _Bad(f"pretrained_config.mapping must be an object, got {mapping!r}")
        window = pre.get("sliding_window")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
            raise _Bad(f"pretrained_config.sliding_window must be an integer >= 0 or null, got {window!r}")
        return cls(
            version=version, pretrained_config=pre, build_config=bc,
            max_batch_size=_int(bc, "build_config", "max_batch_size", minimum=1),
            max_input_len=_int(bc, "build_config", "max_input_len", minimum=1),
            max_seq_len=_int(bc, "build_config", "max_seq_len", minimum=1),
            max_num_tokens=_int(bc, "build_config", "max_num_tokens", minimum=1),
            max_draft_len=_int(bc, "build_config", "max_draft_len", default=0),
            speculative_decoding_mode=SPEC_MODES[mode_id],
            architecture=arch,
            vocab_size=_int(pre, "pretrained_config", "vocab_size", minimum=1),
            world_size=_int(mapping, "pretrained_config.mapping", "world_size", default=1, minimum=1),
            sliding_window=window or None,
            decoding=_decoding(pre),
        )


def _decoding(pre: dict) -> DecodingSpec:
    """The pretrained config's Medusa tree (MedusaForCausalLM) or lookahead_config, typed."""
    if pre["architecture"] == "MedusaForCausalLM":
        from trtbuild.common.medusa.choices import MedusaSpec, parse_choices

        tree = pre.get("medusa_choices")
        if not isinstance(tree, list) or not tree:
            raise _Bad("pretrained_config.medusa_choices is missing (a MedusaForCausalLM engine needs its tree)"
                       if tree is None else f"pretrained_config.medusa_choices must be a list of paths, got {tree!r}")
        return MedusaSpec(parse_choices([list(p) if isinstance(p, (list, tuple)) else p for p in tree]).choices)
    if pre.get("lookahead_config"):
        from trtbuild.common.lookahead.spec import LookaheadSpec

        return LookaheadSpec.from_dict(pre["lookahead_config"])
    return None


def engine_speculation(engine_dir: Path) -> Speculation:
    """The speculation mode the engine was built with (`MANIFEST`'s "speculation"); an engine built
    before the setting existed (no key) keeps what it did then: "always"."""
    from trtbuild.common.spec import SPECULATION_MODES

    path = Path(engine_dir) / MANIFEST
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return "always"
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    mode = d.get("speculation", "always") if isinstance(d, dict) else None
    if mode not in SPECULATION_MODES:
        raise ConfigError(f"{path}: speculation must be one of {', '.join(SPECULATION_MODES)}, got {mode!r}")
    return mode
