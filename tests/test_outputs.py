"""The output rule (issue 14 items 1, 7, 8, 10): no command writes onto, into or around its inputs,
--force replaces only its own kind of output, errors name the user's paths, stale staging
directories of dead processes are swept, and a write error is one line with nothing left."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import make_hf_model
from trtbuild.builder import build, verify_build
from trtbuild.cli import cli
from trtbuild.common.errors import ConfigError
from trtbuild.common.fsutil import MARKER, marker_kind, staging_dir, sweep_stale
from trtbuild.common.spec import BuildSpec


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def tree_hash(d: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `d`."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def one_error_line(r, *parts: str) -> str:
    """The single `Error: ...` line of a failed CLI run, checked to name each of `parts`."""
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [x for x in r.output.splitlines() if x.strip() and not x.startswith("Writing model shards")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for p in parts:
        assert p in lines[0], lines[0]
    assert ".tmp-" not in lines[0] and ".old-" not in lines[0], lines[0]
    return lines[0]


def no_staging(parent: Path) -> None:
    left = [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not left, left


@pytest.fixture
def hf(tmp_path: Path) -> Path:
    """A tiny HF model carrying the marker `demo-model` has always written (the --force bait)."""
    d = tmp_path / "hf"
    make_hf_model(d)
    (d / MARKER).write_text(json.dumps({"trtbuild_version": "0.1.0", "written_by": "demo-model",
                                        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "bfloat16"}) + "\n")
    return d


def trained_heads(d: Path, base: Path) -> Path:
    """A heads directory as train-medusa leaves it: heads + config.json (its save_heads), train/, marker."""
    from trtbuild.tuning.train_medusa import Heads, TrainConfig, save_heads

    torch.manual_seed(0)
    heads = Heads(64, 3, 1)
    with torch.no_grad():
        heads.w.normal_(0, 0.05)
    (d / "train").mkdir(parents=True)
    (d / "train" / "step-250.safetensors").write_bytes(os.urandom(4096))
    (d / MARKER).write_text(json.dumps({"written_by": "train-medusa"}) + "\n")  # today's train-medusa marker
    save_heads(d, heads, TrainConfig(heads=3, steps=1), base, 101, {})
    return d


def quiet(_: str) -> None:
    pass


# --- item 1: an output never is, contains or sits inside an input ---------------------------------

@pytest.mark.parametrize("extra", [[], ["--dry-run"]])
def test_build_onto_its_own_model_is_refused(hf, extra):
    before = tree_hash(hf)
    r = run("build", hf, "-o", hf, "--force", "--max-seq-len", "64", *extra)
    one_error_line(r, f"output {hf} ", "overlaps the input directory")
    assert tree_hash(hf) == before
    no_staging(hf.parent)


def test_build_onto_its_medusa_heads_is_refused(hf, tmp_path):
    heads = trained_heads(tmp_path / "heads", hf)
    before = tree_hash(heads)
    assert "train/step-250.safetensors" in before
    r = run("build", hf, "--medusa", heads, "-o", heads, "--force", "--max-seq-len", "64")
    one_error_line(r, f"output {heads} ", "overlaps the input directory")
    assert tree_hash(heads) == before


def test_build_into_a_build_that_holds_its_model_is_refused(tmp_path):
    """The input inside the output: OUT is a build (replaced without --force), the model sits in it."""
    out = tmp_path / "out"
    make_hf_model(tmp_path / "hf")
    build(BuildSpec(model=str(tmp_path / "hf"), max_seq_len=64), out, echo=quiet)
    os.replace(tmp_path / "hf", out / "hf")
    before = tree_hash(out / "hf")
    r = run("build", out / "hf", "-o", out, "--max-seq-len", "48")
    one_error_line(r, f"output {out} ", "it contains the input")
    assert tree_hash(out / "hf") == before and verify_build(out) == []


def test_build_refuses_an_output_holding_its_spec_file(tmp_path):
    make_hf_model(tmp_path / "hf")
    out = tmp_path / "out"
    build(BuildSpec(model=str(tmp_path / "hf"), max_seq_len=64), out, echo=quiet)
    spec = out / "my-spec.yaml"
    spec.write_text(f"model: {tmp_path / 'hf'}\nmax_seq_len: 48\n")
    r = run("build", "--spec", spec, "-o", out)
    one_error_line(r, "overlaps the input file", str(spec))
    assert spec.read_text().endswith("max_seq_len: 48\n")


def test_overlap_error_names_the_users_path_not_the_staging_dir(tmp_path):
    """`build HF -o HF/sub` used to fail in convert, naming HF/.sub.tmp-XXXX/checkpoint."""
    make_hf_model(tmp_path / "hf")
    r = run("build", tmp_path / "hf", "-o", tmp_path / "hf" / "sub", "--max-seq-len", "64")
    one_error_line(r, f"output {tmp_path / 'hf' / 'sub'} ", "is inside the input")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "generation_config.json",
                                                                   "model.safetensors"]


def test_output_overlapping_an_input_is_refused_by_every_command(hf, tmp_path):
    b = tmp_path / "b"
    build(BuildSpec(model=str(hf), max_seq_len=64), b, echo=quiet)
    engine = b / "engine"
    before = tree_hash(b)
    link = tmp_path / "link"
    link.symlink_to(hf)
    hf_before = tree_hash(hf)
    cases = [
        (("build", hf, "-o", link, "--force", "--max-seq-len", "64"), "is the input"),  # real paths compared
        (("convert", hf, "-o", hf / "ckpt"), "is inside the input"),
        (("convert", hf, "-o", hf, "--force"), "is the input"),
        (("build", hf, "-o", hf / "out", "--dry-run", "--max-seq-len", "64"), "is inside the input"),
        (("repo", engine, "-o", engine / "repo"), "is inside the input"),
        (("repo", engine, "-o", b, "--force"), "contains the input"),
        (("k8s", b, "-o", b / "k8s"), "is inside the input"),
        (("k8s", b, "-o", b, "--force"), "is the input"),
        (("preflight", b, "--repo-out", engine / "repo"), "is inside the input"),
        (("train-medusa", hf, "-o", hf / "heads"), "is inside the input"),
        (("train-medusa", hf, "-o", hf, "--force"), "is the input"),
    ]
    for args, how in cases:
        one_error_line(run(*args), how, "an output may never overlap an input")
    assert tree_hash(b) == before and tree_hash(hf) == hf_before and link.is_symlink()
    assert not (hf / "out").exists() and not (engine / "repo").exists() and not (b / "k8s").exists()


def test_demo_model_refuses_an_output_holding_its_gguf(tmp_path):
    d = tmp_path / "demo"
    d.mkdir()
    (d / MARKER).write_text(json.dumps({"written_by": "demo-model"}) + "\n")
    gguf = d / "model.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(64))
    one_error_line(run("demo-model", "--gguf", gguf, "-o", d, "--force"), "overlaps the input file", str(gguf))
    assert gguf.is_file()


def test_tune_report_never_overwrites_its_prompts_or_checkpoint(tmp_path):
    make_hf_model(tmp_path / "hf")
    ckpt = tmp_path / "ckpt"
    assert run("convert", tmp_path / "hf", "-o", ckpt, "--dtype", "float32").exit_code == 0
    before = tree_hash(ckpt)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1 2 3\n")
    for cmd in ("tune-medusa", "tune-lookahead"):
        one_error_line(run(cmd, ckpt, "--prompts", prompts, "-o", prompts), "overlaps the input file",
                       "(it is the input)")
        one_error_line(run(cmd, ckpt, "--prompts", prompts, "-o", ckpt / "config.json"), "(it is inside the input)")
    assert prompts.read_text() == "1 2 3\n" and tree_hash(ckpt) == before


def test_bench_results_never_land_in_an_input_or_another_output(tmp_path):
    from trtbuild.bench import bench

    make_hf_model(tmp_path / "hf")
    ckpt = tmp_path / "ckpt"
    assert run("convert", tmp_path / "hf", "-o", ckpt).exit_code == 0
    before = tree_hash(ckpt)
    with pytest.raises(ConfigError, match="is inside the input"):
        bench(None, [], None, [], out_dir=tmp_path / "hf" / "results", inputs=(tmp_path / "hf",), echo=quiet)
    with pytest.raises(ConfigError, match=r"holds a checkpoint \(trtbuild convert\), not bench results"):
        bench(None, [], None, [], out_dir=ckpt, echo=quiet)
    assert tree_hash(ckpt) == before
    report = bench(None, [], None, [], out_dir=tmp_path / "r", echo=quiet)  # no load point: an empty report
    assert report["results"] == [] and marker_kind(tmp_path / "r") == "bench"
    bench(None, [], None, [], out_dir=tmp_path / "r", echo=quiet)  # its own previous results are replaced
    no_staging(tmp_path)


# --- item 1: --force replaces only this command's own kind of output -----------------------------

def test_force_replaces_only_the_same_kind_of_output(tmp_path):
    hf = tmp_path / "hf"
    make_hf_model(hf)
    b, ckpt, repo, k8s = tmp_path / "b", tmp_path / "ckpt", tmp_path / "repo", tmp_path / "k8s"
    build(BuildSpec(model=str(hf), max_seq_len=64), b, echo=quiet)
    assert run("convert", hf, "-o", ckpt).exit_code == 0
    assert run("repo", b / "engine", "-o", repo).exit_code == 0
    assert run("k8s", b, "-o", k8s).exit_code == 0
    assert [marker_kind(d) for d in (b, ckpt, repo, k8s)] == ["build", "checkpoint", "triton_repo", "k8s"]
    hashes = {d: tree_hash(d) for d in (b, ckpt, repo, k8s)}
    cases = [
        (("convert", hf, "-o", b, "--force"), b, "holds a build (trtbuild build), not a checkpoint"),
        (("repo", b / "engine", "-o", ckpt, "--force"), ckpt, "holds a checkpoint"),
        (("k8s", b, "-o", repo, "--force"), repo, "holds a Triton repository"),
        (("build", hf, "-o", k8s, "--force", "--max-seq-len", "64"), k8s, "holds Kubernetes manifests"),
        (("build", hf, "-o", ckpt, "--force", "--dry-run", "--max-seq-len", "64"), ckpt, "holds a checkpoint"),
    ]
    for args, victim, msg in cases:
        one_error_line(run(*args), f"refusing to replace {victim}: ", msg)
    assert {d: tree_hash(d) for d in hashes} == hashes
    # the same kind is replaced; so is an empty directory
    assert run("convert", hf, "-o", ckpt, "--force", "--dtype", "float32").exit_code == 0
    assert run("repo", b / "engine", "-o", repo, "--force", "--no-streaming").exit_code == 0
    (tmp_path / "empty").mkdir()
    assert run("k8s", b, "-o", tmp_path / "empty", "--force").exit_code == 0
    no_staging(tmp_path)


def test_markers_written_before_kinds_are_still_read(tmp_path):
    """demo-model's and train-medusa's `written_by`, convert's kind-less manifest: each keeps its kind."""
    make_hf_model(tmp_path / "hf")
    ckpt = tmp_path / "ckpt"
    assert run("convert", tmp_path / "hf", "-o", ckpt).exit_code == 0
    m = json.loads((ckpt / MARKER).read_text())
    assert m.pop("kind") == "checkpoint"
    (ckpt / MARKER).write_text(json.dumps(m))  # as convert wrote it before
    assert marker_kind(ckpt) == "checkpoint"
    assert run("convert", tmp_path / "hf", "-o", ckpt, "--force", "--dtype", "float32").exit_code == 0
    for written_by, kind in (("demo-model", "hf-model"), ("train-medusa", "medusa-heads")):
        (tmp_path / written_by).mkdir()
        (tmp_path / written_by / MARKER).write_text(json.dumps({"written_by": written_by}))
        assert marker_kind(tmp_path / written_by) == kind


