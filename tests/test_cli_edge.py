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
