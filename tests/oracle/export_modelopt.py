"""Export HF checkpoints to TensorRT-LLM checkpoints with NVIDIA ModelOpt (the oracle).

Runs in the oracle's own venv (`make oracle`, tests/oracle/requirements.txt), never in the
project's: tests/test_modelopt_oracle.py calls it once per session through subprocess with a JSON
list of jobs, so ModelOpt and torch are imported once for all cases:

    python export_modelopt.py JOBS.json RESULT.json
    python export_modelopt.py --warm-up     # imports all of the above once (`make oracle`)

Each job: {"name", "hf_dir", "out_dir", "tp", "pp", "dtype" (null: ModelOpt's default),
           "decoder_type" (null: ModelOpt's get_model_type),
           "medusa": null | {"file", "num_heads", "num_layers", "via": "mtsp" | "module"}}.
RESULT.json: {"versions": {...}, "jobs": {name: {"ok": bool, "error": str | null, "decoder_type"}}}.
Nothing here reaches the network: the models are read from local directories only.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ModelOpt warns that transformers 4.57.1 is outside its `[hf]` extra's range (<4.57); 4.57.1 is what
# TensorRT-LLM 1.2 installs next to it (tests/oracle/requirements.txt), so that is what is checked.
warnings.filterwarnings("ignore", message=".*transformers version.*incompatible with nvidia-modelopt.*")


def _attach_medusa(model, medusa: dict):
    """Give `model` FasterDecoding-layout Medusa heads read from a `medusa_lm_head.safetensors`.

    "mtsp": the real ModelOpt HF Medusa model (`mtsp.convert(model, [("medusa", cfg)])`). Its heads
    are `nn.ModuleList([nn.Sequential(*[ResBlock(H)] * L, nn.Linear(H, V, bias=False))])`
    (nvidia-modelopt==0.37.0:modelopt/torch/speculative/plugins/transformers.py:80), i.e. the same
    state-dict keys as a FasterDecoding file (`{h}.{l}.linear.weight|bias`, `{h}.{L}.weight`).
    `[ResBlock(H)] * L` repeats one module object, so with L > 1 all layers of a head share
    weights (plugins/transformers.py:83): "module" builds the same Sequential with L distinct
    ResBlocks (modelopt/torch/speculative/utils.py:162) for L > 1. The export reads nothing but
    `model.medusa_heads` (modelopt/torch/export/layer_utils.py:1676), so both paths export alike.
    Returns the model with heads (mtsp.convert may return another object).
    """
    import torch
    from safetensors.torch import load_file

    state = load_file(medusa["file"])
    K, L = medusa["num_heads"], medusa["num_layers"]
    if medusa["via"] == "mtsp":
        import modelopt.torch.speculative as mtsp

        if L != 1:
            raise ValueError("via=mtsp shares one ResBlock across a head's layers: use via=module for L > 1")
        model = mtsp.convert(model, [("medusa", {"medusa_num_heads": K, "medusa_num_layers": L})])
    else:
        from modelopt.torch.speculative.utils import ResBlock

        H, V = model.lm_head.weight.shape[1], model.lm_head.weight.shape[0]
        model.medusa_heads = torch.nn.ModuleList(
            [torch.nn.Sequential(*[ResBlock(H) for _ in range(L)], torch.nn.Linear(H, V, bias=False))
             for _ in range(K)])
    model.medusa_heads.load_state_dict(state, strict=True)
    return model


def run_job(job: dict) -> str:
    import torch
    import transformers
    from modelopt.torch.export import export_tensorrt_llm_checkpoint
    from modelopt.torch.export.model_utils import get_model_type

    # fp32 weights in memory: the export casts each tensor once, to `dtype`
    # (modelopt/torch/export/model_config_export.py:432, postprocess.py:842).
    model = transformers.AutoModelForCausalLM.from_pretrained(job["hf_dir"], dtype=torch.float32).eval()
    if job.get("medusa"):
        model = _attach_medusa(model, job["medusa"])
    # Llama/Mistral -> "llama", Qwen2 -> "qwen" (modelopt/torch/export/model_utils.py:21-22,30,68-70),
    # unless the job names one (see the Qwen2 note in tests/test_modelopt_oracle.py).
    decoder_type = job.get("decoder_type") or get_model_type(model)
    with torch.no_grad():
        export_tensorrt_llm_checkpoint(
            model, decoder_type, dtype=job["dtype"] and getattr(torch, job["dtype"]), export_dir=job["out_dir"],
            inference_tensor_parallel=job["tp"], inference_pipeline_parallel=job["pp"],
            use_nfs_workspace=False)
    return decoder_type


def warm_up() -> dict:
    """Import everything an export uses (so `make oracle` byte-compiles it once); return the versions."""
    import importlib.metadata as md

    import modelopt.torch.export  # noqa: F401
    import modelopt.torch.speculative  # noqa: F401
    import safetensors.torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import transformers.models.mistral.modeling_mistral  # noqa: F401
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401

    return {p: md.version(p) for p in ("nvidia-modelopt", "transformers", "torch")}


def main(argv: list[str]) -> int:
    if argv[1:] == ["--warm-up"]:
        print(json.dumps(warm_up()))
        return 0
    jobs_path, result_path = argv[1], argv[2]
    jobs = json.loads(open(jobs_path).read())
    import importlib.metadata as md
    import importlib.util

    result = {"versions": warm_up(), "jobs": {}}
    # with tensorrt_llm importable ModelOpt would take TensorRT-LLM's config writer instead of its own
    # (modelopt/torch/export/tensorrt_llm_utils.py:193-229); the test requires it absent
    has_trtllm = importlib.util.find_spec("tensorrt_llm") is not None
    result["versions"]["tensorrt_llm"] = md.version("tensorrt_llm") if has_trtllm else None
    for job in jobs:
        try:
            decoder_type = run_job(job)
            result["jobs"][job["name"]] = {"ok": True, "error": None, "decoder_type": decoder_type}
        except Exception as e:  # reported per case by the test, which then fails that case
            result["jobs"][job["name"]] = {"ok": False, "decoder_type": None,
                                           "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
