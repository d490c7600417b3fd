"""Quantized TensorRT-LLM checkpoints through NVIDIA ModelOpt (`build --quantize`).

`quantize(hf_dir, out_dir, QuantizeSpec(...), ...)` calibrates and exports with ModelOpt in its own
environment (worker.py, a standalone script run by that environment's python: see
`modelopt_python`), checks every tensor of the export against `common.quant.quant_rank_layout`,
writes config.json itself (trtbuild's own config plus ModelOpt's `quantization` block) and
publishes the checkpoint atomically, with a manifest recording the recipe, the calibration data's
digest and ModelOpt's version. Nothing here imports ModelOpt.

May import: trtbuild.common, trtbuild.convert.
"""

from trtbuild.quantize.driver import QuantizeSpec, modelopt_python, quantize

__all__ = ["QuantizeSpec", "modelopt_python", "quantize"]
