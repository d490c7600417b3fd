"""Resolve a BuildSpec against the model and check every rule before any GPU time is spent.

Each rule fails with one ConfigError naming the setting, the value and the limit. The memory plan
is checked last (`build` refuses a spec that cannot fit, with the numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from trtbuild.builder.gpus import Gpu, gpu as gpu_for
from trtbuild.builder.plan import Plan, plan
from trtbuild.convert import family_for, resolve_dtype
from trtbuild.convert.hf import read_hf_dir
from trtbuild.common.layout import Dims, Mapping, validate_dims
from trtbuild.common.rope_scaling import hf_rope_scaling, max_sequence_length
from trtbuild.common.errors import ConfigError
from trtbuild.runtime.tokenizer import default_end_ids
from trtbuild.common.quant import AWQ_VOCAB_MULTIPLE, DEFAULT_GROUP_SIZE, RECIPES, QuantConfig
from trtbuild.common.spec import BACKENDS, KV_CACHE_DTYPES, QUANTIZATIONS, BuildSpec, ResolvedSpec

DEFAULT_MAX_SEQ_LEN = 4096  # never a model's full context (Llama-3.1: 131072) by accident
DEFAULT_MAX_NUM_TOKENS = 8192  # trtllm-build's default
DEFAULT_CALIB_SIZE = 32  # calibration sequences (of 256 tokens) when the spec gives none
GROUP_SIZES = (128, 64, 32)  # AWQ group sizes tried, largest first, when the spec gives none
DEFAULT_SPECULATION = "auto"  # the governor decides (issue 16); a plain build, with nothing to draft, keeps it too


@dataclass(frozen=True)
class Resolved:
    spec: ResolvedSpec
    dims: Dims  # Medusa heads included
    gpu: Gpu | None
    plan: Plan
    notes: tuple[str, ...]  # what was derived or adjusted, for the user


def resolve_spec(spec: BuildSpec) -> Resolved:
    notes: list[str] = []
    if not spec.model:
        raise ConfigError("no model given: pass HF_DIR (or `model:` in the spec file)")
    if spec.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {spec.backend!r} (choose from {', '.join(BACKENDS)})")
    hf = read_hf_dir(Path(spec.model))
    family = family_for(hf.config)
    dims = family.dims(hf.config)

    target = spec.gpu or ("cpu" if spec.backend == "torch" else "h100-80gb")
    device = gpu_for(target)
    if spec.backend == "tensorrt-llm" and device is None:
        raise ConfigError("the tensorrt-llm backend builds GPU engines: choose a --gpu (e.g. h100-80gb), not cpu")
    for name in ("tp", "pp", "max_batch_size", "gpus"):
        if getattr(spec, name) is not None and getattr(spec, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(spec, name)}")
    world = spec.tp * spec.pp
    gpus = spec.gpus if spec.gpus is not None else world
    # the same rule on cpu: there `gpus` is the world size one replica may use (ranks, not devices)
    if world > gpus:
        if device is None:
            raise ConfigError(f"tp={spec.tp} x pp={spec.pp} needs a world of {world} ranks, but --gpus gives {gpus} "
                              "(on cpu, gpus is the world size)")
        raise ConfigError(f"tp={spec.tp} x pp={spec.pp} needs {world} GPUs, but the target has {gpus} (--gpus)")
    validate_dims(dims, Mapping(spec.tp, spec.pp))

    dtype = resolve_dtype(spec.dtype, hf.config)
    if device is not None and dtype == "bfloat16" and not device.bf16:
        raise ConfigError(f"bfloat16 needs compute capability >= 8.0; {device.sku} is "
                          f"{'.'.join(map(str, device.compute_capability))} (use --dtype float16)")
    if spec.medusa and spec.lookahead:
        raise ConfigError("--medusa and --lookahead are exclusive: an engine has one speculative decoding mode")
    speculative = bool(spec.medusa or spec.lookahead)
    if speculative and device is not None and not device.speculative:
        raise ConfigError(f"Medusa and lookahead decoding need compute capability >= 8.0; {device.sku} is "
                          f"{'.'.join(map(str, device.compute_capability))}")
    if spec.medusa_choices is not None and not spec.medusa:
        raise ConfigError("--medusa-choices needs --medusa HEADS")
    if spec.max_draft_len is not None and not speculative:
        raise ConfigError("--max-draft-len needs --medusa or --lookahead")

    mode, draft, choices, nodes = None, 0, None, 0
    heads_k = layers_k = 0
    lookahead = None
    if spec.medusa:
        from trtbuild.convert.medusa_heads import medusa_config, read_heads
        from trtbuild.common.medusa.choices import to_brace

        heads = read_heads(Path(spec.medusa))
        heads.check_base(dims.hidden_size, dims.vocab_size)
        heads_k, layers_k = heads.num_heads, heads.num_layers
        dims = replace(dims, medusa_heads=heads_k, medusa_layers=layers_k)
        cfg, _ = medusa_config({"vocab_size": dims.vocab_size}, heads, spec.medusa_choices, spec.max_draft_len)
        tree = tuple(tuple(p) for p in cfg["medusa_choices"])
        mode, draft, choices, nodes = "medusa", cfg["max_draft_len"], to_brace(tree), len(tree)
        validate_dims(dims, Mapping(spec.tp, spec.pp))
    elif spec.lookahead:
        from trtbuild.common.lookahead.spec import format_spec, parse_engine_lookahead

        la = parse_engine_lookahead(spec.lookahead)  # no max_draft_len 0, W, N, G all positive
        if spec.max_draft_len is not None and spec.max_draft_len != la.max_draft_len:
            raise ConfigError(f"lookahead {format_spec(la)} needs max_draft_len {la.max_draft_len} "
                              f"((N-2) + (W-1+G)(N-1)), got {spec.max_draft_len}")
        mode, draft, lookahead = "lookahead_decoding", la.max_draft_len, "{},{},{}".format(*la.as_tuple())

    quant, group = check_quantization(spec, dims, Mapping(spec.tp, spec.pp), device, dtype, mode, notes)
    calib_size = None
    if quant is not None:
        calib_size = spec.calib_size if spec.calib_size is not None else DEFAULT_CALIB_SIZE
        if calib_size < 1:
            raise ConfigError(f"calib_size must be >= 1, got {calib_size}")

    # rope scaling in either HF form (transformers >= 5: rope_parameters; before: rope_scaling)
    limit = max_sequence_length(int(hf.config.get("max_position_embeddings") or 2048), hf_rope_scaling(hf.config))
    max_seq_len = spec.max_seq_len
    if max_seq_len is None:
        max_seq_len = min(limit, DEFAULT_MAX_SEQ_LEN)
        notes.append(f"max_seq_len {max_seq_len} (default: the model's {limit} capped at {DEFAULT_MAX_SEQ_LEN})")
    if max_seq_len < 2:
        raise ConfigError(f"max_seq_len must be >= 2, got {max_seq_len}")
    if max_seq_len > limit:
        raise ConfigError(f"max_seq_len {max_seq_len} exceeds the model's {limit} positions")
    max_input_len = spec.max_input_len if spec.max_input_len is not None else min(1024, max_seq_len - 1)
    if max_input_len < 1:
        raise ConfigError(f"max_input_len must be >= 1, got {max_input_len}")
    if max_input_len >= max_seq_len:
        raise ConfigError(f"max_input_len {max_input_len} must be < max_seq_len {max_seq_len} "
                          "(a request needs room for at least one output token)")
    max_num_tokens = spec.max_num_tokens if spec.max_num_tokens is not None else DEFAULT_MAX_NUM_TOKENS
    if max_num_tokens < 1:
        raise ConfigError(f"max_num_tokens must be >= 1, got {max_num_tokens}")
    if draft and max_num_tokens < spec.max_batch_size * (draft + 1):
        notes.append(f"max_num_tokens raised from {max_num_tokens} to max_batch_size x (max_draft_len + 1) = "
                     f"{spec.max_batch_size * (draft + 1)}, as TensorRT-LLM does")
        max_num_tokens = spec.max_batch_size * (draft + 1)
    if spec.gather_context_logits and draft:
        raise ConfigError(f"gather_context_logits cannot be combined with a draft length "
                          f"(max_draft_len {draft}): TensorRT-LLM refuses it")
    if not 0 < spec.kv_cache_free_gpu_mem_fraction <= 1:
        raise ConfigError(f"kv_cache_free_gpu_mem_fraction must be in (0, 1], got {spec.kv_cache_free_gpu_mem_fraction}")

    end_ids = spec.end_ids if spec.end_ids is not None else default_end_ids(Path(spec.model))
    if not end_ids:
        raise ConfigError(f"{spec.model}: no eos_token_id in generation_config.json (give end_ids in the spec)")
    bad = [i for i in end_ids if not 0 <= int(i) < dims.vocab_size]
    if bad:
        raise ConfigError(f"end id {bad[0]} is outside the vocabulary [0, {dims.vocab_size})")

    resolved = ResolvedSpec(
        model=str(Path(spec.model).resolve()), backend=spec.backend, gpu=target, gpus=gpus, tp=spec.tp, pp=spec.pp,
        dtype=dtype, quantization=spec.quantization, kv_cache=spec.kv_cache, group_size=group,
        calib_prompts=str(Path(spec.calib_prompts).resolve()) if spec.calib_prompts else None, calib_size=calib_size,
        quantize_medusa_heads=spec.quantize_medusa_heads, max_batch_size=spec.max_batch_size,
        max_input_len=max_input_len, max_seq_len=max_seq_len, max_num_tokens=max_num_tokens, max_draft_len=draft,
        medusa=str(Path(spec.medusa).resolve()) if spec.medusa else None, medusa_choices=choices, lookahead=lookahead,
        gather_context_logits=spec.gather_context_logits,
        kv_cache_free_gpu_mem_fraction=spec.kv_cache_free_gpu_mem_fraction, end_ids=tuple(int(i) for i in end_ids),
        speculation=spec.speculation or DEFAULT_SPECULATION,
        architecture=family.name if not heads_k else "MedusaForCausalLM", speculative_decoding_mode=mode,
        world_size=world, medusa_heads=heads_k, medusa_layers=layers_k, medusa_nodes=nodes,
        vocab_size=dims.vocab_size)
    p = plan(dims, device, tp=spec.tp, pp=spec.pp, dtype=dtype if device else "float32",
             max_batch_size=spec.max_batch_size, max_seq_len=max_seq_len, max_num_tokens=max_num_tokens,
             max_draft_len=draft, kv_fraction=spec.kv_cache_free_gpu_mem_fraction, quant=quant)
    if not p.fits:
        hint = f"; try --tp {p.recommended['tp']}" if "tp" in p.recommended else ""
        raise ConfigError(f"does not fit: {p.summary()}{hint}")
    if not p.full_batch_fits:
        notes.append(f"the KV cache holds {p.max_kv_tokens} tokens: {p.recommended.get('max_batch_size')} full-length "
                     f"sequences at once, not max_batch_size {spec.max_batch_size} (in-flight batching still runs)")
    return Resolved(resolved, dims, device, p, tuple(notes))



def awq_input_dims(dims: Dims, mapping: Mapping) -> dict[str, int]:
    """The input features of every linear layer on one tp rank (what an AWQ group splits)."""
    t = mapping.tp_size
    out = {"hidden_size": dims.hidden_size,
           f"num_attention_heads x head_size / tp ({dims.num_heads}x{dims.head_size}/{t})": dims.num_heads * dims.head_size // t,
           f"intermediate_size / tp ({dims.intermediate_size}/{t})": dims.intermediate_size // t}
    return out


def check_quantization(spec: BuildSpec, dims: Dims, mapping: Mapping, device: Gpu | None, dtype: str,
                       mode: str | None, notes: list[str]) -> tuple[QuantConfig | None, int | None]:
    """The checkpoint's quantization block for the spec and the AWQ group size, or a ConfigError:
    every rule here runs before any calibration starts. (None, None): nothing is quantized."""
    recipe = None if spec.quantization == "none" else spec.quantization
    if spec.quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantization {spec.quantization!r} (choose from {', '.join(QUANTIZATIONS)})")
    if spec.kv_cache is not None and spec.kv_cache not in KV_CACHE_DTYPES:
        raise ConfigError(f"unknown kv_cache {spec.kv_cache!r} (choose from {', '.join(KV_CACHE_DTYPES)})")
    if recipe is None and spec.kv_cache is None:
        for key in ("group_size", "calib_prompts", "calib_size"):
            if getattr(spec, key) is not None:
                raise ConfigError(f"{key.replace('_', '-')} needs --quantize (or --kv-cache fp8)")
        if spec.quantize_medusa_heads:
            raise ConfigError("--quantize-medusa-heads needs --quantize")
        return None, None
    r = RECIPES.get(recipe) if recipe else None
    if spec.quantize_medusa_heads and mode != "medusa":
        raise ConfigError("--quantize-medusa-heads needs --medusa HEADS")
    if spec.quantize_medusa_heads and r is None:
        raise ConfigError("--quantize-medusa-heads needs a weight recipe (--quantize)")
    if dtype not in ("float16", "bfloat16"):
        raise ConfigError(f"a quantized checkpoint keeps its unquantized tensors in float16 or bfloat16, not {dtype} "
                          "(use --dtype float16 or bfloat16)")
    fp8 = [what for what, needs in ((f"--quantize {recipe}", r is not None and r.fp8_hardware),
                                    ("--kv-cache fp8", spec.kv_cache == "fp8")) if needs]
    if fp8 and device is not None and not device.fp8:
        cc = ".".join(map(str, device.compute_capability))
        raise ConfigError(f"{' and '.join(fp8)} need{'s' if len(fp8) == 1 else ''} FP8 tensor cores (compute capability >= 8.9: H100, H200, "
                          f"L40S); {device.sku} is {cc}: use --quantize int4_awq or int8_sq without --kv-cache fp8")
    if recipe == "w4a8_awq" and dtype == "bfloat16":
        # the W4A8 groupwise GEMM refuses bf16: TLLM_THROW("FP8 is unsupported on with BF16 scales and
        # zero-points!") (NVIDIA/TensorRT-LLM cpp/tensorrt_llm/plugins/weightOnlyGroupwiseQuantMatmulPlugin/
        # weightOnlyGroupwiseQuantMatmulPlugin.cpp init()); the reference runtime keeps the same rule
        raise ConfigError("w4a8_awq needs --dtype float16: TensorRT-LLM's W4A8 kernels refuse bfloat16 scales")
    if spec.backend == "tensorrt-llm" and spec.kv_cache == "fp8" and r is not None and r.activations != "fp8":
        # build() turns FP8 context FMHA off without FP8/W4A8 quantization and then paged context FMHA with
        # an FP8 KV cache ("FP8 Paged Context FMHA is disabled because FP8 context FMHA is disabled.":
        # NVIDIA/TensorRT-LLM@008b2b8d:tensorrt_llm/builder.py build()); the repository's chunked context needs it
        raise ConfigError(f"--quantize {recipe} with --kv-cache fp8: TensorRT-LLM then disables paged context "
                          "FMHA, which chunked context needs; use fp8 or w4a8_awq for an FP8 KV cache, or drop "
                          "--kv-cache")
    if spec.calib_prompts is not None and not Path(spec.calib_prompts).is_file():
        raise ConfigError(f"calibration prompts not found: {spec.calib_prompts}")
    group = None
    if r is not None and r.grouped:
        inputs = awq_input_dims(dims, mapping)
        if dims.vocab_size % AWQ_VOCAB_MULTIPLE:
            # nvidia-modelopt==0.37.0:modelopt/torch/export/model_config_export.py:375-384 pads the
            # vocabulary and writes the padded vocab_size, so the padded rows would be sampled
            raise ConfigError(f"{recipe} needs vocab_size divisible by {AWQ_VOCAB_MULTIPLE} (ModelOpt pads it "
                              f"otherwise); vocab_size is {dims.vocab_size}")
        if spec.group_size is None:
            fitting = [g for g in GROUP_SIZES if all(v % g == 0 for v in inputs.values())]
            if not fitting:
                raise ConfigError(f"no AWQ group size of {', '.join(map(str, GROUP_SIZES))} divides "
                                  f"{', '.join(f'{k} = {v}' for k, v in inputs.items())}: give --group-size")
            group = fitting[0]
            if group != DEFAULT_GROUP_SIZE:
                notes.append(f"AWQ group size {group} (ModelOpt's default {DEFAULT_GROUP_SIZE} does not divide "
                             f"the input features: {', '.join(f'{k} = {v}' for k, v in inputs.items())})")
        else:
            group = spec.group_size
            if group < 1:
                raise ConfigError(f"group_size must be >= 1, got {group}")
            bad = {k: v for k, v in inputs.items() if v % group}
            if bad:
                fitting = [g for g in GROUP_SIZES if all(v % g == 0 for v in inputs.values())]
                hint = f": try --group-size {fitting[0]}" if fitting else ""
                k, v = next(iter(bad.items()))
                raise ConfigError(f"--group-size {group} does not divide {k} = {v} (AWQ groups the input "
                                  f"features of every linear layer){hint}")
    elif spec.group_size is not None:
        raise ConfigError(f"--group-size applies to int4_awq and w4a8_awq, not {recipe or '--kv-cache fp8 alone'}")
    if mode == "medusa" and r is not None and r.name != "fp8":
        # not refused upstream, only unlisted (examples/medusa/README.md support matrix: "FP8 (base model)")
        notes.append(f"TensorRT-LLM's Medusa support matrix lists an FP8 base only; {recipe} with Medusa is "
                     "built but not in upstream's tested set")
    from trtbuild.quantize.driver import QuantizeSpec, quant_block

    q = quant_block(QuantizeSpec(recipe, spec.kv_cache, group or DEFAULT_GROUP_SIZE,
                                 quantize_medusa_heads=spec.quantize_medusa_heads), mode == "medusa")
    return q, group
