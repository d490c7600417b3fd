"""The CLI edge of issue 14: the default command never swallows a mistyped one, and the OSErrors a
user can cause (full disk, read-only directory, refused connection) are one line, exit 1, while any
other error keeps its traceback."""

from __future__ import annotations

import errno
import os

import click
import pytest
from click.testing import CliRunner

from conftest import make_hf_model
from trtbuild.cli import Group, cli


@pytest.mark.parametrize("args, near", [(["biuld", "x", "-o", "y"], "build"),
                                        (["genrate", "ckpt", "--prompt", "hi"], "generate"),
                                        (["serv", "repo"], "serve")])
def test_mistyped_command_suggests_the_nearest(tmp_path, monkeypatch, args, near):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert f"No such command '{args[0]}'" in r.output and f"Did you mean '{near}'?" in r.output
    assert "--pp" not in r.output and "HF model directory" not in r.output  # not taken for a model path
    assert list(tmp_path.iterdir()) == []


def test_unknown_word_lists_the_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["zzz"])
    assert r.exit_code == 2 and "Commands: ask, bench, build" in r.output


def test_an_existing_directory_is_still_the_default_build(tmp_path, monkeypatch):
    make_hf_model(tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    for first in ("hf", "./hf", str(tmp_path / "hf")):  # a bare name, a relative and an absolute path
        r = CliRunner().invoke(cli, [first, "-o", "out", "--dry-run", "--force"])
        assert r.exit_code == 0, r.output
        assert (tmp_path / "out" / "spec.yaml").is_file()
    r = CliRunner().invoke(cli, ["./missing", "-o", "out2"])  # a path that is not there: build says so
    assert r.exit_code == 1 and "HF model directory not found" in r.output


def _group_raising(exc: BaseException) -> click.Group:
    @click.group(cls=Group)
    def g() -> None:
        pass

    @g.command()
    def boom() -> None:
        raise exc

    return g


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"),
                                        (errno.EACCES, "Permission denied"),
                                        (errno.ECONNREFUSED, "Connection refused")])
def test_anticipated_os_errors_are_one_line(code, text):
    r = CliRunner().invoke(_group_raising(OSError(code, os.strerror(code), "/data/out/rank0.safetensors")), ["boom"])
    assert r.exit_code == 1
    assert r.output.strip() == f"Error: {text}: /data/out/rank0.safetensors"


def test_unexpected_os_error_keeps_its_traceback():
    r = CliRunner().invoke(_group_raising(OSError(errno.EIO, "Input/output error")), ["boom"])
    assert r.exit_code == 1 and isinstance(r.exception, OSError) and r.exception.errno == errno.EIO



def test_a_native_writers_disk_full_is_one_line_naming_the_users_path():
    """safetensors' Rust writer reports ENOSPC only in its text; a staging name never shows."""
    from safetensors import SafetensorError

    e = SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                        "\"No space left on device\" }) (os error 28) /data/.heads.tmp-1-2-3-4-x/w.safetensors")
    r = CliRunner().invoke(_group_raising(e), ["boom"])
    assert r.exit_code == 1, r.output
    line = r.output.strip()
    assert line.startswith("Error: No space left on device: ") and "/data/heads/w.safetensors" in line, line
    assert ".tmp-" not in line and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(_group_raising(OSError(errno.ENOSPC, "No space left on device",
                                                  "/data/.out.tmp-1-2-3-4-x/rank0.safetensors")), ["boom"])
    assert r.output.strip() == "Error: No space left on device: /data/out/rank0.safetensors"


def test_an_unrelated_exception_mentioning_no_os_error_keeps_its_traceback():
    r = CliRunner().invoke(_group_raising(ValueError("bad shape")), ["boom"])
    assert isinstance(r.exception, ValueError)


@pytest.mark.parametrize("text", ["1,,2", "0", ""])
def test_tune_medusa_candidates_are_checked(tmp_path, text):
    r = CliRunner().invoke(cli, ["tune-medusa", str(tmp_path), "--prompts", str(tmp_path / "p.txt"),
                                 "--candidates", text])
    assert r.exit_code == 2 and "--candidates" in r.output and "expected comma-separated integers" in r.output


# --- the default command and the nearest-command hint ----------------------------------------------


def test_a_mistyped_command_gets_clicks_message_and_the_nearest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["genrate", "ckpt"])
    assert r.exit_code == 2 and "Error: No such command 'genrate'. Did you mean 'generate'?" in r.output, r.output
    r = CliRunner().invoke(cli, ["tune-lookahed", "ckpt"])
    assert "Did you mean 'tune-lookahead'?" in r.output


@pytest.mark.parametrize("word", ["./missing", "no/such/dir", "../gone"])
def test_a_path_that_is_not_there_is_a_missing_model_directory(tmp_path, monkeypatch, word):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, [word, "-o", "out"])
    assert r.exit_code == 1 and r.output == f"Error: HF model directory not found: {word}\n", r.output
    assert list(tmp_path.iterdir()) == []


def test_a_path_to_a_file_is_not_a_model_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{}")
    r = CliRunner().invoke(cli, ["d/config.json", "-o", "out"])
    assert r.exit_code == 1 and r.output == "Error: d/config.json is not a model directory\n", r.output


