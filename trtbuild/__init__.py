"""trtbuild: a deployment compiler for LLMs with speculative decoding.

HF checkpoint (+ Medusa heads | lookahead settings) -> TensorRT-LLM checkpoint -> engine ->
Triton model repository, from one spec. Heavy dependencies (torch, transformers) are imported
lazily by the modules that need them, so `import trtbuild` and `trtbuild --help` stay fast.
"""

__version__ = "0.1.0"
