"""The runtime's CPU linear kernel (trtbuild/runtime/gemv.c through kernels.py): results against a
float64 reference, bfloat16 rounding bit for bit against torch's, row invariance (a row's result is
the same in any batch, with any thread count), and the fallback when it cannot build."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import make_hf_model
from trtbuild.common.errors import ConfigError
from trtbuild.convert import convert
from trtbuild.runtime import kernels
from trtbuild.runtime.kernels import KernelLinear, pack

needs_kernel = pytest.mark.skipif(kernels.library() is None, reason=f"no kernel here: {kernels.unavailable()}")


def test_pack_layout_by_hand() -> None:
    w = torch.arange(10.0).view(5, 2)  # O=5, I=2, blocks of 4 rows
    p = pack(w, 4)
    assert p.shape == (2, 2, 4)
    assert p[0].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]  # p[b, k, r] = w[4b + r, k]
    assert p[1].tolist() == [[8, 0, 0, 0], [9, 0, 0, 0]]  # zero rows pad O


def reference(w, x, b=None, add=None) -> torch.Tensor:
    y = x.double() @ w.double().T
    if b is not None:
        y = y + b.double()
    if add is not None:
        y = y + add.double()
    return y


@needs_kernel
@pytest.mark.parametrize("M", [1, 3, 8, 13, 40])
@pytest.mark.parametrize("O,I", [(64, 16), (70, 33), (5, 1), (33, 100)])
def test_float32_against_float64(M: int, O: int, I: int) -> None:
    g = torch.Generator().manual_seed(M * 1000 + O + I)
    w, x = torch.randn(O, I, generator=g), torch.randn(M, I, generator=g)
    b, res = torch.randn(O, generator=g), torch.randn(M, O, generator=g)
    lin = KernelLinear(w, b)
    bound = 1e-6 * (x.abs().double() @ w.abs().double().T + 1) * I  # float32 chain of I steps
    assert ((lin(x).double() - reference(w, x, b)).abs() <= bound).all()
    assert ((lin.add_to(res, x).double() - reference(w, x, b, res)).abs() <= bound + 1e-6 * res.abs()).all()
    assert KernelLinear(w, None)(x.view(M, 1, I)).shape == (M, 1, O)  # leading dims kept


@needs_kernel
@pytest.mark.parametrize("M", [1, 9])
def test_bfloat16_within_one_rounding(M: int) -> None:
    g = torch.Generator().manual_seed(7)
    w = torch.randn(96, 200, generator=g).bfloat16()
    x, b = torch.randn(M, 200, generator=g).bfloat16(), torch.randn(96, generator=g).bfloat16()
    y = KernelLinear(w, b)(x)
    assert y.dtype == torch.bfloat16
    ref = reference(w, x, b)
    # one rounding to bfloat16 (half an ulp, 2^-9 relative) plus the float32 chain's own error
    assert ((y.double() - ref).abs() <= ref.abs() * 2.0 ** -8 + 1e-4).all()


@needs_kernel
def test_bfloat16_rounding_bit_for_bit() -> None:
    # I = 1, w = 1: y = x + bias + add exactly in float32, so the kernel's one rounding must be torch's
    vals = [1.0, 2.0 ** -8, 2.0 ** -7 + 2.0 ** -8, -3.0, 2.0 ** 100, float("inf"), 0.0, -0.0, 1e-40]
    base = torch.tensor(vals).bfloat16()
    bias = torch.tensor([2.0 ** -8, 2.0 ** -9, 1.0, 2.0 ** -7, -(2.0 ** 100), 1.0, -0.0, 0.0, 0.0]).bfloat16()
    lin = KernelLinear(torch.ones(len(vals), 1).bfloat16(), bias)
    x = torch.ones(1, 1).bfloat16()
    got = lin.add_to(base[None], x)  # (1 * 1 + bias) + residual, in float32, then one rounding
    want = ((1.0 + bias.float()) + base.float()).bfloat16()[None]
    same = (got.view(torch.int16) == want.view(torch.int16)) | (got.isnan() & want.isnan())
    assert same.all(), (got, want)
    nan = lin.add_to(torch.full((1, len(vals)), float("nan")).bfloat16(), x)
    assert nan.isnan().all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_invariant_across_batches_and_threads(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(100, 576, generator=g).to(dtype), torch.randn(100, generator=g).to(dtype)
    xs = torch.randn(21, 576, generator=g).to(dtype)
    lin = KernelLinear(w, b)
    alone = torch.cat([lin(xs[i:i + 1]) for i in range(len(xs))])
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for M in (2, 5, 8, 9, 16, 21):
                assert torch.equal(lin(xs[:M]), alone[:M]), (n, M)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_and_swiglu_prologues(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(11)
    w, b = torch.randn(40, 48, generator=g).to(dtype), torch.randn(40, generator=g).to(dtype)
    x, res = torch.randn(5, 48, generator=g).to(dtype) * 3, torch.randn(5, 40, generator=g).to(dtype)
    norm_w, fg = torch.rand(48, generator=g).to(dtype) + 0.5, torch.randn(5, 96, generator=g).to(dtype)
    lin = KernelLinear(w, b)
    xd = x.double()
    normed = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_w.double()
    fc, gate = fg.double().chunk(2, dim=-1)
    tol = 1e-5 if dtype == torch.float32 else 2.0 ** -8
    for got, want in ((lin.normed(x, norm_w, 1e-5), reference(w, normed, b)),
                      (lin.swiglu_add_to(res, fg), reference(w, torch.nn.functional.silu(fc) * gate, b, res))):
        assert got.dtype == dtype
        assert ((got.double() - want).abs() <= want.abs() * tol + 10 * tol).all()
    with pytest.raises(ValueError, match="takes 96"):
        lin.swiglu_add_to(res, x)
    # per row: a row's normed result does not depend on its batch either
    assert torch.equal(lin.normed(x, norm_w, 1e-5)[2:3], lin.normed(x[2:3], norm_w, 1e-5))


def test_disabled_kernel_falls_back_and_is_refused_when_asked_for(tmp_path) -> None:
    make_hf_model(tmp_path / "hf", seed=5)
    ckpt = convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32")
    code = (
        "import sys\n"
        "from trtbuild.runtime import kernels\n"
        "from trtbuild.runtime.model import Model\n"
        "from trtbuild.common.errors import ConfigError\n"
        "assert kernels.library() is None and 'TRTBUILD_KERNELS=0' in kernels.unavailable()\n"
        "assert Model.load(sys.argv[1]).backend in ('onednn', 'plain')\n"
        "try:\n"
        "    Model.load(sys.argv[1], kernel=True)\n"
        "except ConfigError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {**os.environ, "TRTBUILD_KERNELS": "0"}
    r = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "TRTBUILD_KERNELS=0" in r.stdout, r.stdout


def test_unknown_dtype_refused() -> None:
    with pytest.raises((ValueError, ConfigError)):
        KernelLinear(torch.ones(4, 4, dtype=torch.float16), None)
