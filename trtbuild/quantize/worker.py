"""Quantize a Hugging Face model with NVIDIA ModelOpt and export a TensorRT-LLM checkpoint.

A standalone script: it runs in ModelOpt's own environment (`trtbuild[quantize]`, or the one
`make modelopt` creates), never imports trtbuild, and is driven by trtbuild.quantize.driver through
subprocess with one JSON job. ModelOpt 0.37 pins the transformers 4.x line (TensorRT-LLM 1.2
installs transformers 4.57.1 next to it) while trtbuild runs transformers 5, where ModelOpt's
config export drops `rope_theta`; so ModelOpt lives apart and trtbuild rewrites config.json itself.

    python worker.py JOB.json

JOB: {"hf_dir", "out_dir", "recipe": fp8|int4_awq|int8_sq|w4a8_awq|null, "kv_cache": "fp8"|null,
      "group_size": int, "tp", "pp", "dtype": float16|bfloat16,
      "calib_ids": [[token ids], ...], "calib_batch": int,
      "medusa": null | {"file": FasterDecoding-layout safetensors, "num_heads", "num_layers"},
      "quantize_medusa_heads": bool,
      "reference_ids": [[token ids], ...] | null, "reference_out": path | null}
stdout: one JSON object per line: {"event": "calibrate", "done", "total"} while calibrating, then
{"event": "done", "job": i, "versions", "seconds": {"calibrate", "export"}} or
{"event": "error", "job": i, "error": one line}; the exit status is 1 if any job failed. JOB.json
may hold a list of jobs, run in turn in one process (ModelOpt is imported once).
`reference_out`: per sequence `ids.{i}` [T] and `logits.{i}` [T, V] (fp32), the logits of
ModelOpt's fake-quant model *after* export (export re-balances scales in place): the oracle the
reference runtime is checked against; `stored_logits.{i}` the same model's with its pre-quant
scales rounded to the export dtype, as the checkpoint stores them.
Nothing here reaches the network: the model is read from a local directory only.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ModelOpt 0.37 warns that transformers 4.57.1 is outside its `[hf]` extra (<4.57); 4.57.1 is what
# TensorRT-LLM 1.2 installs with it (NVIDIA/TensorRT-LLM@000867d9:requirements.txt).
warnings.filterwarnings("ignore", message=".*transformers version.*incompatible with nvidia-modelopt.*")

# trtbuild's recipe -> ModelOpt's config (nvidia-modelopt==0.37.0:modelopt/torch/quantization/config.py
# :172 INT8_SMOOTHQUANT_CFG, :181 FP8_DEFAULT_CFG, :226 INT4_AWQ_CFG, :243 W4A8_AWQ_BETA_CFG, :336 FP8_KV_CFG)
RECIPES = {"fp8": "FP8_DEFAULT_CFG", "int4_awq": "INT4_AWQ_CFG", "int8_sq": "INT8_SMOOTHQUANT_CFG",
           "w4a8_awq": "W4A8_AWQ_BETA_CFG"}


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def quant_config(job: dict) -> dict:
    """ModelOpt's config for the job: the recipe, its AWQ block size, FP8 KV, the Medusa heads."""
    import modelopt.torch.quantization as mtq

    if job["recipe"] is None:  # the KV cache alone: every other quantizer off
        cfg = {"quant_cfg": {"default": {"enable": False}}, "algorithm": "max"}
    else:
        cfg = copy.deepcopy(getattr(mtq, RECIPES[job["recipe"]]))
    q = cfg["quant_cfg"]
    if job["recipe"] in ("int4_awq", "w4a8_awq"):
        weight = q["*weight_quantizer"]
        first = weight[0] if isinstance(weight, list) else weight
        first["block_sizes"] = {**first["block_sizes"], -1: int(job["group_size"])}
    if job.get("kv_cache") == "fp8":
        q.update(copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"]))
        q.pop("default", None)  # FP8_KV_CFG's catch-all would switch the recipe's quantizers off
        q["default"] = {"enable": False}
    if job.get("medusa") and not job.get("quantize_medusa_heads"):
        q["*medusa_heads*"] = {"enable": False}
    return cfg


def attach_medusa(model, medusa: dict):
    """FasterDecoding-layout heads as `model.medusa_heads`, the attribute ModelOpt's export reads
    (nvidia-modelopt==0.37.0:modelopt/torch/export/layer_utils.py:1676): K Sequentials of L
    ResBlocks (modelopt/torch/speculative/utils.py:162) and a Linear(H, V)."""
    import torch
    from modelopt.torch.speculative.utils import ResBlock
    from safetensors.torch import load_file

    state = load_file(medusa["file"])
    K, L = int(medusa["num_heads"]), int(medusa["num_layers"])
    H, V = model.lm_head.weight.shape[1], model.lm_head.weight.shape[0]
    model.medusa_heads = torch.nn.ModuleList(
        [torch.nn.Sequential(*[ResBlock(H) for _ in range(L)], torch.nn.Linear(H, V, bias=False)) for _ in range(K)])
    model.medusa_heads.load_state_dict(state, strict=True)
    return model


def forward(model, ids):
    """The base logits of `ids` [B, T], running the Medusa heads too (their quantizers calibrate)."""
    out = model.model(input_ids=ids)
    hidden = out.last_hidden_state  # [B, T, H] after the final norm
    logits = model.lm_head(hidden)
    for head in getattr(model, "medusa_heads", ()):
        head(hidden)
    return logits


def calibrate(model, job: dict) -> None:
    import torch

    seqs = job["calib_ids"]
    batch = max(1, int(job.get("calib_batch") or 1))
    total = len(seqs)
    emit(event="calibrate", done=0, total=total)
    for i in range(0, total, batch):
        chunk = seqs[i:i + batch]
        width = max(len(s) for s in chunk)
        # right-padding with the last token and no mask would calibrate on repeated tokens: group
        # equal lengths instead (the driver cuts every calibration sequence to one length)
        if any(len(s) != width for s in chunk):
            for s in chunk:
                forward(model, torch.tensor([s]))
        else:
            forward(model, torch.tensor(chunk))
        emit(event="calibrate", done=min(i + batch, total), total=total)


def run(job: dict) -> dict:
    import importlib.metadata as md

    import modelopt.torch.quantization as mtq
    import torch
    import transformers
    from modelopt.torch.export import export_tensorrt_llm_checkpoint

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(job["hf_dir"], dtype=torch.float32).eval()
    if job.get("medusa"):
        model = attach_medusa(model, job["medusa"])
    t0 = time.perf_counter()
    with torch.no_grad():
        model = mtq.quantize(model, quant_config(job), forward_loop=lambda m: calibrate(m, job))
    t1 = time.perf_counter()
    with torch.no_grad():
        export_tensorrt_llm_checkpoint(model, "llama", dtype=getattr(torch, job["dtype"]), export_dir=job["out_dir"],
                                       inference_tensor_parallel=int(job["tp"]),
                                       inference_pipeline_parallel=int(job["pp"]), use_nfs_workspace=False)
    t2 = time.perf_counter()
    if job.get("reference_ids"):
        from safetensors.torch import save_file

        with torch.no_grad():
            ref = {}
            for i, ids in enumerate(job["reference_ids"]):
                ref[f"ids.{i}"] = torch.tensor(ids, dtype=torch.int64)  # [T]
                ref[f"logits.{i}"] = forward(model, torch.tensor([ids]))[0].float().contiguous()  # [T, V]
            # The same model with its pre-quant scales at the precision the checkpoint stores them
            # (`prequant_scaling_factor` is written in the export dtype, the fake-quant model keeps
            # fp32: nvidia-modelopt==0.37.0:modelopt/torch/export/postprocess.py:819-842)
            dtype = getattr(torch, job["dtype"])
            for module in model.modules():
                if getattr(module, "pre_quant_scale", None) is not None and hasattr(module, "_pre_quant_scale"):
                    module._pre_quant_scale.data.copy_(module._pre_quant_scale.to(dtype).float())
            for i, ids in enumerate(job["reference_ids"]):
                ref[f"stored_logits.{i}"] = forward(model, torch.tensor([ids]))[0].float().contiguous()  # [T, V]
        save_file(ref, job["reference_out"])
    versions = {p: md.version(p) for p in ("nvidia-modelopt", "transformers", "torch")}
    return {"versions": versions, "seconds": {"calibrate": round(t1 - t0, 3), "export": round(t2 - t1, 3)}}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: worker.py JOB.json  (one job object, or a list of them run in turn)", file=sys.stderr)
        return 2
    jobs = json.loads(open(argv[1]).read())
    failed = 0
    for i, job in enumerate(jobs if isinstance(jobs, list) else [jobs]):
        try:
            result = run(job)
        except Exception as e:  # the driver shows this one line
            failed += 1
            message = f"{type(e).__name__}: {' '.join(str(e).split())}"
            emit(event="error", job=i, error=message)
            print(message, file=sys.stderr)
            continue
        emit(event="done", job=i, **result)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