def test_options_before_the_model_directory_still_build(tmp_path, monkeypatch):
    make_hf_model(tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["-o", "out", "hf", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "spec.yaml").is_file()


def test_the_groups_own_options_are_not_build_options():
    assert CliRunner().invoke(cli, ["--version"]).output.startswith("trtbuild, version ")
    r = CliRunner().invoke(cli, ["-h"])
    assert r.exit_code == 0 and "Commands:" in r.output


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "trtbuild.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("trtbuild, version "), r.stderr


# --- shared option types -------------------------------------------------------------------------


def _convert(param_type, value):
    @click.command()
    @click.option("--value", "value", type=param_type)
    def c(value):
        click.echo(repr(value))

    return c


@pytest.mark.parametrize("text, want", [("1", (1,)), ("1, 4,16", (1, 4, 16)), ("+2,3", (2, 3))])
def test_int_list_good(text, want):
    from trtbuild.cli.options import IntList

    assert IntList().convert(text, None, None) == want


@pytest.mark.parametrize("text", ["1,,2", "0", "-1", "a", "", "1,", "1.5", "1 2"])
def test_int_list_bad_is_one_usage_line(text):
    from trtbuild.cli.options import IntList

    r = CliRunner().invoke(_convert(IntList(), text), ["--value", text])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1] == \
        f"Error: Invalid value for --value: expected comma-separated integers >= 1, got {text!r}"


@pytest.mark.parametrize("text, why", [("1,,2", "an empty item"), ("3,-2", "'-2', not a token id (an integer >= 0)"),
                                       ("x", "'x', not a token id (an integer >= 0)")])
def test_token_ids(text, why):
    from trtbuild.cli.options import TOKEN_IDS

    assert TOKEN_IDS.convert("0, 7,101", None, None) == (0, 7, 101)
    with pytest.raises(click.BadParameter, match="expected comma-separated token ids") as e:
        TOKEN_IDS.convert(text, None, None)
    assert str(e.value.message).endswith(why)


def test_lookahead_type():
    from trtbuild.cli.options import Lookahead
    from trtbuild.common.errors import ConfigError
    from trtbuild.common.lookahead.spec import LookaheadSpec

    assert Lookahead().convert(" 4, 3,4", None, None) == LookaheadSpec(4, 3, 4)
    assert Lookahead().convert("1,1,0", None, None) == LookaheadSpec(1, 1, 0)  # a legal request: plain decoding
    assert Lookahead(engine=True, as_text=True).convert("4,3,4", None, None) == "4,3,4"
    with pytest.raises(ConfigError, match="gives max_draft_len 0"):
        Lookahead(engine=True).convert("1,2,0", None, None)
    with pytest.raises(ConfigError, match="must be 'W,N,G'"):
        Lookahead().convert("4;3;4", None, None)


def test_medusa_choices_type():
    from trtbuild.cli.options import MedusaChoices
    from trtbuild.common.errors import ConfigError

    for text in ("{0}, {0, 0}, {1}", "[[0], [0, 1]]", "mc_sim_7b_63"):
        assert MedusaChoices().convert(text, None, None) == text  # the text is kept
    for text, msg in (("{0}, {0, x}", "malformed brace form"), ("[[0]", "invalid JSON"), ("", "empty")):
        with pytest.raises(ConfigError, match=msg):
            MedusaChoices().convert(text, None, None)


@pytest.mark.parametrize("args, line", [
    (["--lookahead", "4;3;4"], "Error: lookahead spec must be 'W,N,G' (three integers, e.g. 4,3,4), got '4;3;4'"),
    (["--lookahead", "1,2,0"], "Error: lookahead (1,2,0) gives max_draft_len 0 ((N-2) + (W-1+G)(N-1)): nothing to "
                               "speculate (use e.g. 4,3,4, or build without --lookahead)"),
    (["--medusa-choices", "{0}, {x}"], "Error: medusa choices: malformed brace form '{0}, {x}' (expected "
                                       "'{0}, {0, 1}, ...')"),
])
@pytest.mark.parametrize("command", ["convert", "build"])
def test_speculative_options_are_one_line_errors_before_anything_runs(tmp_path, command, args, line):
    r = CliRunner().invoke(cli, [command, str(tmp_path / "hf"), "-o", str(tmp_path / "out"), *args])
    assert r.exit_code == 1 and r.output == line + "\n", r.output
    assert not (tmp_path / "out").exists()


def test_the_option_bundles_keep_each_commands_help():
    convert = CliRunner().invoke(cli, ["convert", "-h"]).output
    build = CliRunner().invoke(cli, ["build", "-h"]).output
    for out in (convert, build):
        assert all(o in out for o in ("--medusa ", "--medusa-choices", "--lookahead W,N,G", "--max-draft-len"))
    assert "Store a lookahead decoding spec" in convert and "Lookahead decoding (window" in build
    for command, report in (("tune-medusa", "choices in JSON and brace form"), ("tune-lookahead", "report to this")):
        out = " ".join(CliRunner().invoke(cli, [command, "-h"]).output.split())
        assert all(o in out for o in ("--prompts", "--chat", "--max-tokens", "-o, --output", report)), out


def test_posterior_settings_need_typical_acceptance(tmp_path):
    for flag in ("--posterior-threshold", "--posterior-alpha"):
        r = CliRunner().invoke(cli, ["generate", str(tmp_path), "--input-ids", "1", flag, "0.2"])
        assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == (
            "Error: --posterior-threshold and --posterior-alpha tune --typical-acceptance: give it too"), r.output
