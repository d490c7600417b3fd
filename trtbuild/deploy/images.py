"""The container images trtbuild deploys with: one place for their tags.

docker/Dockerfile.trtllm and docker/Dockerfile.cpu repeat these as their `ARG ..._IMAGE` defaults
(a Dockerfile cannot import Python) and the README's version matrix quotes them; tests hold all
three equal to the values here.
"""

from __future__ import annotations

from trtbuild import __version__
from trtbuild.builder.engine import TRTLLM_PIN

# Triton's TRT-LLM container of the pinned TensorRT-LLM line (1.2.x: the last with the engine flow
# that has Medusa and lookahead). Dockerfile.trtllm refuses a base whose tensorrt_llm is another line.
# Per Triton's release compatibility matrix (server docs/introduction/compatibility.md, r26.07):
# 26.04-26.07 ship TensorRT-LLM 1.2.1 / TensorRT 10.14.1.48 / CUDA 13.1.0 / Python 3.12; 26.07 is the newest.
TRITON_TRTLLM_TAG = "26.07"
TRITON_TRTLLM_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_TRTLLM_TAG}-trtllm-python-py3"
TRTLLM_VERSION = "1.2.1"  # what that container ships
TENSORRT_VERSION = "10.14.1.48"
CUDA_VERSION = "13.1"
assert TRTLLM_VERSION.startswith(TRTLLM_PIN + ".")

# The CPU image: a slim Python whose minor version nvidia-pytriton has a Python-backend stub for.
PYTHON_IMAGE = "python:3.12.8-slim-bookworm"

# The images `docker build` makes from docker/ (README: "Containers"); `trtbuild k8s --image` overrides.
TRTLLM_IMAGE = f"trtbuild-trtllm:{__version__}"
CPU_IMAGE = f"trtbuild-cpu:{__version__}"

# The image of the init container that copies a build from S3 (--model-store s3://...).
AWS_CLI_IMAGE = "amazon/aws-cli:2.22.35"

# The user both images run as (and the pod's securityContext).
UID = 10001
