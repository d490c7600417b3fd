"""The engine directory's files, derived from the resolved spec: build_config, config.json, the
equivalent trtllm-build command line, and the lock file.

`build_config` has the keys of TensorRT-LLM 1.2's `BuildConfig.to_dict()` that matter here, with
the builder's own adjustments applied (speculative decoding adds max_draft_len to max_seq_len and
raises max_num_tokens to max_batch_size * (max_draft_len + 1)). `speculative_decoding_mode` is the
`SpeculativeDecodingMode` IntFlag value TensorRT-LLM serialises (NONE 1, MEDUSA 4, LOOKAHEAD 8).
"""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
from pathlib import Path

from trtbuild.spec import ResolvedSpec

TRTLLM_PIN = "1.2"  # the last TensorRT-LLM line with the engine flow (Medusa, lookahead)
SPEC_MODE = {None: 1, "medusa": 4, "lookahead_decoding": 8}


def plugin_config(spec: ResolvedSpec) -> dict:
    return {
        "dtype": spec.dtype,
        "gpt_attention_plugin": "auto",
        "gemm_plugin": spec.dtype,
        "nccl_plugin": spec.dtype if spec.world_size > 1 else None,
        "remove_input_padding": True,
        "context_fmha": True,
        "paged_kv_cache": True,
        "tokens_per_block": 32,
        "use_paged_context_fmha": True,
        "use_fused_mlp": True,
        "multiple_profiles": False,
        "paged_state": True,
        "streamingllm": False,
        "manage_weights": False,
    }


def build_config(spec: ResolvedSpec) -> dict:
    draft = spec.max_draft_len
    return {
        "max_input_len": spec.max_input_len,
        "max_seq_len": spec.max_seq_len + draft,  # trtllm-build adds max_draft_len for speculative decoding
        "opt_batch_size": min(8, spec.max_batch_size),
        "max_batch_size": spec.max_batch_size,
        "max_beam_width": 1,
        "max_num_tokens": max(spec.max_num_tokens, spec.max_batch_size * (draft + 1)) if draft else spec.max_num_tokens,
        "opt_num_tokens": None,
        "max_prompt_embedding_table_size": 0,
        "kv_cache_type": "PAGED",
        "gather_context_logits": spec.gather_context_logits,
        "gather_generation_logits": False,
        "strongly_typed": True,
        "profiling_verbosity": "layer_names_only",
        "enable_debug_output": False,
        "max_draft_len": draft,
        "speculative_decoding_mode": SPEC_MODE[spec.speculative_decoding_mode],
        "use_refit": False,
        "weight_sparsity": False,
        "weight_streaming": False,
        "use_strip_plan": False,
        "plugin_config": plugin_config(spec),
    }


def trtllm_build_command(spec: ResolvedSpec, checkpoint_dir: Path, engine_dir: Path) -> list[str]:
    """The equivalent `trtllm-build` invocation (TensorRT-LLM 1.2 flags only)."""
    cmd = ["trtllm-build", "--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(engine_dir),
           "--max_batch_size", str(spec.max_batch_size), "--max_input_len", str(spec.max_input_len),
           "--max_seq_len", str(spec.max_seq_len), "--max_num_tokens", str(spec.max_num_tokens),
           "--max_beam_width", "1", "--gemm_plugin", spec.dtype, "--gpt_attention_plugin", "auto",
           "--remove_input_padding", "enable", "--context_fmha", "enable", "--kv_cache_type", "paged",
           "--use_paged_context_fmha", "enable", "--tokens_per_block", "32"]
    if spec.speculative_decoding_mode:
        cmd += ["--speculative_decoding_mode", spec.speculative_decoding_mode, "--max_draft_len", str(spec.max_draft_len)]
    if spec.gather_context_logits:
        cmd += ["--gather_context_logits"]
    if spec.world_size > 1:
        cmd += ["--workers", str(spec.world_size)]
    return cmd


def convert_command(spec: ResolvedSpec, checkpoint_dir: Path) -> list[str]:
    """The `trtbuild convert` invocation that writes the checkpoint trtllm-build reads."""
    cmd = ["trtbuild", "convert", spec.model, "-o", str(checkpoint_dir), "--dtype", spec.dtype,
           "--tp", str(spec.tp), "--pp", str(spec.pp)]
    if spec.medusa:
        cmd += ["--medusa", spec.medusa, "--medusa-choices", spec.medusa_choices or "",
                "--max-draft-len", str(spec.max_draft_len)]
    if spec.lookahead:
        cmd += ["--lookahead", spec.lookahead]
    return cmd


def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def engine_config(spec: ResolvedSpec, pretrained_config: dict, version: str) -> dict:
    """config.json of an engine directory, as TensorRT-LLM's `Engine.save` writes it."""
    return {"version": version, "pretrained_config": pretrained_config, "build_config": build_config(spec)}


def dist_version(dist: str) -> str | None:
    """The installed version of a distribution (names are normalised: tensorrt_llm == tensorrt-llm)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of everything that shapes an engine, where present."""
    import torch

    from trtbuild import __version__

    cuda = torch.version.cuda if torch.cuda.is_available() else None
    return {"trtbuild": __version__, "tensorrt_llm": dist_version("tensorrt_llm"),
            "tensorrt": dist_version("tensorrt"), "torch": torch.__version__, "cuda": cuda,
            "python": platform.python_version()}


def gpu_info(target: str) -> dict | None:
    """The GPU a GPU build ran on (name, compute capability), or the target's table entry."""
    if target == "cpu":
        return None
    from trtbuild.builder.gpus import GPUS

    g = GPUS[target]
    info = {"target": target, "product": g.product, "compute_capability": "{}.{}".format(*g.compute_capability)}
    import torch

    if torch.cuda.is_available():
        cc = torch.cuda.get_device_capability(0)
        info.update(name=torch.cuda.get_device_name(0), compute_capability="{}.{}".format(*cc), detected=True)
        from trtbuild.builder.gpus import query_node_gpus
        from trtbuild.errors import ConfigError

        try:  # the driver the engine was built under (the Kubernetes init check compares nodes to it)
            info["driver"] = query_node_gpus()[0].driver
        except (ConfigError, IndexError):
            pass
    return info
