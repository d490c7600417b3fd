"""The reference runtime's own CPU linear kernel (gemv.c): built on first use, loaded with ctypes.

Decoding is a chain of small-batch matrix products bound by how fast the weights stream from
memory. On the x86-64 machines here oneDNN's packed kernels stream them at about half the
machine's read bandwidth for one row (bfloat16 worse), so gemv.c keeps the weights in blocks of 32
output rows laid out k-major (one sequential stream per thread) and sums each output in one
float32 chain over k, which also makes every row's result independent of its batch (row-invariant).

The norm before a linear and the SwiGLU between two can run inside the call (a prologue), which
saves the separate ops' passes and dispatch in every layer.

Contract:
- `library()`: the compiled kernel, or None where it cannot run: not x86-64 Linux, no AVX-512
  F/BW/VL, no C compiler, a failed build, or TRTBUILD_KERNELS=0. Built once per source and flags
  into $TRTBUILD_CACHE/kernels (default ~/.cache/trtbuild/kernels), atomically; `unavailable()`
  says why not.
- `KernelLinear(w, b)`: w [O, I] float32 or bfloat16 packed once (the raw copy can be dropped);
  `__call__(x [..., I]) -> [..., O]` and `add_to(residual, x)` in w's dtype; `normed(x, g, eps)`
  is `self(rms_norm(x, g, eps))` and `swiglu_add_to(residual, fg [..., 2I])` is
  `add_to(residual, silu(fc) * gate)` with the norm or the SwiGLU done inside the call (float32,
  not rounded to w's dtype in between).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("gemv.c")
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-fopenmp", "-shared", "-fPIC")
DTYPES = (torch.float32, torch.bfloat16)
PRO_NONE, PRO_RMSNORM, PRO_SWIGLU = 0, 1, 2  # gemv.c's prologues

_state: dict[str, object] = {}


def cpuinfo(key: str) -> str | None:
    """The first `key : value` of /proc/cpuinfo (e.g. "model name", "flags"), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cache_dir() -> Path:
    root = os.environ.get("TRTBUILD_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trtbuild"
    return Path(root) / "kernels"


def digest() -> str:
    """16 hex digits of the kernel's source and build flags (its cached library's name)."""
    return hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]


def _build() -> ctypes.CDLL:
    """Compile gemv.c into the cache (once per source and flags) and load it; raises OSError."""
    if os.environ.get("TRTBUILD_KERNELS", "1") == "0":
        raise OSError("disabled by TRTBUILD_KERNELS=0")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise OSError(f"no kernel for {platform.system()} {platform.machine()}")
    missing = {"avx512f", "avx512bw", "avx512vl", "fma"} - set((cpuinfo("flags") or "").split())
    if missing:
        raise OSError(f"this CPU lacks {', '.join(sorted(missing))}")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise OSError("no C compiler (cc or gcc) on PATH")
    so = cache_dir() / f"gemv-{digest()}-{hashlib.sha256(cc.encode()).hexdigest()[:8]}.so"
    if not so.is_file():
        so.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=so.parent)
        os.close(fd)
        try:
            r = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                               timeout=120)
            if r.returncode:
                raise OSError(f"{cc} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            os.replace(tmp, so)  # atomic: concurrent builders each write their own temp file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(so))  # after torch: its libgomp is the one the kernel's OpenMP uses
    # (w, in, y, bias, add, M, I, O, threads, xf, prologue, g, eps): gemv.c's signature
    args = [*[ctypes.c_void_p] * 5, *[ctypes.c_long] * 3, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
            ctypes.c_void_p, ctypes.c_float]
    for fn in (lib.trtbuild_linear_f32, lib.trtbuild_linear_bf16):
        fn.argtypes, fn.restype = args, None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None where it cannot run (see `unavailable`)."""
    if "lib" not in _state:
        try:
            _state["lib"] = _build()
        except (OSError, subprocess.SubprocessError) as e:
            _state["lib"], _state["why"] = None, str(e)
    return _state["lib"]  # type: ignore[return-value]


def unavailable() -> str | None:
    """Why `library()` is None, or None when it loaded."""
    library()
    return _state.get("why")  # type: ignore[return-value]


def usable(dtype: torch.dtype, device: str) -> bool:
    return device == "cpu" and dtype in DTYPES and library() is not None


def pack(w: torch.Tensor, rows: int) -> torch.Tensor:
    """w [O, I] -> [ceil(O / rows), I, rows]: packed[b, k, r] = w[rows * b + r, k] (zero rows pad O)."""
    O, I = w.shape
    padded = torch.zeros(-(-O // rows) * rows, I, dtype=w.dtype)
    padded[:O] = w
    return padded.view(-1, rows, I).transpose(1, 2).contiguous()


class KernelLinear:
    """y = x @ w.T (+ b) through gemv.c; w [O, I] float32 or bfloat16 on CPU."""

    __slots__ = ("w", "b", "wp", "bias", "out", "inp", "fn", "bf16")

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None) -> None:
        lib = library()
        if lib is None or w.dtype not in DTYPES or w.device.type != "cpu":
            raise ValueError(f"no kernel for {w.dtype} on {w.device} ({unavailable() or 'dtype'})")
        self.out, self.inp = w.shape
        self.w = pack(w, lib.trtbuild_block_rows())  # [O/32, I, 32]
        self.b = None if b is None else b.to(w.dtype).contiguous()
        self.wp, self.bias = self.w.data_ptr(), None if self.b is None else self.b.data_ptr()  # kept alive by w, b
        self.bf16 = w.dtype == torch.bfloat16
        self.fn = lib.trtbuild_linear_bf16 if self.bf16 else lib.trtbuild_linear_f32

    def _run(self, x: torch.Tensor, residual: torch.Tensor | None, pro: int = PRO_NONE,
             g: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
        dtype, out = self.w.dtype, self.out
        width = 2 * self.inp if pro == PRO_SWIGLU else self.inp
        if x.shape[-1] != width:
            raise ValueError(f"input has {x.shape[-1]} features, the kernel takes {width}")
        if x.dtype != dtype or not x.is_contiguous():  # the kernel reads x as [M, width]
            x = x.to(dtype).contiguous()
        M = x.numel() // width
        y = torch.empty((*x.shape[:-1], out), dtype=dtype)  # [..., O]
        add = None
        if residual is not None:
            if residual.dtype != dtype or not residual.is_contiguous():
                residual = residual.to(dtype).contiguous()
            if residual.numel() != y.numel():
                raise ValueError(f"residual of {residual.numel()} values for an output of {y.numel()}")
            add = residual.data_ptr()
        scratch = None  # [M, I] x in float32, made by the kernel
        if self.bf16 or pro != PRO_NONE:
            scratch = torch.empty(M * self.inp, dtype=torch.float32)
        if g is not None and (g.dtype != dtype or not g.is_contiguous()):
            g = g.to(dtype).contiguous()
        self.fn(self.wp, x.data_ptr(), y.data_ptr(), self.bias, add, M, self.inp, out, torch.get_num_threads(),
                None if scratch is None else scratch.data_ptr(), pro, None if g is None else g.data_ptr(), eps)
        return y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + x @ w.T (+ b), the add done in float32 before the one rounding."""
        return self._run(x, residual)

    def normed(self, x: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
        """rms_norm(x, g, eps) @ w.T (+ b): g [I]."""
        return self._run(x, None, PRO_RMSNORM, g, eps)

    def swiglu_add_to(self, residual: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
        """residual + (silu(fc) * gate) @ w.T (+ b), fc, gate = fg.chunk(2, -1)."""
        return self._run(fg, residual, PRO_SWIGLU)
