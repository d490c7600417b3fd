"""The build spec: one frozen, validated description of what to build, from flags and/or YAML.

`BuildSpec` holds what the user asked for (None = not given); its field annotations are the schema,
checked on construction (a wrong type is one ConfigError naming the key, the value and the type,
from YAML and flags alike). `resolve_spec` fills every default from the model itself and checks
every rule that needs no GPU, so the resolved spec (written as `spec.yaml` next to the engine) is
complete: nothing downstream asks again; `ResolvedSpec.from_yaml` reads it back typed, its
decoding (`decoding`: a DecodingSpec) parsed once; `speculation` (auto | always | off) is how the
server spends draft tokens, recorded in spec.yaml and next to the engine. Field names follow
TensorRT-LLM's (`max_draft_len`, `LookaheadDecodingConfig`'s W/N/G, trtllm-build's limits).
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from trtbuild.common.errors import ConfigError
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.common.medusa.choices import MedusaSpec

# How a build decodes: Medusa with a tree, lookahead with (W, N, G), or plain (None)
DecodingSpec = MedusaSpec | LookaheadSpec | None

BACKENDS = ("torch", "tensorrt-llm")
# How a speculative build spends draft tokens (issue 16): auto = the governor decides every step, per
# row, from the measured step cost and the row's measured acceptance; always = every row drafts all
# its decoding allows; off = plain decoding (the heads / lookahead stay in the engine, unused)
Speculation = typing.Literal["auto", "always", "off"]
SPECULATION_MODES: tuple[str, ...] = typing.get_args(Speculation)
# weight quantization recipes (common.quant.RECIPES: fp8, int4_awq, int8_sq, w4a8_awq) and KV-cache dtypes
QUANTIZATIONS = ("none", "fp8", "int4_awq", "int8_sq", "w4a8_awq")
KV_CACHE_DTYPES = ("fp8",)
# the settings a `quantization:` mapping in a spec file may hold (its `recipe` is `quantization`)
QUANT_KEYS = ("kv_cache", "group_size", "calib_prompts", "calib_size", "quantize_medusa_heads")


def _show(value: object) -> str:
    """A value as the user wrote it in YAML (true, null) or on the command line (repr otherwise)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def _describe(hint: object) -> str:
    """'an integer', 'a list of integers', ... for an annotation of BuildSpec."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args) + " (or null)"
    if typing.get_origin(hint) is tuple:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[hint]


def _typed(value: object, hint: object) -> tuple[bool, object]:
    """(value matches the annotation, the value normalised: int -> float, list -> tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        for a in args:
            if a is not type(None):
                ok, v = _typed(value, a)
                if ok:
                    return True, v
        return False, value
    if origin is typing.Literal:  # one of the listed values (Speculation)
        return any(type(value) is type(a) and value == a for a in args), value
    if origin is tuple:  # tuple[X, ...]; YAML gives a list
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_typed(v, args[0]) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:  # a bool is an int to Python, never to a spec
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:  # a library caller's Path is a path string
        return (True, os.fspath(value)) if isinstance(value, os.PathLike) else (isinstance(value, str), value)
    raise TypeError(f"BuildSpec annotation {hint!r} has no check")  # a new field type needs one here


def _unyaml(data: dict) -> dict:
    """YAML 1.1 (PyYAML) reads a bare `speculation: off` as false: that is "off" (to_yaml quotes it)."""
    return {**data, "speculation": "off"} if data.get("speculation") is False else data


# Settings YAML may also give as a list; what the list must hold, and its string form
LIST_FORMS = {
    "lookahead": ("a 'W,N,G' string or a [W, N, G] list of integers",
                  lambda v: ",".join(map(str, v)) if len(v) == 3 and all(
                      isinstance(i, int) and not isinstance(i, bool) for i in v) else None),
    "medusa_choices": ("a preset name, a JSON or brace-form string, or a list of paths",
                       lambda v: json.dumps(v)),
}


@dataclass(frozen=True)
class BuildSpec:
    model: str | None = None  # HF directory
    backend: str = "torch"
    gpu: str | None = None  # a100-80gb, h100-80gb, ..., cpu (default: cpu for torch, h100-80gb for tensorrt-llm)
    gpus: int | None = None  # GPUs available to one replica (default tp * pp)
    tp: int = 1
    pp: int = 1
    dtype: str = "auto"
    quantization: str = "none"  # a QUANTIZATIONS recipe, through ModelOpt
    kv_cache: str | None = None  # fp8: an FP8 KV cache (with or without weight quantization)
    group_size: int | None = None  # AWQ group size (default 128, or the largest of 128/64/32 that divides)
    calib_prompts: str | None = None  # calibration prompts file (default: text from the local corpus)
    calib_size: int | None = None  # calibration sequences (default 32)
    quantize_medusa_heads: bool = False  # quantize the Medusa heads too (default: kept unquantized)
    max_batch_size: int = 8
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None
    max_draft_len: int | None = None
    medusa: str | None = None  # heads file or directory
    medusa_choices: str | None = None  # preset, JSON or brace form
    lookahead: str | None = None  # "W,N,G"
    gather_context_logits: bool = False
    kv_cache_free_gpu_mem_fraction: float = 0.9
    end_ids: tuple[int, ...] | None = None
    # how the server spends draft tokens (SPECULATION_MODES; default auto). A plain build (no Medusa, no
    # lookahead) keeps the value given too: with nothing to draft, every mode decodes plainly
    speculation: Speculation | None = None

    def __post_init__(self) -> None:
        """Every value has its field's annotated type (the annotations are the schema); one
        ConfigError naming the key, the value and the expected type otherwise."""
        for f in fields(self):
            value, hint = getattr(self, f.name), _HINTS[f.name]
            ok, norm = _typed(value, hint)
            if not ok:
                expected = LIST_FORMS[f.name][0] if f.name in LIST_FORMS else _describe(hint)
                raise ConfigError(f"{f.name} must be {expected}, got {_show(value)}")
            if isinstance(norm, str) and not norm.strip():
                raise ConfigError(f"{f.name} is empty: give a value or leave the setting out")
            if norm is not value:
                object.__setattr__(self, f.name, norm)

    def merged(self, overrides: dict) -> BuildSpec:
        """This spec with the non-None entries of `overrides` (flags over a YAML file)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_yaml(cls, path: Path) -> BuildSpec:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read spec {path}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"spec {path} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"spec {path} must be a YAML mapping of build settings")
        data = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in data.items()}
        known = {f.name for f in fields(cls)} | set(ResolvedSpec.DERIVED)
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(f"spec {path}: unknown setting(s) {', '.join(unknown)}")
        data = _unyaml({k: v for k, v in data.items() if k not in ResolvedSpec.DERIVED})
        data = _flatten_quantization(data, path)
        for key, (expected, to_str) in LIST_FORMS.items():
            if isinstance(data.get(key), list):
                text = to_str(data[key])
                if text is None:
                    raise ConfigError(f"spec {path}: {key} must be {expected}, got {_show(data[key])}")
                data[key] = text
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"spec {path}: {e}") from None


_HINTS = typing.get_type_hints(BuildSpec)


def _flatten_quantization(data: dict, path: Path) -> dict:
    """A `quantization:` mapping ({recipe, kv_cache, group_size, calib_prompts, calib_size,
    quantize_medusa_heads}) as the flat settings; a string stays the recipe."""
    block = data.get("quantization")
    if not isinstance(block, dict):
        return data
    block = {str(k).replace("-", "_"): v for k, v in block.items()}
    unknown = sorted(k for k in block if k not in ("recipe", *QUANT_KEYS))
    if unknown:
        raise ConfigError(f"spec {path}: unknown quantization setting(s) {', '.join(unknown)}")
    clash = sorted(k for k in block if k in data and k != "quantization")
    if clash:
        raise ConfigError(f"spec {path}: {', '.join(clash)} given both inside and outside quantization")
    out = {k: v for k, v in data.items() if k != "quantization"}
    out.update({k: v for k, v in block.items() if k != "recipe"})
    out["quantization"] = block.get("recipe", "none") or "none"
    return out


@dataclass(frozen=True)
class ResolvedSpec:
    """Every setting decided; what spec.yaml holds and the engine is built from."""

    DERIVED = ("architecture", "speculative_decoding_mode", "world_size", "medusa_heads", "medusa_layers",
               "medusa_nodes", "vocab_size")
    # settings added after spec.yaml files were written, and what such a file (without the key) meant
    SINCE = {"speculation": "always", "kv_cache": None, "group_size": None, "calib_prompts": None,
             "calib_size": None, "quantize_medusa_heads": False}

    model: str
    backend: str
    gpu: str
    gpus: int
    tp: int
    pp: int
    dtype: str
    quantization: str
    kv_cache: str | None
    group_size: int | None  # AWQ recipes only
    calib_prompts: str | None
    calib_size: int | None  # None: nothing is calibrated
    quantize_medusa_heads: bool
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    max_draft_len: int
    medusa: str | None
    medusa_choices: str | None  # brace form, every prefix listed
    lookahead: str | None  # "W,N,G"
    gather_context_logits: bool
    kv_cache_free_gpu_mem_fraction: float
    end_ids: tuple[int, ...]
    # auto | always | off, as BuildSpec.speculation (default auto; a plain build keeps it, drafting nothing).
    # A spec.yaml written before the setting existed has no key: it reads as "always", what those builds did
    speculation: Speculation
    # derived, for the reader
    architecture: str
    speculative_decoding_mode: str | None  # medusa | lookahead_decoding | None
    world_size: int
    medusa_heads: int
    medusa_layers: int
    medusa_nodes: int
    vocab_size: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["end_ids"] = list(self.end_ids)
        return d

    def to_yaml(self) -> str:
        import yaml

        return "# trtbuild resolved build spec: every setting, defaults filled from the model\n" + \
            yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """sha256 of the settings (input paths excluded: inputs are identified by their hashes)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("model", "medusa")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @property
    def decoding(self) -> DecodingSpec:
        """How the build decodes, typed (from medusa_choices / lookahead; None: plain decoding).
        Parsed here once: no reader parses the brace form or "W,N,G" itself."""
        if self.medusa_choices is not None:
            from trtbuild.common.medusa.choices import parse_choices

            return MedusaSpec(parse_choices(self.medusa_choices).choices)
        if self.lookahead is not None:
            from trtbuild.common.lookahead.spec import parse_lookahead

            return parse_lookahead(self.lookahead)
        return None

    @property
    def lookahead_spec(self) -> LookaheadSpec | None:
        d = self.decoding
        return d if isinstance(d, LookaheadSpec) else None

    @classmethod
    def from_yaml(cls, path: Path) -> ResolvedSpec:
        """A build's spec.yaml (as `to_yaml` writes it): every field present with its annotated
        type (a field of `SINCE` may be absent: a file older than it), nothing else; one ConfigError
        line naming the file and the field otherwise."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not a resolved build spec (a YAML mapping of every setting)")
        names = [f.name for f in fields(cls)]
        data = _unyaml({**cls.SINCE, **data})
        missing = [n for n in names if n not in data]
        if missing:
            raise ConfigError(f"{path}: missing setting(s) {', '.join(missing)} (written by another trtbuild? "
                              "rebuild)")
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        values = {}
        for n in names:
            ok, norm = _typed(data[n], _RESOLVED_HINTS[n])
            if not ok:
                raise ConfigError(f"{path}: {n} must be {_describe(_RESOLVED_HINTS[n])}, got {_show(data[n])}")
            values[n] = norm
        spec = cls(**values)
        try:
            spec.decoding  # the tree / (W, N, G) parse, so a reader's `decoding` cannot fail later
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        return spec


_RESOLVED_HINTS = typing.get_type_hints(ResolvedSpec)
