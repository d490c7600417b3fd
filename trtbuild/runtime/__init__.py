"""The reference runtime: a compact PyTorch implementation that runs TensorRT-LLM checkpoints.

It proves conversions right (parity with transformers) and is the `torch` backend that serves on
any machine. Public entry points: `Model.load(ckpt_dir)`, `generate(model, requests)`.
"""

from trtbuild.runtime.generate import Request, Result, generate
from trtbuild.runtime.model import Model
from trtbuild.runtime.sampling import SamplingParams

__all__ = ["Model", "Request", "Result", "SamplingParams", "generate"]
