"""`trtbuild inspect` (issue 16): an engine's speculation mode and its stored cost calibration
(trtbuild.cost.json, written by trtbuild.runtime.cost.save) as a small table; a malformed
calibration is one line, never a crash. Real tiny builds (torch backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_hf_model
from trtbuild.cli import cli


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inspect-cal")
    make_hf_model(d / "hf")
    out = {}
    for name, extra in (("la", ["--lookahead", "2,2,1", "--speculation", "off"]), ("plain", [])):
        r = CliRunner().invoke(cli, ["build", str(d / "hf"), "-o", str(d / name), "--max-seq-len", "64",
                                     "--no-verify", *extra])
        assert r.exit_code == 0, r.output
        out[name] = d / name
    return out


def _inspect(path: Path, *args: str):
    r = CliRunner().invoke(cli, ["inspect", str(path), *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_the_stored_calibration_is_a_table_in_ms(built):
    from trtbuild.runtime.cost import CACHE, CostModel, engine_digest, save

    engine = built["la"] / "engine"
    text = _inspect(engine)
    assert "speculation: off\n" in text and "calibration" not in text  # none stored yet
    digest = engine_digest(engine)
    save(CostModel((1, 8, 64), (0.0021, 0.0035, 0.0125), "Test CPU | 2 cpus", digest, heads=0.0004), engine)
    assert (engine / CACHE).is_file()
    for path in (engine, built["la"]):  # an engine dir and the build dir holding it
        lines = _inspect(path).splitlines()
        i = lines.index(f"calibration: {CACHE}, measured on Test CPU | 2 cpus")
        assert lines[i + 1:i + 7] == [f"  for engine {digest} (this engine)",
                                      "    tokens    step ms",
                                      "         1      2.100",
                                      "         8      3.500",
                                      "        64     12.500",
                                      "  heads pass: 0.400 ms"]
    info = json.loads(_inspect(engine, "--json"))
    assert info["speculation"] == "off"
    assert info["calibration"]["step_ms"] == [[1, pytest.approx(2.1)], [8, pytest.approx(3.5)],
                                              [64, pytest.approx(12.5)]]
    assert info["calibration"]["heads_ms"] == pytest.approx(0.4) and info["calibration"]["this_engine"] is True

    # measured for another engine (here: the plain build's), no heads
    plain = built["plain"] / "engine"
    save(CostModel((1, 2), (0.001, 0.002), "Other CPU", digest), plain)
    text = _inspect(plain)
    assert "speculation: auto\n" in text  # the default mode
    assert f"  for engine {digest} (not this engine: the server measures again)\n" in text
    assert "  heads pass: - (no Medusa heads)\n" in text


@pytest.mark.parametrize("content, why", [
    ("{not json", "malformed (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ("[1, 2]", "malformed (a JSON list, not an object)"),
    (json.dumps({"tokens": [1, 2], "seconds": [0.1, 0.2], "machine": "m"}), "malformed (missing key 'engine')"),
    (json.dumps({"tokens": [1, 2], "seconds": [0.1], "machine": "m", "engine": "e"}),
     "malformed (tokens and seconds must be lists of one length)"),
    (json.dumps({"tokens": [1, "2"], "seconds": [0.1, 0.2], "machine": "m", "engine": "e"}),
     "malformed (token total '2' is not an integer)"),
    (json.dumps({"tokens": [1, 2], "seconds": [0.1, 0.2], "heads": None, "machine": "m", "engine": "e"}),
     "malformed (time None is not a number)"),
])
def test_a_malformed_calibration_is_one_line(built, tmp_path, content, why):
    from trtbuild.runtime.cost import CACHE

    engine = built["plain"] / "engine"
    (engine / CACHE).write_text(content)
    try:
        text = _inspect(engine)
        assert [x for x in text.splitlines() if "calibration" in x] == [f"calibration: {CACHE} is {why}"]
        assert "speculation: auto" in text and "max_draft_len" in text  # the rest is still shown
        assert json.loads(_inspect(engine, "--json"))["calibration"] == {"file": CACHE, "error": why}
    finally:
        (engine / CACHE).unlink()
