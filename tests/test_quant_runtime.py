"""The reference runtime on quantized checkpoints, checked against NVIDIA ModelOpt 0.37's own fake-quant model.

One worker process (trtbuild/quantize/worker.py in ModelOpt's venv) quantizes a tiny Llama (vocab
128, so AWQ needs no vocabulary padding) with every recipe, exports TensorRT-LLM checkpoints and
writes the logits of its fake-quant model (after export) over fixed token ids. The runtime
(`Model.load(ckpt, dtype="float32", int4=False, int8=False)`, one prefill) must reproduce them.

The tiny model's unquantized tensors (norms, embedding, lm_head) are made exactly representable
in fp16 and bf16 first, so storing them in the checkpoint dtype loses nothing. The differences left
are these (|logits| <= ~6; max / mean abs error over 2 x 12 positions, measured on this machine):

- fp8 (W8A8, per-tensor scales): none, 1.2e-6 / 2.5e-7.
- `prequant_scaling_factor` stored in the checkpoint dtype, float32 in ModelOpt's model: the scale
  is off by up to 2^-11 relatively (fp16; 2^-8 bf16). Weight-only AWQ feels it smoothly (int4_awq
  7.7e-3 / 1.3e-3); under activation quantization it flips rounding steps (an int8 step, or an
  fp8 one of 2^-3 relative), which propagate: int8_sq 0.25 / 0.04 (bf16 0.46 / 0.06), w4a8_awq
  0.79 / 0.11. With the fake-quant model's pre-quant scales rounded to the checkpoint dtype (the
  worker's `stored_logits`, test_logits_match_modelopt_at_the_stored_precision) every recipe
  agrees to float32 noise (< 1e-5), so this is the only cause.
- FP8 KV cache: ModelOpt exports kv_cache_scaling_factor = max(amax / 448, 1.0), here 1.0
  (nvidia-modelopt==0.37.0:modelopt/torch/export/quant_utils.py:336-358), the scale TensorRT-LLM
  reads, while the fake-quant model rounds k and v with amax / 448 of each: another fp8 grid, so
  the error is as large as the KV quantization error itself (fp8 + kv 1.3 / 0.24; int4_awq + kv
  1.1 / 0.14; int8_sq + kv 1.8 / 0.19). With ModelOpt's own k and v scales in the runtime (the
  same experiment) fp8 + kv agrees to 3e-5.

A wrong dequantization is far outside these: int4 nibbles swapped gives 8.0 / 1.8.

Without the oracle venv these tests fail, unless TRTBUILD_SKIP_ORACLE=1 (then they skip); the
hermetic tests at the end (int4 unpacking, rounding rules, layout errors on a synthetic
checkpoint) always run.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_hf_model
from test_modelopt_oracle import oracle_input, require_oracle, write_heads
from trtbuild.common.errors import CheckpointError
from trtbuild.common.layout import Dims, Mapping
from trtbuild.common.quant import QuantConfig, quant_rank_layout
from trtbuild.runtime import Model, Request, decode, generate
from trtbuild.quantize.driver import WORKER, _worker_env
from trtbuild.runtime.model import Int4Linear, Int8Linear, RowInvariant
from trtbuild.runtime.quant import ActQuant, ConcatLinear, fake_fp8, unpack_int4

VOCAB, HIDDEN = 128, 64
_rng = random.Random(0)
CALIB_IDS = [[_rng.randrange(VOCAB) for _ in range(32)] for _ in range(8)]  # 8 x 32 random tokens
REF_IDS = [[_rng.randrange(VOCAB) for _ in range(12)] for _ in range(2)]


@dataclass(frozen=True)
class Job:
    recipe: str
    tp: int = 1
    kv_cache: str | None = None
    dtype: str = "float16"
    medusa: bool = False  # 2 heads x 1 ResBlock
    quantize_heads: bool = False
    group_size: int = 16  # AWQ; 32 where torch's packed int4 kernel should run (it takes no 16)
    tol: tuple[float, float] = (1e-4, 1e-5)  # max, mean abs error vs ModelOpt's logits (module docstring)


KV_TOL = (2.5, 0.4)
JOBS = {
    "fp8": Job("fp8"),
    "fp8-tp2": Job("fp8", tp=2),
    "fp8-kv": Job("fp8", kv_cache="fp8", tol=KV_TOL),
    "int4_awq": Job("int4_awq", tol=(2e-2, 4e-3)),
    "int4_awq-tp2": Job("int4_awq", tp=2, tol=(2e-2, 4e-3)),
    "int4_awq-kv-tp2": Job("int4_awq", tp=2, kv_cache="fp8", tol=KV_TOL),
    "int8_sq": Job("int8_sq", tol=(0.5, 0.08)),
    "int8_sq-tp2": Job("int8_sq", tp=2, tol=(0.5, 0.08)),
    "int8_sq-bf16": Job("int8_sq", dtype="bfloat16", tol=(1.0, 0.15)),
    "w4a8_awq": Job("w4a8_awq", tol=(1.5, 0.25)),
    "w4a8_awq-tp2": Job("w4a8_awq", tp=2, tol=(1.5, 0.25)),
    "medusa": Job("int8_sq", tp=2, kv_cache="fp8", medusa=True, tol=KV_TOL),
    "medusa-quantized-heads": Job("int8_sq", tp=2, kv_cache="fp8", medusa=True, quantize_heads=True, tol=KV_TOL),
    "int4_awq-g32": Job("int4_awq", group_size=32, tol=(2e-2, 4e-3)),
    "medusa-int4": Job("int4_awq", group_size=32, medusa=True, quantize_heads=True, tol=(2e-2, 4e-3)),
}
MEDUSA_CHOICES = [[0], [1], [0, 0], [0, 1], [1, 0]]  # trtbuild's build stores a tree; ModelOpt's export none
TP_PAIRS = ("fp8", "int4_awq", "int8_sq", "w4a8_awq")  # NAME and NAME-tp2: the same quantized model


def exact(t: torch.Tensor) -> torch.Tensor:
    """t rounded to values exactly representable in fp16 and bf16 (|x| >= 1e-4, or 0)."""
    return torch.where(t.abs() < 1e-4, 0.0, t).to(torch.bfloat16).float()


def exact_hf_model(path: Path) -> None:
    """The tiny Llama whose unquantized tensors (norms, embedding, lm_head) lose nothing in an fp16
    or bf16 checkpoint. Not the quantized linears: with so few mantissa bits, w / amax often lands
    exactly on a rounding tie, which ModelOpt's export (w / s) and fake quant (w * (1 / s)) break
    differently (nvidia-modelopt==0.37.0:modelopt/torch/export/quant_utils.py:752 vs
    modelopt/torch/quantization/tensor_quant.py:45-54)."""
    model = make_hf_model(path, vocab_size=VOCAB)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "embed_tokens" in name or "lm_head" in name:
                p.copy_(exact(p))
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """{job name: (checkpoint dir, ModelOpt's logits {"logits.i": [T, V]})}; REF_IDS are the inputs."""
    py = require_oracle()
    work = tmp_path_factory.mktemp("quant")
    exact_hf_model(work / "hf-5")
    hf = oracle_input(work / "hf-5", work / "hf")
    heads = write_heads(work / "heads", K=2, L=1, H=HIDDEN, V=VOCAB, seed=1) / "medusa_lm_head.safetensors"
    save_file({k: exact(v) for k, v in load_file(str(heads)).items()}, str(heads))  # as the base model's
    jobs = [dict(hf_dir=str(hf), out_dir=str(work / name), recipe=j.recipe, kv_cache=j.kv_cache, group_size=j.group_size,
                 tp=j.tp, pp=1, dtype=j.dtype, calib_ids=CALIB_IDS, calib_batch=4,
                 medusa={"file": str(heads), "num_heads": 2, "num_layers": 1} if j.medusa else None,
                 quantize_medusa_heads=j.quantize_heads, reference_ids=REF_IDS,
                 reference_out=str(work / f"{name}.logits.safetensors"))
            for name, j in JOBS.items()]
    (work / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([str(py), str(WORKER), str(work / "jobs.json")], capture_output=True, text=True,
                          timeout=600, env=_worker_env(), cwd=work)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]  # ModelOpt prints too
    errors = [e for e in events if e.get("event") == "error"]
    if proc.returncode != 0 or errors:
        pytest.fail(f"the ModelOpt worker failed (exit {proc.returncode}): {errors}\n{proc.stderr[-3000:]}")
    for name, job in JOBS.items():
        if job.medusa:
            cfg = json.loads((work / name / "config.json").read_text())
            (work / name / "config.json").write_text(json.dumps({**cfg, "medusa_choices": MEDUSA_CHOICES}))
    return {name: (work / name, load_file(str(work / f"{name}.logits.safetensors"))) for name in JOBS}


def prefill_logits(model: Model, ids: list[int]) -> torch.Tensor:
    """fp32 logits [T, V] of one sequence."""
    T = len(ids)
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    return model.forward(torch.tensor([ids]), torch.arange(T)[None], model.new_cache(1, T), 0, mask)[0]


def errors(model: Model, ref: dict[str, torch.Tensor], key: str = "logits") -> tuple[float, float]:
    """(max, mean) abs difference of the runtime's logits from ModelOpt's (`key`.i) over REF_IDS."""
    diff = torch.cat([(prefill_logits(model, ids) - ref[f"{key}.{i}"]).abs() for i, ids in enumerate(REF_IDS)])
    return diff.max().item(), diff.mean().item()


# --- against ModelOpt -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(JOBS))
def test_logits_match_modelopt(exports, name):
    ckpt, ref = exports[name]
    (mx, mean), (tmx, tmean) = errors(Model.load(ckpt, dtype="float32", int4=False, int8=False), ref), JOBS[name].tol
    assert mx <= tmx and mean <= tmean, f"{name}: max / mean abs error {mx:.3g} / {mean:.3g} > {tmx} / {tmean}"


STORED_TOL = (1e-4, 1e-5)  # inside the 1e-3 for weight-only recipes; here for every recipe


@pytest.mark.parametrize("name", list(JOBS))
def test_logits_match_modelopt_at_the_stored_precision(exports, name):
    """Against ModelOpt's fake-quant model with its pre-quant scales rounded to the checkpoint dtype
    (the worker's `stored_logits`): the first cause of the module docstring removed, every recipe
    agrees to float32 noise; the FP8 KV cache's exported scale (the second) remains."""
    ckpt, ref = exports[name]
    tmx, tmean = KV_TOL if JOBS[name].kv_cache else STORED_TOL
    mx, mean = errors(Model.load(ckpt, dtype="float32", int4=False, int8=False), ref, "stored_logits")
    assert mx <= tmx and mean <= tmean, f"{name}: max / mean abs error {mx:.3g} / {mean:.3g} > {tmx} / {tmean}"


def test_fp8_kv_scale_is_exported_as_one(exports):
    """The known cause of the KV-cache tolerance: the exported scale is clamped to >= 1.0."""
    ckpt, _ = exports["fp8-kv"]
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["quantization"]["kv_cache_quant_algo"] == "FP8"
    model = Model.load(ckpt, dtype="float32")
    assert [layer.kv_scale for layer in model.layers] == [1.0] * 3


@pytest.mark.parametrize("name", TP_PAIRS)
def test_tp2_equals_tp1(exports, name):
    one, two = (Model.load(exports[n][0], dtype="float32") for n in (name, f"{name}-tp2"))
    for ids in REF_IDS:
        torch.testing.assert_close(prefill_logits(two, ids), prefill_logits(one, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,dtype", [("w4a8_awq-tp2", "float32"), ("int8_sq-bf16", "bfloat16"),
                                        ("int4_awq-kv-tp2", "float32")])
def test_greedy_generation_runs(exports, name, dtype):
    model = Model.load(exports[name][0], dtype=dtype)
    out = generate(model, [Request(tuple(REF_IDS[0][:6]), 8), Request(tuple(REF_IDS[1][:3]), 8)])
    assert [len(r.output_ids) for r in out] == [8, 8]
    assert all(0 <= t < VOCAB for r in out for t in r.output_ids)
    if dtype == "float32":  # the first token is the prefill's argmax
        assert out[0].output_ids[0] == int(prefill_logits(model, REF_IDS[0][:6])[-1].argmax())


@pytest.mark.parametrize("name,quantized", [("medusa", False), ("medusa-quantized-heads", True),
                                            ("medusa-int4", True)])
def test_medusa_on_a_quantized_base(exports, name, quantized):
    ckpt, _ = exports[name]
    tensors = load_file(str(ckpt / "rank0.safetensors"))
    head = "medusa_heads.0.medusa_layers.0.linear"
    assert tensors[head + ".weight"].dtype == (torch.int8 if quantized else torch.float16)
    scale = ".prequant_scaling_factor" if JOBS[name].recipe == "int4_awq" else ".activation_scaling_factor"
    assert (head + scale in tensors) is quantized
    assert tensors["transformer.layers.0.mlp.fc.weight"].dtype == torch.int8  # the base is quantized either way
    model = Model.load(ckpt, dtype="float32")
    assert model.cfg.architecture == "MedusaForCausalLM" and len(model.medusa) == 2
    reqs = [Request(tuple(REF_IDS[0][:6]), 12), Request(tuple(REF_IDS[1][:4]), 12)]
    plain = [r.output_ids for r in generate(model, reqs)]
    assert [r.output_ids for r in decode(model, reqs, "engine")] == plain


def _kernel_linears(model: Model) -> list:
    out = []
    for layer in model.layers:
        for lin in (layer.qkv, layer.dense, layer.fc_gate, layer.proj):
            parts = lin.parts if isinstance(lin, ConcatLinear) else [lin]
            out += [p.inner if hasattr(p, "act") else p for p in parts]
    return out


KERNELS = [("int4_awq-g32", Int4Linear), ("int8_sq", Int8Linear)]


@pytest.mark.parametrize("name,kernel", KERNELS)
def test_integer_kernels_run_the_stored_grid(exports, name, kernel):
    """Weight-only int4 AWQ and int8 SmoothQuant through torch's packed int4 / int8 weight CPU kernels
    (the default on CPU) against the same checkpoint dequantized in fp32: the kernels' bf16 inputs
    and outputs are the difference, about as large as the whole dequantized model's in bf16 (max /
    mean here: int4 0.31 / 0.020 vs 0.29 / 0.020; int8 0.28 / 0.045 vs 0.36 / 0.061)."""
    ckpt, _ = exports[name]
    packed = Model.load(ckpt, dtype="float32")
    exact = Model.load(ckpt, dtype="float32", int4=False, int8=False)
    linears = _kernel_linears(packed)
    assert linears and all(isinstance(p, kernel) for p in linears)
    assert not any(isinstance(p, kernel) for p in _kernel_linears(exact))
    a, b = (torch.cat([prefill_logits(m, ids) for ids in REF_IDS]) for m in (packed, exact))
    assert (a - b).abs().max() < 0.5 and (a - b).abs().mean() < 0.08
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9


def test_int4_kernel_takes_only_its_group_sizes(exports):
    """Group 16 (the other int4 exports) is not one the kernel takes: those linears stay dequantized."""
    assert not any(isinstance(p, Int4Linear) for p in _kernel_linears(Model.load(exports["int4_awq"][0])))


@pytest.mark.parametrize("name,kernel", KERNELS)
def test_integer_kernels_are_row_invariant(exports, name, kernel):
    """A row's result does not depend on how many rows run with it (so no RowInvariant around them)."""
    model = Model.load(exports[name][0], dtype="float32")
    assert not any(isinstance(lin, RowInvariant) for layer in model.layers for lin in (layer.qkv, layer.proj))
    g = torch.Generator().manual_seed(0)
    for lin in _kernel_linears(model)[:4]:
        I = lin.w.shape[1] * (2 if kernel is Int4Linear else 1)
        x = torch.randn(13, I, generator=g)
        if kernel is Int8Linear:
            x = (x * 40).round().clamp(-128, 127)  # its input is on the int8 grid
        assert torch.equal(lin(x), torch.cat([lin(x[i:i + 1]) for i in range(len(x))]))


def _rewrite(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "rank0.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "rank0.safetensors"))
    return dst


def test_corrupted_modelopt_export(exports, tmp_path):
    src = exports["w4a8_awq-tp2"][0]
    scale = "transformer.layers.1.mlp.proj.weights_scaling_factor_2"
    bad = _rewrite(src, tmp_path / "missing", lambda t: t.pop(scale))
    with pytest.raises(CheckpointError, match=re.escape(scale)):
        Model.load(bad)
    name = "transformer.layers.0.attention.qkv.weight"
    bad = _rewrite(src, tmp_path / "dtype", lambda t: t.update({name: t[name].to(torch.float16)}))
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)} has dtype float16, expected int8"):
        Model.load(bad)


# --- hermetic: no ModelOpt needed -----------------------------------------------------------------


def modelopt_pack_int4(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """ModelOpt's 2-D packing, transcribed (nvidia-modelopt==0.37.0:modelopt/torch/export/quant_utils.py:680-721)."""
    out_dim, in_dim = w.shape
    block = in_dim // scale.shape[-1]
    q = (w / scale[:, torch.arange(in_dim) // block]).round().clamp(-8, 7).to(torch.int8)
    pairs = q.T.reshape(in_dim, out_dim // 2, 2)
    return ((pairs[..., 0] & 0x0F) | (pairs[..., 1] << 4)).T.contiguous().view(torch.uint8).view(torch.int8)


def test_unpack_int4_inverts_modelopt_packing():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 32, generator=g)
    scale = w.abs().reshape(6, 2, 16).amax(-1) / 7  # [O, I/16]
    ints = unpack_int4(modelopt_pack_int4(w, scale))
    assert ints.shape == (6, 32) and int(ints.min()) >= -8 and int(ints.max()) <= 7
    assert torch.equal(ints, (w / scale.repeat_interleave(16, dim=1)).round().clamp(-8, 7).to(torch.int8))


def test_activation_rounding_rules():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -300.0, 300.0])
    assert ActQuant("int8", torch.tensor([1.0]))(x).tolist() == [0.0, 2.0, 2.0, -0.0, -128.0, 127.0]  # half to even
    y = ActQuant("fp8", torch.tensor([1.0]))(torch.tensor([1000.0, -1000.0, 0.3]))
    assert y.tolist() == [448.0, -448.0, torch.tensor(0.3).to(torch.float8_e4m3fn).float().item()]
    s = 0.01
    assert torch.equal(fake_fp8(torch.tensor([10.0]), s), torch.tensor([448 * s]))


DIMS = Dims(hidden_size=HIDDEN, num_layers=2, num_heads=8, num_kv_heads=2, head_size=8,
            intermediate_size=96, vocab_size=VOCAB)


def synthetic_checkpoint(path: Path, algo: str, tp: int, kv: str | None = "FP8") -> Path:
    """Random tensors in exactly ModelOpt's layout (common.quant.quant_rank_layout); a tensor's
    values depend only on its name, so ranks agree wherever the loader requires it."""
    block = {"quant_algo": algo, "kv_cache_quant_algo": kv, "group_size": 16, "exclude_modules": ["lm_head"]}
    cfg = {"architecture": "LlamaForCausalLM", "dtype": "float16", "num_hidden_layers": 2, "num_attention_heads": 8,
           "num_key_value_heads": 2, "hidden_size": HIDDEN, "head_size": 8, "intermediate_size": 96,
           "vocab_size": VOCAB, "max_position_embeddings": 64, "hidden_act": "silu", "norm_epsilon": 1e-5,
           "position_embedding_type": "rope_gpt_neox", "rotary_base": 10000.0, "use_parallel_embedding": True,
           "embedding_sharding_dim": 0, "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
           "quantization": block}
    path.mkdir()
    (path / "config.json").write_text(json.dumps(cfg))
    for r in range(tp):
        out = {}
        for name, (dtype, shape) in quant_rank_layout(DIMS, Mapping(tp), r, QuantConfig.from_dict(block),
                                                      "float16").items():
            g = torch.Generator().manual_seed(zlib.crc32(f"{name}{shape}".encode()))
            x = torch.rand(shape, generator=g) * 0.1 + 0.01  # positive: fine for scales and weights alike
            out[name] = (torch.randint(-128, 128, shape, generator=g, dtype=torch.int8) if dtype == "int8"
                         else x.to(getattr(torch, dtype)))
        save_file(out, str(path / f"rank{r}.safetensors"))
    return path


@pytest.mark.parametrize("algo", ["FP8", "W4A16_AWQ", "W8A8_SQ_PER_CHANNEL", "W4A8_AWQ", None])
def test_synthetic_checkpoint_loads_and_runs(tmp_path, algo):
    """Every recipe at tp 2, and an FP8 KV cache alone (quant_algo null)."""
    ckpt = synthetic_checkpoint(tmp_path / "c", algo, tp=2)
    model = Model.load(ckpt)
    assert model.cfg.quant.algo == algo and model.embedding.shape == (VOCAB, HIDDEN)
    assert [layer.kv_scale is not None for layer in model.layers] == [True, True]
    assert torch.isfinite(prefill_logits(model, [1, 2, 3])).all()
    # fc and gate: one matmul where their input transforms agree (synthetic scales differ by name)
    fc_gate = model.layers[0].fc_gate
    if isinstance(fc_gate, RowInvariant):  # activation-quantized: every linear row-invariant (model.py)
        fc_gate = fc_gate.inner
    assert isinstance(fc_gate, ConcatLinear) == (algo in ("FP8", "W8A8_SQ_PER_CHANNEL", "W4A8_AWQ"))


def test_layout_errors_name_the_tensor(tmp_path):
    src = synthetic_checkpoint(tmp_path / "c", "W8A8_SQ_PER_CHANNEL", tp=2)
    name = "transformer.layers.0.mlp.fc.weights_scaling_factor"
    bad = _rewrite(src, tmp_path / "shape", lambda t: t.update({name: t[name][:10]}))
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)} has shape \[10\], expected \[48\]"):
        Model.load(bad)
    name = "transformer.layers.1.attention.dense.activation_scaling_factor"
    bad = _rewrite(src, tmp_path / "missing", lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing \['{re.escape(name)}'\]"):
        Model.load(bad)
    bad = _rewrite(src, tmp_path / "ranks", lambda t: t.update({name: t[name] * 2}))
    with pytest.raises(CheckpointError, match=r"attention\.dense: act_scale differs between tp ranks"):
        Model.load(bad)


def test_quantized_tp2_needs_a_split_embedding(tmp_path):
    ckpt = synthetic_checkpoint(tmp_path / "c", "FP8", tp=2)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "use_parallel_embedding": False}))
    with pytest.raises(CheckpointError, match="use_parallel_embedding"):
        Model.load(ckpt)
