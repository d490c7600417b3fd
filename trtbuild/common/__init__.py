"""The ground layer: what every other package shares and nothing of trtbuild's own below it.

Owns the specs (`spec`: BuildSpec, ResolvedSpec), the error hierarchy (`errors`), output
directories (`fsutil`), prompt corpora (`corpus`), the TensorRT-LLM checkpoint layout and rope
tables (`layout`, `rope_scaling`), and the pure combinatorics of speculative decoding: Medusa
trees (`medusa`: choices, presets, tree buffers) and lookahead (`lookahead`: (W, N, G), the n-gram
pool, the step layout).

May import: the standard library, torch, yaml, safetensors, and other `trtbuild.common` modules;
never another trtbuild package (tests/test_layering.py).
"""
