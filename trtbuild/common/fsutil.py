"""Output directories: one safety rule for every command that writes one, and atomic publishing.

The rule (`check_output_dir`):
- an output is never one of the command's inputs, never contains one and never sits inside one
  (real paths, symlinks resolved), whatever markers it carries;
- an existing output is replaced only with `--force` (or where a command replaces its own previous
  output, as `build` does a build) and only if it is empty or trtbuild wrote it *as this command's
  kind of output*: its `trtbuild.json` says `"kind"` (older markers are read by `marker_kind`).

`staging_dir` writes into a hidden sibling `.OUT.tmp-PID-START-BOOT-HOST-XXXX` (its owner process:
pid, start time, boot id, hostname hash) and renames it into place only when complete; on failure
it is deleted. A run killed outright cannot clean up, so the next run on the same output sweeps the
`.OUT.tmp-*` and `.OUT.old-*` siblings whose owner is no longer alive (a moved-aside previous output
whose replacement never arrived is put back first). Another host's or container's are left alone. Writing errors (disk full, read-only, quota, access)
become one ConfigError line naming the user's output path, never the staging path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trtbuild.common.errors import ConfigError

MARKER = "trtbuild.json"  # every directory trtbuild writes carries this manifest, with its "kind"

# kind -> what it is, for messages
KINDS = {
    "build": "a build (trtbuild build)",
    "dry-run": "a dry run (trtbuild build --dry-run)",
    "checkpoint": "a checkpoint (trtbuild convert)",
    "hf-model": "a HF model (trtbuild demo-model)",
    "medusa-heads": "Medusa heads (trtbuild train-medusa)",
    "triton_repo": "a Triton repository (trtbuild repo)",
    "k8s": "Kubernetes manifests (trtbuild k8s)",
    "bench": "bench results (trtbuild bench)",
    "bench-sweep": "bench sweep results (trtbuild bench sweep)",
}
_LEGACY_WRITTEN_BY = {"demo-model": "hf-model", "train-medusa": "medusa-heads"}

# errors that are about writing whatever the file; EACCES/EPERM only when the file is the output's
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM})

Pathish = Path | str | os.PathLike


def marker_kind(d: Path) -> str | None:
    """The kind of output trtbuild wrote at `d` (None: no readable marker). Markers from before
    `"kind"` was recorded everywhere: demo-model's and train-medusa's `written_by`, convert's manifest."""
    try:
        m = json.loads((Path(d) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict):
        return None
    if isinstance(m.get("kind"), str):
        return m["kind"]
    if m.get("written_by") in _LEGACY_WRITTEN_BY:
        return _LEGACY_WRITTEN_BY[m["written_by"]]
    if "sha256" in m and "options" in m:
        return "checkpoint"
    return None


def check_inputs(out_dir: Pathish, inputs: Iterable[Pathish | None]) -> None:
    """Refuse an output that is, contains or sits inside one of `inputs` (None entries are skipped)."""
    out = Path(os.path.realpath(out_dir))
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        src = Path(os.path.realpath(inp))
        if out == src:
            how = "is"
        elif src.is_relative_to(out):
            how = "contains"
        elif out.is_relative_to(src):
            how = "is inside"
        else:
            continue
        what = "directory" if src.is_dir() else "file"
        raise ConfigError(f"output {out_dir} overlaps the input {what} {inp} (it {how} the input); "
                          "an output may never overlap an input: choose another -o")


def check_output_dir(out_dir: Pathish, force: bool, *, kind: str, inputs: Iterable[Pathish | None] = (),
                     replaces: Iterable[str] = ()) -> None:
    """Refuse `out_dir` if it overlaps an input, or exists and may not be replaced: replacing needs
    `force` and an empty directory or one whose marker kind is `kind` (or one of `replaces`)."""
    check_inputs(out_dir, inputs)
    out = Path(os.path.abspath(out_dir))
    if not _inside_staging(out):
        sweep_stale(out)  # before looking at OUT: a killed run may have moved it aside (put back here)
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"output path {out_dir} exists and is not a directory")
    if not force:
        raise ConfigError(f"output directory {out_dir} already exists (use --force to replace it)")
    if Path.cwd().is_relative_to(out):
        raise ConfigError(f"refusing to replace {out_dir}: it contains the current directory")
    if not any(out.iterdir()):
        return
    found = marker_kind(out)
    if found is None:
        raise ConfigError(f"refusing to replace {out_dir}: it is not empty and was not written by trtbuild "
                          f"(no {MARKER})")
    if found != kind and found not in set(replaces):
        raise ConfigError(f"refusing to replace {out_dir}: it holds {KINDS.get(found, repr(found))}, "
                          f"not {KINDS.get(kind, repr(kind))} (choose another -o)")


# --- staging directories and their owners --------------------------------------------------------

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        return "0"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("0" where /proc cannot say)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return "0"


