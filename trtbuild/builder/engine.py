"""The engine directory's files, derived from the resolved spec: build_config, config.json, the
equivalent trtllm-build command line, and the lock file.

Two views of one build:

- `build_inputs(spec)`: what trtbuild hands TensorRT-LLM, the flags of `trtllm_build_command` as the
  dict `BuildConfig.from_dict` takes (the Python build API path, `trtllm.build_engines`);
- `build_config(spec)`: what TensorRT-LLM 1.2 then records in the engine's config.json
  (`EngineConfig.to_dict()["build_config"]`): every key of `BuildConfig.to_dict()` less the two it
  drops, with the builder's own adjustments applied in its order (`check_max_num_tokens` caps
  max_num_tokens at max_batch_size x max_seq_len and derives opt_num_tokens; speculative decoding then
  adds max_draft_len to max_seq_len and raises max_num_tokens to max_batch_size x (max_draft_len + 1);
  the plugin settings `build()` overrides). The dry run and the torch backend write this; a real
  tensorrt-llm build writes what TensorRT-LLM itself records, which it must equal.

Upstream references are `NVIDIA/TensorRT-LLM@<commit>:<path>:<line>`, each at the commit of the file
version read. builder.py@008b2b8d is the version the store serves for that path; the 1.x version of
the same file ("TensorRT LLM" spelling, LoraConfig from lora_helper, commit not exposed by the store)
has the same BuildConfig defaults and the same build() steps cited here, minus `auto_parallel_config`,
which the 1.x line removed: its trtllm-build (commands/build.py@65f1d153) has no auto-parallel
options. The plugin and LoRA defaults are those of the 1.x pydantic models (plugin.py@c20322ff,
lora_helper.py@585c7565), check_max_num_tokens that of _common.py@0fccc5b9.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
from pathlib import Path

from trtbuild.common.engine_config import SPEC_MODE_IDS
from trtbuild.common.spec import ResolvedSpec

TRTLLM_PIN = "1.2"  # the last TensorRT-LLM line with the engine flow (Medusa, lookahead)
SPEC_MODE = SPEC_MODE_IDS  # build_config.speculative_decoding_mode's int per mode (engine_config.SPEC_MODES)
TOKENS_PER_BLOCK = 32  # NVIDIA/TensorRT-LLM@c20322ffd3dc0740ca530c9fad989b22e64f6e06:tensorrt_llm/plugin/plugin.py:248-249
# NVIDIA/TensorRT-LLM@65f1d1536e18aea3380e6e270e00895a709333eb:tensorrt_llm/commands/build.py:171 (trtllm-build's
# default, BuildConfig.output_timing_cache: NVIDIA/TensorRT-LLM@008b2b8d23af95e4e19fa6f354f9c5f6349b2bfc:tensorrt_llm/builder.py:499)
OUTPUT_TIMING_CACHE = "model.cache"

_P = "NVIDIA/TensorRT-LLM@c20322ffd3dc0740ca530c9fad989b22e64f6e06:tensorrt_llm/plugin/plugin.py"


# trtbuild recipes (common.quant.RECIPES) by what TensorRT-LLM's build() does with them
AWQ = ("int4_awq", "w4a8_awq")  # per-group weight-only int4: the groupwise GEMM plugin
FP8_CONTEXT_FMHA = ("fp8", "w4a8_awq")  # quant_algo FP8 / W4A8_AWQ keep use_fp8_context_fmha


def plugin_config(spec: ResolvedSpec) -> dict:
    """`PluginConfig.model_dump()` as the engine's config.json records it: every field of the 1.x
    pydantic PluginConfig (plugin.py:102-296, in its order), defaults unless noted."""
    return {
        "dtype": spec.dtype,  # build() sets the model's dtype: builder.py@008b2b8d:1039
        "bert_attention_plugin": "auto",  # plugin.py:106-107 ("auto" is dumped as is; read as dtype)
        "gpt_attention_plugin": "auto",  # plugin.py:111-112; trtbuild passes --gpt_attention_plugin auto
        "gemm_plugin": spec.dtype,  # plugin.py:116-119 default None; trtbuild passes --gemm_plugin <dtype>
        "gemm_swiglu_plugin": None,
        "fp8_rowwise_gemm_plugin": None,
        "qserve_gemm_plugin": None,
        "identity_plugin": None,
        # plugin.py:148-149 default "auto", but build() always sets it: the model dtype when
        # world_size > 1, else None (builder.py@008b2b8d:1240-1241; set_nccl_plugin plugin.py:440)
        "nccl_plugin": spec.dtype if spec.world_size > 1 else None,
        "lora_plugin": None,
        "dora_plugin": False,
        # build() sets it to the model dtype for per-group weight-only quantization, i.e. W4A16_AWQ and
        # W4A8_AWQ (NVIDIA/TensorRT-LLM@008b2b8d:tensorrt_llm/builder.py build(): "if use_weight_only and not
        # disable_weight_only_quant_plugin"; quantization/mode.py QuantMode.from_quant_algo)
        "weight_only_groupwise_quant_matmul_plugin": spec.dtype if spec.quantization in AWQ else None,
        "weight_only_quant_matmul_plugin": None,
        "smooth_quant_plugins": True,  # plugin.py:164-165
        "smooth_quant_gemm_plugin": None,
        "layernorm_quantization_plugin": None,
        "rmsnorm_quantization_plugin": None,
        "quantize_per_token_plugin": False,
        "quantize_tensor_plugin": False,
        "moe_plugin": "auto",  # plugin.py:184-185
        "mamba_conv1d_plugin": "auto",  # plugin.py:189-190
        "low_latency_gemm_plugin": None,
        "low_latency_gemm_swiglu_plugin": None,
        "gemm_allreduce_plugin": None,
        "context_fmha": True,  # plugin.py:208-209
        "bert_context_fmha_fp32_acc": False,
        # plugin.py:220-221 default None; update_kv_cache_type sets it from kv_cache_type PAGED
        # (builder.py@008b2b8d:522-537)
        "paged_kv_cache": True,
        "remove_input_padding": True,  # plugin.py:226-227
        "norm_quant_fusion": False,
        "reduce_fusion": False,  # plugin.py:236-237 (and build() forces it off at tp 1: builder.py@008b2b8d:1049-1055)
        "user_buffer": False,
        "tokens_per_block": TOKENS_PER_BLOCK,
        "use_paged_context_fmha": True,  # plugin.py:252-253 (older plugin.py versions: False)
        # plugin.py:256-257 default True; build() turns it off without FP8/W4A8/NVFP4 quantization
        # (builder.py@008b2b8d:1125-1129)
        "use_fp8_context_fmha": spec.quantization in FP8_CONTEXT_FMHA,
        "fuse_fp4_quant": False,
        "multiple_profiles": False,  # plugin.py:264-265
        # plugin.py:272-273 default True; update_kv_cache_type overrides it to False for every
        # architecture but Mamba/RecurrentGemma (builder.py@008b2b8d:515-517, 558)
        "paged_state": False,
        "streamingllm": False,
        "manage_weights": False,  # plugin.py:282-283 (trtllm-build --fast_build turns it on; trtbuild does not)
        # plugin.py:287-288 default True; trtllm-build turns it off for any quant_algo but FP8 and
        # MIXED_PRECISION (NVIDIA/TensorRT-LLM@65f1d153:tensorrt_llm/commands/build.py main(), use_fused_mlp)
        "use_fused_mlp": spec.quantization in ("none", "fp8"),
        "pp_reduce_scatter": False,
    }


def lora_config() -> dict:
    """`LoraConfig.model_dump()` with no LoRA: NVIDIA/TensorRT-LLM@585c756579dc4d01f21fc13c2f604cdb461ac4f0:
    tensorrt_llm/lora_helper.py:82-90 (BuildConfig.lora_config default_factory: builder.py@008b2b8d:500)."""
    return {"lora_dir": [], "lora_ckpt_source": "hf", "max_lora_rank": 64, "lora_target_modules": [],
            "trtllm_modules_to_hf_modules": {}, "max_loras": None, "max_cpu_loras": None,
            "swap_gate_up_proj_lora_b_weight": True}


def check_max_num_tokens(max_num_tokens: int | None, opt_num_tokens: int | None, max_batch_size: int,
                         max_input_len: int, max_seq_len: int, max_beam_width: int = 1, *,
                         remove_input_padding: bool = True, enable_context_fmha: bool = True,
                         tokens_per_block: int = TOKENS_PER_BLOCK, multiple_profiles: bool = False) -> tuple[int, int | None]:
    """TensorRT-LLM's own (max_num_tokens, opt_num_tokens) adjustment, step for step:
    NVIDIA/TensorRT-LLM@0fccc5b97dd7b23c438e740b3bf4dcde607266c4:tensorrt_llm/_common.py:231-308."""
    if not remove_input_padding:  # _common.py:243-250
        if max_num_tokens is not None or opt_num_tokens is not None:
            max_num_tokens = max_batch_size * max_seq_len
        return max_num_tokens, opt_num_tokens
    if max_num_tokens is None:  # _common.py:252-253
        max_num_tokens = max_seq_len * max_batch_size
    if opt_num_tokens is None and not multiple_profiles:  # _common.py:263-264: min(max_batch_size * max_beam_width, ...)
        opt_num_tokens = min(max_batch_size * max_beam_width, max_num_tokens)
    if max_num_tokens > max_seq_len * max_batch_size:  # _common.py:277-283: the cap
        max_num_tokens = max_seq_len * max_batch_size
    if max_num_tokens < max_input_len and not enable_context_fmha:  # _common.py:284-290
        max_num_tokens = max_input_len
    elif max_num_tokens < tokens_per_block and enable_context_fmha:  # _common.py:291-298
        max_num_tokens = tokens_per_block
    if opt_num_tokens is not None and opt_num_tokens > max_num_tokens:  # _common.py:300-306
        opt_num_tokens = max_num_tokens
    return max_num_tokens, opt_num_tokens


def build_inputs(spec: ResolvedSpec) -> dict:
    """The dict trtbuild hands `BuildConfig.from_dict` (the same settings as `trtllm_build_command`).
    Includes every key from_dict pops without a default (builder.py@008b2b8d:565-570)."""
    return {
        "max_input_len": spec.max_input_len,
        "max_seq_len": spec.max_seq_len,  # the builder adds max_draft_len itself
        "max_batch_size": spec.max_batch_size,
        "max_beam_width": 1,
        "max_num_tokens": spec.max_num_tokens,
        "opt_num_tokens": None,
        "max_prompt_embedding_table_size": 0,
        "kv_cache_type": "PAGED",
        "gather_context_logits": spec.gather_context_logits,
        "gather_generation_logits": False,
        "strongly_typed": True,  # what trtllm-build passes: commands/build.py@65f1d153:542-543
        "max_draft_len": spec.max_draft_len,
        "speculative_decoding_mode": SPEC_MODE[spec.speculative_decoding_mode],
        # from_dict@008b2b8d defaults it to None (builder.py:590), the 1.x from_dict to the field's
        # 'model.cache': pass trtllm-build's value so both record the same
        "output_timing_cache": OUTPUT_TIMING_CACHE,
        "plugin_config": {"gemm_plugin": spec.dtype, "gpt_attention_plugin": "auto", "remove_input_padding": True,
                          "context_fmha": True, "use_paged_context_fmha": True, "tokens_per_block": TOKENS_PER_BLOCK},
    }


def build_config(spec: ResolvedSpec) -> dict:
    """The build_config TensorRT-LLM 1.2 records for `spec` (see the module docstring).

    Keys and defaults: the BuildConfig dataclass (builder.py@008b2b8d:479-511) in field order, less
    auto_parallel_config (gone in 1.x) and less dry_run and visualize_network, which
    EngineConfig.to_dict pops (builder.py@008b2b8d:689-693)."""
    draft = spec.max_draft_len
    speculative = spec.speculative_decoding_mode is not None
    # build() calls _init_max_seq_len (builder.py@008b2b8d:1042), which runs check_max_num_tokens on
    # the max_seq_len given, before speculative decoding raises it (builder.py@008b2b8d:926-937)
    max_num_tokens, opt_num_tokens = check_max_num_tokens(spec.max_num_tokens, None, spec.max_batch_size,
                                                          spec.max_input_len, spec.max_seq_len)
    max_seq_len = spec.max_seq_len
    if speculative:
        max_seq_len += draft  # builder.py@008b2b8d:1085-1093
        # builder.py@008b2b8d:1107-1116: raised to max_batch_size * (max_draft_len + 1) if smaller;
        # opt_num_tokens is not revisited
        max_num_tokens = max(max_num_tokens, spec.max_batch_size * (draft + 1))
    return {
        "max_input_len": spec.max_input_len,  # builder.py@008b2b8d:480 (1024 default; trtbuild always sets it)
        "max_seq_len": max_seq_len,
        "opt_batch_size": 8,  # builder.py@008b2b8d:482; from_dict's default 8 (:571), trtllm-build does not set it
        "max_batch_size": spec.max_batch_size,  # builder.py@008b2b8d:483 (2048 default; trtbuild always sets it)
        "max_beam_width": 1,  # builder.py@008b2b8d:484
        "max_num_tokens": max_num_tokens,  # builder.py@008b2b8d:485 (8192 default)
        "opt_num_tokens": opt_num_tokens,  # builder.py@008b2b8d:486 (None, derived by check_max_num_tokens)
        "max_prompt_embedding_table_size": 0,
        # builder.py@008b2b8d:488 (None): trtbuild passes paged (update_kv_cache_type makes it PAGED when
        # unset, :531-537); to_dict writes the enum's name (:650-651)
        "kv_cache_type": "PAGED",
        "gather_context_logits": spec.gather_context_logits,
        "gather_generation_logits": False,
        "strongly_typed": True,  # builder.py@008b2b8d:491
        "force_num_profiles": None,
        "profiling_verbosity": "layer_names_only",
        "enable_debug_output": False,
        "max_draft_len": draft,
        "speculative_decoding_mode": SPEC_MODE[spec.speculative_decoding_mode],  # builder.py@008b2b8d:496
        "use_refit": False,
        "input_timing_cache": None,
        "output_timing_cache": OUTPUT_TIMING_CACHE,
        "lora_config": lora_config(),
        "weight_sparsity": False,
        "weight_streaming": False,
        "plugin_config": plugin_config(spec),
        "use_strip_plan": False,
        "max_encoder_input_len": 1024,
        "monitor_memory": False,
        "use_mrope": False,  # builder.py@008b2b8d:511
    }


def diff_build_config(predicted: dict, recorded: dict, prefix: str = "") -> list[str]:
    """Where the build_config TensorRT-LLM recorded differs from trtbuild's prediction, one line each
    (the build reports them: the dry run and the Triton repository were derived from the prediction)."""
    out = []
    for key in [*predicted, *(k for k in recorded if k not in predicted)]:
        name = prefix + key
        if key not in recorded:
            out.append(f"TensorRT-LLM recorded no build_config.{name} (trtbuild predicted {predicted[key]!r})")
        elif key not in predicted:
            out.append(f"TensorRT-LLM recorded build_config.{name} = {recorded[key]!r}, which trtbuild does not predict")
        elif isinstance(predicted[key], dict) and isinstance(recorded[key], dict):
            out += diff_build_config(predicted[key], recorded[key], name + ".")
        elif predicted[key] != recorded[key]:
            out.append(f"TensorRT-LLM recorded build_config.{name} = {recorded[key]!r} "
                       f"(trtbuild predicted {predicted[key]!r})")
    return out


def trtllm_build_command(spec: ResolvedSpec, checkpoint_dir: Path, engine_dir: Path) -> list[str]:
    """The equivalent `trtllm-build` invocation (TensorRT-LLM 1.2 flags only)."""
    cmd = ["trtllm-build", "--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(engine_dir),
           "--max_batch_size", str(spec.max_batch_size), "--max_input_len", str(spec.max_input_len),
           "--max_seq_len", str(spec.max_seq_len), "--max_num_tokens", str(spec.max_num_tokens),
           "--max_beam_width", "1", "--gemm_plugin", spec.dtype, "--gpt_attention_plugin", "auto",
           "--remove_input_padding", "enable", "--context_fmha", "enable", "--kv_cache_type", "paged",
           "--use_paged_context_fmha", "enable", "--tokens_per_block", str(TOKENS_PER_BLOCK)]
    if spec.speculative_decoding_mode:
        cmd += ["--speculative_decoding_mode", spec.speculative_decoding_mode, "--max_draft_len", str(spec.max_draft_len)]
    if spec.gather_context_logits:
        cmd += ["--gather_context_logits"]
    if spec.world_size > 1:
        cmd += ["--workers", str(spec.world_size)]
    # A quantized checkpoint needs no extra flag: trtllm-build reads quant_algo and kv_cache_quant_algo
    # from its config.json (the KV dtype comes from kv_cache_quant_algo alone: PretrainedConfig.kv_dtype,
    # NVIDIA/TensorRT-LLM@01ea6d79:tensorrt_llm/models/modeling_utils.py); build() adds the groupwise
    # plugin for AWQ itself (plugin_config above). --gemm_plugin stays the model dtype, as upstream's FP8
    # Medusa recipe (examples/medusa/README.md "--gemm_plugin float16"): it covers the unquantized GEMMs
    # (lm_head, unquantized heads); FP8 linears take TensorRT's Q/DQ path unless --gemm_plugin fp8
    # (tensorrt_llm/quantization/layers.py FP8Linear.forward).
    return cmd


def convert_command(spec: ResolvedSpec, checkpoint_dir: Path) -> list[str]:
    """The `trtbuild convert` invocation that writes the checkpoint trtllm-build reads (`--quantize`:
    calibrated and exported with ModelOpt)."""
    cmd = ["trtbuild", "convert", spec.model, "-o", str(checkpoint_dir), "--dtype", spec.dtype,
           "--tp", str(spec.tp), "--pp", str(spec.pp)]
    if spec.quantization != "none":
        cmd += ["--quantize", spec.quantization]
    if spec.kv_cache:
        cmd += ["--kv-cache", spec.kv_cache]
    if spec.group_size:
        cmd += ["--group-size", str(spec.group_size)]
    if spec.calib_size:
        cmd += (["--calib-prompts", spec.calib_prompts] if spec.calib_prompts else []) + ["--calib-size",
                                                                                            str(spec.calib_size)]
    if spec.quantize_medusa_heads:
        cmd += ["--quantize-medusa-heads"]
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


def checkpoint_config(spec: ResolvedSpec, dims) -> dict:
    """The checkpoint config.json `trtbuild convert` writes for `spec` (the engine's pretrained_config),
    computed without converting a tensor: the same steps as `trtbuild.convert.convert`."""
    from trtbuild.convert import family_for
    from trtbuild.convert.hf import read_hf_dir
    from trtbuild.common.layout import Mapping

    hf = read_hf_dir(Path(spec.model))
    config = family_for(hf.config).trt_config(hf.config, dims, spec.dtype, Mapping(spec.tp, spec.pp))
    if spec.medusa:
        from trtbuild.convert.medusa_heads import medusa_config, read_heads

        config, _ = medusa_config(config, read_heads(Path(spec.medusa)), spec.medusa_choices, spec.max_draft_len)
    la = spec.lookahead_spec
    if la is not None:
        config = {**config, "lookahead_config": la.to_dict(), "max_draft_len": la.max_draft_len}
    if spec.quantization != "none" or spec.kv_cache:
        from trtbuild.quantize.driver import quant_config_json

        config = quant_config_json(config, spec)
    return config


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
        from trtbuild.common.errors import ConfigError

        try:  # the driver the engine was built under (the Kubernetes init check compares nodes to it)
            info["driver"] = query_node_gpus()[0].driver
        except (ConfigError, IndexError):
            pass
    return info
