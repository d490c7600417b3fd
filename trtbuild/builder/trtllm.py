"""The tensorrt-llm backend: rank{r}.engine through TensorRT-LLM's Python build API (1.2 line).

`tensorrt_llm` is imported only here, only when this backend builds. Not executed on the machines
this project is developed on (no GPU, TensorRT-LLM not installable); `--dry-run` gives the
equivalent `trtllm-build` command for the matching Triton TRT-LLM container instead.
"""

from __future__ import annotations

from pathlib import Path

from trtbuild.builder.engine import TRTLLM_PIN, build_inputs
from trtbuild.common.errors import BuildError
from trtbuild.common.spec import ResolvedSpec


def check_available() -> str:
    """The installed TensorRT-LLM version, or a BuildError saying what is missing (before any work)."""
    try:
        import tensorrt_llm
    except ImportError as e:
        raise BuildError(f"the tensorrt-llm backend needs TensorRT-LLM {TRTLLM_PIN}.x, which is not importable here "
                         f"({e}); run inside the matching Triton TRT-LLM container, or use --dry-run for the "
                         "trtllm-build command") from None
    version = str(tensorrt_llm.__version__)
    if not version.startswith(TRTLLM_PIN + "."):
        raise BuildError(f"TensorRT-LLM {version} is installed; trtbuild builds engines with the {TRTLLM_PIN}.x line "
                         "(the last with the engine flow that has Medusa and lookahead)")
    return version


def build_engines(spec: ResolvedSpec, checkpoint_dir: Path, engine_dir: Path) -> str:
    """Build every rank's engine into `engine_dir`; returns the TensorRT-LLM version used."""
    version = check_available()
    from tensorrt_llm.builder import BuildConfig, build
    from tensorrt_llm.models import MODEL_MAP

    cfg = build_inputs(spec)  # what trtllm-build passes; the builder derives the rest (engine.build_config)
    for rank in range(spec.world_size):
        model = MODEL_MAP[spec.architecture].from_checkpoint(str(checkpoint_dir), rank=rank)
        engine = build(model, BuildConfig.from_dict(dict(cfg)))
        engine.save(str(engine_dir))
    return version
