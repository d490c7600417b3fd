"""The runtime on CUDA (run where a GPU is lent; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_hf_model
from trtbuild.convert import convert
from trtbuild.runtime import Model, Request, generate

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_greedy_matches_cpu(tmp_path, dtype):
    make_hf_model(tmp_path / "hf", "Qwen2ForCausalLM")
    ckpt = convert(tmp_path / "hf", tmp_path / "c", dtype="float32", tp=2)
    cpu = Model.load(ckpt, dtype="float32", device="cpu")
    gpu = Model.load(ckpt, dtype=dtype, device="cuda")
    assert gpu.device == "cuda" and gpu.backend == "plain"
    reqs = [Request((5, 17, 33, 8), 12), Request((9, 2, 71), 12)]
    want = [r.output_ids for r in generate(cpu, reqs)]
    got = [r.output_ids for r in generate(gpu, reqs)]
    if dtype == "float32":
        assert got == want
    else:  # bf16 rounding may flip a late near-tie; the first tokens must agree
        assert [g[:4] for g in got] == [w[:4] for w in want]


def test_default_dtype_on_cuda_is_the_checkpoints(tmp_path):
    make_hf_model(tmp_path / "hf")
    m = Model.load(convert(tmp_path / "hf", tmp_path / "c", dtype="bfloat16"), device="cuda")
    assert m.dtype == torch.bfloat16