def test_a_build_replaces_a_dry_run_and_a_dry_run_a_build_only_with_force(tmp_path):
    make_hf_model(tmp_path / "hf")
    out = tmp_path / "o"
    spec = BuildSpec(model=str(tmp_path / "hf"), max_seq_len=64)
    build(spec, out, dry_run=True, echo=quiet)
    build(spec, out, echo=quiet)
    assert marker_kind(out) == "build"
    with pytest.raises(ConfigError, match="holds a build; a dry run does not replace it"):
        build(spec, out, dry_run=True, echo=quiet)
    build(spec, out, dry_run=True, force=True, echo=quiet)
    assert marker_kind(out) == "dry-run"


# --- item 8: stale staging directories of dead processes are swept ---------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _start(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[19]


def _boot() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]


def _host() -> str:
    import hashlib
    import socket

    ns = os.stat("/proc/self/ns/pid").st_ino  # the pid namespace too: host networking shares the name
    return hashlib.sha1(f"{socket.gethostname()}:{ns}".encode()).hexdigest()[:6]


def _stage(parent: Path, out: str, stage: str, pid: int, start: str, host: str | None = None) -> Path:
    d = parent / f".{out}.{stage}-{pid}-{start}-{_boot()}-{host or _host()}-abcd_123"
    d.mkdir()
    (d / "rank0.safetensors").write_bytes(os.urandom(1 << 16))
    return d


