"""Atomic output directories: write into a hidden sibling, rename into place, clean up on failure."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trtbuild.errors import ConfigError


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse an existing output (unless `force`) or a path that is not a directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path {out_dir} exists and is not a directory")
    if out_dir.exists() and not force:
        raise ConfigError(f"output directory {out_dir} already exists (use --force to replace it)")


@contextmanager
def staging_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir`; on success rename it into place, else delete it.

    With `force` an existing `out_dir` is replaced only after the new one is complete.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like a mkdir
    try:
        yield tmp
        check_output_dir(out_dir, force)  # it may have appeared meanwhile
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "replaced")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
