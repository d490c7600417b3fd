"""The reference runtime: a compact PyTorch implementation that runs TensorRT-LLM checkpoints.

It proves conversions right (parity with transformers) and is the `torch` backend that serves on
any machine. Owns: loading checkpoints (`checkpoint`, `model`), token choice (`sampling`), plain
left-padded generation (`generate`, the reference), the decoding core shared by every decoder
(`decoding`: propose -> verify -> accept -> advance) and in-flight batching with offline decoding on
top of it (`scheduler`). Entry points: `Model.load(ckpt_dir)`, `generate(model, requests)`,
`decode(model, requests, decoding)`, `Scheduler`.

May import: trtbuild.common.
"""

from trtbuild.runtime.generate import Request, Result, generate
from trtbuild.runtime.model import Model
from trtbuild.runtime.sampling import SamplingParams
from trtbuild.runtime.scheduler import Scheduler, decode, lookahead_generate, medusa_generate

__all__ = ["Model", "Request", "Result", "SamplingParams", "Scheduler", "decode", "generate", "lookahead_generate",
           "medusa_generate"]