@pytest.mark.parametrize("command", ["build", "convert"])
def test_stale_staging_of_a_dead_process_is_swept_by_the_next_run(tmp_path, command):
    make_hf_model(tmp_path / "hf")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = _stage(tmp_path, "out", "tmp", _dead_pid(), "4242")
        dead_old = _stage(tmp_path, "out", "old", _dead_pid(), "4242")
        reused = _stage(tmp_path, "out", "tmp", os.getpid(), "1")  # our pid, but not our start time
        alive = _stage(tmp_path, "out", "tmp", live.pid, _start(live.pid))
        other = _stage(tmp_path, "other", "tmp", _dead_pid(), "4242")  # another output's: not this run's
        foreign = _stage(tmp_path, "out", "tmp", _dead_pid(), "4242", host="0f0f0f")  # another host's
        legacy = tmp_path / ".out.tmp-k3j_x9q2"  # no owner recorded: nothing says it is dead
        legacy.mkdir()
        args = ("convert", tmp_path / "hf", "-o", tmp_path / "out") if command == "convert" else \
            ("build", tmp_path / "hf", "-o", tmp_path / "out", "--max-seq-len", "64")
        r = run(*args)
        assert r.exit_code == 0, r.output
        assert not dead.exists() and not dead_old.exists() and not reused.exists()
        assert alive.is_dir() and other.is_dir() and legacy.is_dir() and foreign.is_dir()
    finally:
        live.kill()
        live.wait()