def _host_id() -> str:
    """This host and pid namespace as 6 hex digits of a hash: a container sharing the host's name
    (host networking) still has its own pids, which must never be checked from here."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return hashlib.sha1(f"{socket.gethostname()}:{ns}".encode()).hexdigest()[:6]


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid)}-{_boot_id()}-{_host_id()}"


def _alive(pid: int, start: str, boot: str, host: str) -> bool:
    """Whether the process that made a staging directory may still run (a reused pid is not it).
    Another host's or container's (a shared volume) cannot be checked from here: taken as alive."""
    if host != _host_id():
        return True
    if boot != _boot_id():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start == "0" or _start_time(pid) in (start, "0")


_OWNED = re.compile(r"(?P<pid>\d+)-(?P<start>\d+)-(?P<boot>[0-9a-z]+)-(?P<host>[0-9a-f]+)-[^-]+")


def sweep_stale(out_dir: Pathish) -> list[Path]:
    """Remove `out_dir`'s staging siblings left by dead processes; return what was removed.

    A `.OUT.old-*` sibling holding `replaced` while OUT is missing is a previous output whose
    replacement was never renamed into place: it is restored, not deleted. Siblings without an
    owner tag (written before owners were recorded) are left alone: nothing says they are dead."""
    out = Path(os.path.abspath(out_dir))
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return []
    removed = []
    for stage in ("old", "tmp"):  # old first: a restored output must exist before tmp dirs go
        prefix = f".{out.name}.{stage}-"
        for p in siblings:
            if not p.name.startswith(prefix) or not p.is_dir() or p.is_symlink():
                continue
            m = _OWNED.fullmatch(p.name[len(prefix):])
            if m is None or _alive(int(m["pid"]), m["start"], m["boot"], m["host"]):
                continue
            try:
                if stage == "old" and (p / "replaced").is_dir() and not out.exists():
                    os.replace(p / "replaced", out)
            except OSError:
                continue  # cannot restore it: keep it rather than lose it
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


_active = threading.local()  # staging directories this thread is writing (nested: build -> convert)


def _inside_staging(out: Path) -> bool:
    return any(out.is_relative_to(t) for t in getattr(_active, "dirs", ()))


_NATIVE_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust writers (safetensors) report an errno


def _write_error(e: BaseException, out_dir: Pathish, tmp: Path) -> ConfigError | None:
    """The one-line error for an error raised while writing `tmp`, or None if it is not about writing."""
    if isinstance(e, OSError):
        ours = bool(e.filename) and Path(os.path.abspath(e.filename)).is_relative_to(tmp)
        if e.errno in _WRITE_ERRNOS or (e.errno in _ACCESS_ERRNOS and ours):
            return ConfigError(f"cannot write {out_dir}: {e.strerror or os.strerror(e.errno)}")
    elif (code := native_errno(e)) in _WRITE_ERRNOS:
        return ConfigError(f"cannot write {out_dir}: {os.strerror(code)}")
    return None


def native_errno(e: BaseException) -> int | None:
    """The errno a native writer (safetensors' Rust code) reports only in its message, or None."""
    m = _NATIVE_OS_ERROR.search(str(e)) if isinstance(e, Exception) and not isinstance(e, OSError) else None
    return int(m[1]) if m else None


_STAGED = re.compile(r"/\.([^/]+)\.(?:tmp|old)-[^/]+")


def user_path(path: str) -> str:
    """`path` with a staging directory `.OUT.tmp-...` (or `.old-`) written as the OUT it becomes."""
    return _STAGED.sub(r"/\1", path)


@contextmanager
def staging_dir(out_dir: Pathish, force: bool, *, kind: str, inputs: Iterable[Pathish | None] = (),
                replaces: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir`; on success rename it into place, else delete it.

    `out_dir` is checked by `check_output_dir` (same arguments) before and again at publishing. A
    directory published without a marker gets `{"kind": kind}`. Inside another staging directory
    (a build's checkpoint) errors are left to the outer one, which names the user's path."""
    inputs, replaces = list(inputs), tuple(replaces)
    out = Path(os.path.abspath(out_dir))
    nested = _inside_staging(out)
    check_output_dir(out_dir, force, kind=kind, inputs=inputs, replaces=replaces)  # sweeps stale siblings
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{_owner_tag()}-", dir=out.parent))
    except OSError as e:
        if nested:
            raise
        raise ConfigError(f"cannot create output directory {out_dir}: {e.strerror or e}") from None
    umask = os.umask(0)
    os.umask(umask)
    dirs = getattr(_active, "dirs", ())
    _active.dirs = (*dirs, tmp)
    try:
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like a mkdir
        yield tmp
        if not (tmp / MARKER).exists():
            from trtbuild import __version__

            (tmp / MARKER).write_text(json.dumps({"kind": kind, "trtbuild_version": __version__}, indent=2) + "\n")
        check_output_dir(out_dir, force, kind=kind, inputs=inputs, replaces=replaces)  # it may have appeared
        try:
            _publish(tmp, out)
        except OSError as e:
            if nested:
                raise
            raise ConfigError(f"cannot write output directory {out_dir}: {e.strerror or e}") from None
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = None if nested else _write_error(e, out_dir, tmp)
        if err is None:
            raise
        raise err from None
    finally:
        _active.dirs = dirs


def open_output_dir(out_dir: Pathish, *, kind: str, inputs: Iterable[Pathish | None] = ()) -> Path:
    """Create (or keep) `out_dir` to write into in place, for outputs that gather parts published on
    their own (a bench sweep: one staged results directory per build). The rule is check_output_dir's
    with replacing allowed: it must be new, empty or this command's kind."""
    inputs = list(inputs)
    check_output_dir(out_dir, True, kind=kind, inputs=inputs)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MARKER).exists():
            from trtbuild import __version__

            (out / MARKER).write_text(json.dumps({"kind": kind, "trtbuild_version": __version__}, indent=2) + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write {out_dir}: {e.strerror or e}") from None
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and restored if that fails."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{_owner_tag()}-", dir=out.parent))
    try:
        os.replace(out, old / "replaced")
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old / "replaced", out)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
