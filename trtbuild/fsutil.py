"""Atomic output directories: write into a hidden sibling, rename into place, clean up on failure.

`--force` replaces only what trtbuild itself wrote (a directory holding `trtbuild.json`) or an empty
directory, never arbitrary user data, and only once the new directory is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trtbuild.errors import ConfigError

MARKER = "trtbuild.json"  # every directory trtbuild writes carries this manifest


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse an output path that exists, unless `force` and it is a trtbuild-written or empty dir."""
    out = Path(os.path.abspath(out_dir))
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"output path {out_dir} exists and is not a directory")
    if not force:
        raise ConfigError(f"output directory {out_dir} already exists (use --force to replace it)")
    if Path.cwd().is_relative_to(out):
        raise ConfigError(f"refusing to replace {out_dir}: it contains the current directory")
    if not (out / MARKER).is_file() and any(out.iterdir()):
        raise ConfigError(f"refusing to replace {out_dir}: it is not empty and was not written by trtbuild "
                          f"(no {MARKER})")


@contextmanager
def staging_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir`; on success rename it into place, else delete it."""
    out = Path(os.path.abspath(out_dir))
    check_output_dir(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out_dir}: {e.strerror or e}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like a mkdir
    try:
        yield tmp
        check_output_dir(out, force)  # it may have appeared meanwhile
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and restored if that fails."""
    try:
        if not out.exists():
            os.replace(tmp, out)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        try:
            os.replace(out, old / "replaced")
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old / "replaced", out)
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise ConfigError(f"cannot write output directory {out}: {e.strerror or e}") from None