def test_an_output_moved_aside_by_a_killed_run_is_restored_not_deleted(tmp_path):
    out = tmp_path / "out"
    old = _stage(tmp_path, "out", "old", _dead_pid(), "4242")
    (old / "replaced").mkdir()
    (old / "replaced" / MARKER).write_text(json.dumps({"kind": "k8s"}))
    (old / "replaced" / "deployment.yaml").write_text("kind: Deployment\n")
    assert sweep_stale(out) == [old]
    assert (out / "deployment.yaml").read_text() == "kind: Deployment\n" and not old.exists()


def test_a_build_moved_aside_by_a_killed_run_is_back_before_the_next_build_decides(tmp_path):
    """A run killed mid-publish leaves the previous build in `.out.old-*/replaced`: the next build
    puts it back *before* deciding whether it may replace OUT, so it replaces it as its own."""
    make_hf_model(tmp_path / "hf")
    out = tmp_path / "out"
    assert run("build", tmp_path / "hf", "-o", out, "--max-seq-len", "64").exit_code == 0
    old = _stage(tmp_path, "out", "old", _dead_pid(), "4242")
    os.replace(out, old / "replaced")
    r = run("build", tmp_path / "hf", "-o", out, "--max-seq-len", "48")  # no --force: it is a build
    assert r.exit_code == 0, r.output
    assert "max_seq_len: 48" in (out / "spec.yaml").read_text()
    no_staging(tmp_path)


def test_outputs_named_like_the_builds_own_file_keys(tmp_path, monkeypatch):
    """`-o model` / `-o medusa` relative to the current directory are outputs like any other (the
    build's input hashes are keyed "model/config.json", never paths to check)."""
    make_hf_model(tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    for name in ("model", "medusa"):
        r = run("build", "hf", "-o", name, "--max-seq-len", "64")
        assert r.exit_code == 0, r.output
        assert (tmp_path / name / "engine").is_dir()


def test_staging_dir_names_its_owner(tmp_path):
    with staging_dir(tmp_path / "out", False, kind="bench") as tmp:
        pid, start, boot, host = tmp.name[len(".out.tmp-"):].split("-")[:4]
        assert (int(pid), start, boot, host) == (os.getpid(), _start(os.getpid()), _boot(), _host())
        assert sweep_stale(tmp_path / "out") == [] and tmp.is_dir()  # its owner (us) is alive
    assert marker_kind(tmp_path / "out") == "bench"  # a directory published without a marker gets one


# --- item 7: a write error is one line naming the output, and nothing is left ----------------------

@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_write_error_is_one_line_naming_the_output(tmp_path, monkeypatch, err):
    from trtbuild.convert import safetensors_io

    make_hf_model(tmp_path / "hf")
    real = safetensors_io.StreamingWriter.write
    calls = []

    def full(self, name, tensor):  # the disk fills after the first tensor
        calls.append(name)
        if len(calls) > 1:
            raise OSError(err, os.strerror(err))
        return real(self, name, tensor)

    monkeypatch.setattr(safetensors_io.StreamingWriter, "write", full)
    for args in (("convert", tmp_path / "hf", "-o", tmp_path / "ckpt"),
                 ("build", tmp_path / "hf", "-o", tmp_path / "b", "--max-seq-len", "64")):
        calls.clear()
        out = args[3]
        line = one_error_line(run(*args))
        assert line == f"Error: cannot write {out}: {os.strerror(err)}"
        assert not out.exists()
        no_staging(tmp_path)


def test_access_denied_inside_the_output_names_the_output(tmp_path, monkeypatch):
    """EACCES on a file of the staging directory is the output's; on an input it is left to the caller."""
    make_hf_model(tmp_path / "hf")

    def denied(self, path, *a, **kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    import trtbuild.convert as conv

    monkeypatch.setattr(conv, "write_manifest", lambda tmp, *a: denied(None, tmp / MARKER))
    line = one_error_line(run("convert", tmp_path / "hf", "-o", tmp_path / "ckpt"))
    assert line == f"Error: cannot write {tmp_path / 'ckpt'}: Permission denied"
    no_staging(tmp_path)
    with pytest.raises(PermissionError):  # not about the output: not relabelled as one
        with staging_dir(tmp_path / "x", False, kind="bench"):
            denied(None, tmp_path / "hf" / "config.json")
    no_staging(tmp_path)
