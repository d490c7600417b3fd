"""Fault injection for `build` (issue 14 items 7, 8): SIGKILL at random moments, a full filesystem and
a read-only one. After each, the next build succeeds and no staging directory is left; a failed
write is one line naming the output."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_hf_model
from trtbuild.builder import verify_build
from trtbuild.cli import cli
from trtbuild.common.fsutil import marker_kind

CLI = [sys.executable, "-c", "from trtbuild.cli import main; main()"]


def staging(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-")))


def build_args(hf: Path, out: Path, batch: int) -> list[str]:
    return ["build", str(hf), "-o", str(out), "--max-seq-len", "64", "--max-batch-size", str(batch)]


def one_line(r) -> str:
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [x for x in r.output.splitlines() if x.strip() and not x.startswith("Writing model shards")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert ".tmp-" not in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_the_next_build_succeeds(tmp_path):
    """Five builds (each a different spec, so each rebuilds and replaces OUT) SIGKILLed at seeded random
    moments of their writing (from the staging directory's appearance to the measured end)."""
    hf, out = tmp_path / "hf", tmp_path / "out"
    make_hf_model(hf)

    def start(batch: int) -> tuple[subprocess.Popen, float]:
        """Start a build; return it and when its staging directory appeared (relative to the start)."""
        p = subprocess.Popen(CLI + build_args(hf, out, batch), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while not staging(out) and p.poll() is None:
            assert time.monotonic() - t0 < 120, "the build never started writing"
            time.sleep(0.002)
        return p, time.monotonic() - t0

    p, seen = start(2)  # measured, not killed
    t0 = time.monotonic()
    assert p.wait(timeout=120) == 0
    window = time.monotonic() - t0 + 0.05
    assert marker_kind(out) == "build" and staging(out) == []

    rng = random.Random(14)
    left_behind = 0
    for i, batch in enumerate((3, 4, 5, 6, 7)):
        p, _ = start(batch)
        time.sleep(rng.uniform(0, window))
        p.kill()
        p.wait(timeout=30)
        left_behind += bool(staging(out))
        r = CliRunner().invoke(cli, build_args(hf, out, batch))
        assert r.exit_code == 0, f"run {i}: {r.output}"
        assert staging(out) == [], f"run {i}: {staging(out)}"
        assert marker_kind(out) == "build" and verify_build(out) == []
        assert f"max_batch_size: {batch}\n" in (out / "spec.yaml").read_text()
    assert left_behind >= 1, "no kill landed while the build was writing: nothing was tested"


@contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({' '.join((r.stderr or r.stdout).split())})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_build_onto_a_full_filesystem_is_one_line_and_leaves_nothing(tmp_path):
    hf = tmp_path / "hf"
    make_hf_model(hf)  # its float16 rank file is ~200 KB
    with tmpfs(tmp_path / "full", "size=64k") as fs:
        out = fs / "out"
        line = one_line(CliRunner().invoke(cli, build_args(hf, out, 4)))
        assert line == f"Error: cannot write {out}: No space left on device"
        assert list(fs.iterdir()) == []


def test_a_build_onto_a_read_only_filesystem_is_one_line_and_leaves_nothing(tmp_path):
    hf = tmp_path / "hf"
    make_hf_model(hf)
    with tmpfs(tmp_path / "ro", "size=16m") as fs:
        out = fs / "out"
        assert CliRunner().invoke(cli, build_args(hf, out, 4)).exit_code == 0
        before = sorted(str(p.relative_to(fs)) for p in fs.rglob("*"))
        r = subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only ({' '.join(r.stderr.split())})")
        for target in (out, fs / "new"):  # replacing a build, a new output
            line = one_line(CliRunner().invoke(cli, build_args(hf, target, 5)))
            assert line == f"Error: cannot create output directory {target}: Read-only file system"
        assert sorted(str(p.relative_to(fs)) for p in fs.rglob("*")) == before
        assert verify_build(out) == []


def test_a_native_writer_filling_the_disk_is_one_line(tmp_path):
    """safetensors' Rust writer (demo-model's save_file) reports ENOSPC only in its message text."""
    import torch
    from safetensors.torch import save_file

    from trtbuild.common.errors import ConfigError
    from trtbuild.common.fsutil import staging_dir

    with tmpfs(tmp_path / "full", "size=16k") as fs:
        with pytest.raises(ConfigError) as e:
            with staging_dir(fs / "hf", False, kind="hf-model") as tmp:
                save_file({"w": torch.zeros(1 << 16)}, str(tmp / "model.safetensors"))
        assert str(e.value) == f"cannot write {fs / 'hf'}: No space left on device"
        assert list(fs.iterdir()) == []
