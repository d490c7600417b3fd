"""Files written from dataclasses read back typed, once (issue 15): an engine's config.json as
`EngineConfig` (build limits, decoding, usable_seq_len), a build's spec.yaml as `ResolvedSpec`
(its decoding a DecodingSpec), and bad files refused with one line naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import engine_dir, make_hf_model, random_heads
from trtbuild.common.engine_config import SPEC_MODES, EngineConfig
from trtbuild.common.errors import ConfigError
from trtbuild.common.lookahead.spec import LookaheadSpec
from trtbuild.common.medusa.choices import MedusaSpec
from trtbuild.common.spec import ResolvedSpec

CASES = {"plain": {}, "medusa": {"medusa_choices": "{0, 0}, {1}"}, "lookahead": {"lookahead": "4,3,4"}}


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ec")
    make_hf_model(d / "hf")
    random_heads(d / "heads.safetensors", 2)
    out = {}
    for name, kw in CASES.items():
        kw = dict(kw, medusa=str(d / "heads.safetensors")) if "medusa_choices" in kw else kw
        out[name] = engine_dir(d / "hf", d / name, max_batch_size=4, **kw)
    return out


def test_engine_config_is_typed(engines):
    want = {"plain": (None, 0, type(None)), "medusa": ("medusa", 63, MedusaSpec),
            "lookahead": ("lookahead_decoding", 15, LookaheadSpec)}
    for name, engine in engines.items():
        ec = EngineConfig.read(engine)
        mode, draft, kind = want[name]
        assert (ec.speculative_decoding_mode, ec.max_draft_len, type(ec.decoding)) == (mode, draft, kind), name
        assert (ec.max_batch_size, ec.max_input_len, ec.vocab_size, ec.world_size) == (4, 200, 101, 1)
        assert ec.max_seq_len == 256 + draft  # as recorded: the builder added the drafts
        assert ec.usable_seq_len == 256  # what a request may use
        assert ec.to_dict() == json.loads((engine / "config.json").read_text())
    assert str(EngineConfig.read(engines["medusa"]).decoding) == "{0}, {1}, {0, 0}"  # canonical, prefixes added
    assert EngineConfig.read(engines["lookahead"]).decoding == LookaheadSpec(4, 3, 4)
    assert EngineConfig.read(engines["plain"]).sliding_window is None


def _broken(engine: Path, tmp: Path, edit) -> Path:
    cfg = json.loads((engine / "config.json").read_text())
    edit(cfg)
    d = tmp / "broken"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _del(section: str, key: str):
    return lambda cfg: cfg[section].pop(key)


def _set(section: str, key: str, value):
    return lambda cfg: cfg[section].__setitem__(key, value)


@pytest.mark.parametrize("case, edit, message", [
    ("plain", _del("build_config", "max_num_tokens"), "build_config.max_num_tokens is missing"),
    ("plain", _set("build_config", "max_batch_size", "8"), "build_config.max_batch_size must be an integer >= 1, "
                                                           "got '8'"),
    ("plain", _set("build_config", "max_seq_len", True), "build_config.max_seq_len must be an integer"),
    ("plain", _set("build_config", "speculative_decoding_mode", 2), "build_config.speculative_decoding_mode 2 is "
                                                                    "not one trtbuild serves"),
    ("plain", _del("pretrained_config", "architecture"), "pretrained_config.architecture is missing"),
    ("plain", _del("pretrained_config", "vocab_size"), "pretrained_config.vocab_size is missing"),
    ("plain", _set("pretrained_config", "mapping", {"world_size": 0}), "pretrained_config.mapping.world_size must "
                                                                       "be an integer >= 1"),
    ("plain", lambda cfg: cfg.pop("build_config"), "build_config is missing: not an engine config"),
    ("plain", lambda cfg: cfg.pop("version"), "version is missing"),
    ("medusa", _del("pretrained_config", "medusa_choices"), "pretrained_config.medusa_choices is missing"),
    ("medusa", _set("pretrained_config", "medusa_choices", [[-1]]), "pretrained_config: medusa choices: each path"),
    ("lookahead", _set("pretrained_config", "lookahead_config", {"max_window_size": 4}),
     "pretrained_config: lookahead config must be an object with exactly"),
])
def test_a_bad_engine_config_is_one_line_naming_the_file_and_field(engines, tmp_path, case, edit, message):
    d = _broken(engines[case], tmp_path, edit)
    with pytest.raises(ConfigError) as e:
        EngineConfig.read(d)
    assert str(e.value).startswith(f"{d / 'config.json'}: {message}"), str(e.value)
    assert "\n" not in str(e.value)


def test_unreadable_engine_configs(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path} is not an engine directory \(no config.json\)$"):
        EngineConfig.read(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json: invalid JSON"):
        EngineConfig.read(tmp_path)
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ConfigError, match=r"config.json: not an engine config"):
        EngineConfig.read(tmp_path)


def test_a_missing_draft_length_is_plain(engines, tmp_path):
    d = _broken(engines["plain"], tmp_path, lambda cfg: (cfg["build_config"].pop("max_draft_len"),
                                                         cfg["build_config"].pop("speculative_decoding_mode")))
    ec = EngineConfig.read(d)
    assert (ec.max_draft_len, ec.speculative_decoding_mode, ec.usable_seq_len) == (0, None, 256)
    assert set(SPEC_MODES.values()) == {None, "medusa", "lookahead_decoding"}


# --- spec.yaml -----------------------------------------------------------------------------------


def test_spec_yaml_reads_back_as_written(engines):
    for name, engine in engines.items():
        path = engine.parent / "spec.yaml"
        rs = ResolvedSpec.from_yaml(path)
        assert rs.to_yaml() == path.read_text()  # the on-disk format is unchanged
        assert isinstance(rs.end_ids, tuple) and isinstance(rs.kv_cache_free_gpu_mem_fraction, float)
        # the spec's decoding and the engine's are one
        assert rs.decoding == EngineConfig.read(engine).decoding, name
    rs = ResolvedSpec.from_yaml(engines["medusa"].parent / "spec.yaml")
    assert isinstance(rs.decoding, MedusaSpec) and str(rs.decoding) == rs.medusa_choices == "{0}, {1}, {0, 0}"
    rs = ResolvedSpec.from_yaml(engines["lookahead"].parent / "spec.yaml")
    assert rs.decoding == rs.lookahead_spec == LookaheadSpec(4, 3, 4)
    assert ResolvedSpec.from_yaml(engines["plain"].parent / "spec.yaml").decoding is None


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("max_batch_size: 4\n", ""), "missing setting(s) max_batch_size"),
    (lambda t: t + "surprise: 1\n", "unknown setting(s) surprise"),
    (lambda t: t.replace("max_batch_size: 4\n", "max_batch_size: four\n"),
     "max_batch_size must be an integer, got 'four'"),
    (lambda t: t.replace("lookahead: 4,3,4\n", "lookahead: 4,3\n"), "lookahead spec must be 'W,N,G'"),
    (lambda t: t + ":\n  - [", "is not valid YAML"),
    (lambda t: t.replace("speculation: auto\n", "speculation: sometimes\n"),
     "speculation must be one of auto, always, off, got 'sometimes'"),
    (lambda t: t.replace("speculation: auto\n", "speculation: null\n"),
     "speculation must be one of auto, always, off, got null"),
    (lambda t: "- 1\n", "is not a resolved build spec"),
])
def test_a_bad_spec_yaml_is_one_line(engines, tmp_path, edit, message):
    text = (engines["lookahead"].parent / "spec.yaml").read_text()
    path = tmp_path / "spec.yaml"
    path.write_text(edit(text))
    with pytest.raises(ConfigError) as e:
        ResolvedSpec.from_yaml(path)
    assert str(path) in str(e.value) and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^cannot read .*nothing.yaml"):
        ResolvedSpec.from_yaml(tmp_path / "nothing.yaml")


# --- speculation (issue 16): spec.yaml and the engine's manifest, old and new ----------------------


def test_a_spec_yaml_older_than_speculation_reads_as_always(engines, tmp_path):
    text = (engines["lookahead"].parent / "spec.yaml").read_text()
    assert "\nspeculation: auto\n" in text  # what a build writes now: the default
    old = tmp_path / "spec.yaml"
    old.write_text(text.replace("speculation: auto\n", ""))  # a build from before the setting
    assert ResolvedSpec.from_yaml(old).speculation == "always"  # what those builds did
    old.write_text(text.replace("speculation: auto\n", "speculation: off\n"))  # hand-written, unquoted
    assert ResolvedSpec.from_yaml(old).speculation == "off"
    for other in ("max_batch_size", "architecture"):  # no other setting may be missing
        key = next(line for line in text.splitlines(keepends=True) if line.startswith(f"{other}:"))
        old.write_text(text.replace(key, ""))
        with pytest.raises(ConfigError, match=f"missing setting\\(s\\) {other}"):
            ResolvedSpec.from_yaml(old)


def test_engine_speculation_reads_the_manifest(engines, tmp_path):
    from trtbuild.common.engine_config import MANIFEST, engine_speculation

    assert engine_speculation(engines["medusa"]) == "auto"  # conftest's manifest: the build's default
    before = tmp_path / "before"
    before.mkdir()
    old = json.loads((engines["medusa"] / MANIFEST).read_text())
    del old["speculation"]
    (before / MANIFEST).write_text(json.dumps(old))
    assert engine_speculation(before) == "always"  # a manifest from before issue 16: no key
    engine = tmp_path / "engine"
    engine.mkdir()
    assert engine_speculation(engine) == "always"  # no manifest at all
    for mode in ("auto", "always", "off"):
        (engine / MANIFEST).write_text(json.dumps({"backend": "torch", "speculation": mode}))
        assert engine_speculation(engine) == mode
    for bad, shown in (({"speculation": "sometimes"}, "'sometimes'"), ({"speculation": None}, "None"), ([1], "None")):
        (engine / MANIFEST).write_text(json.dumps(bad))
        with pytest.raises(ConfigError) as e:
            engine_speculation(engine)
        assert str(e.value) == f"{engine / MANIFEST}: speculation must be one of auto, always, off, got {shown}"
    (engine / MANIFEST).write_text("{not json")
    with pytest.raises(ConfigError, match=rf"^cannot read {engine / MANIFEST}: "):
        engine_speculation(engine)
