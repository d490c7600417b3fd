"""Target GPUs: memory, compute capability and what each can run (one table)."""

from __future__ import annotations

from dataclasses import dataclass

from trtbuild.errors import ConfigError

GiB = 1 << 30


@dataclass(frozen=True)
class Gpu:
    sku: str  # the --gpu value
    product: str  # nvidia.com/gpu.product label as GPU feature discovery writes it
    memory_bytes: int
    compute_capability: tuple[int, int]

    @property
    def fp8(self) -> bool:
        return self.compute_capability >= (8, 9)

    @property
    def bf16(self) -> bool:
        return self.compute_capability >= (8, 0)

    @property
    def speculative(self) -> bool:
        """TensorRT-LLM's Medusa and lookahead need compute capability >= 8.0."""
        return self.compute_capability >= (8, 0)


GPUS: dict[str, Gpu] = {g.sku: g for g in (
    Gpu("a100-40gb", "NVIDIA-A100-SXM4-40GB", 40 * GiB, (8, 0)),
    Gpu("a100-80gb", "NVIDIA-A100-SXM4-80GB", 80 * GiB, (8, 0)),
    Gpu("h100-80gb", "NVIDIA-H100-80GB-HBM3", 80 * GiB, (9, 0)),
    Gpu("h200-141gb", "NVIDIA-H200", 141 * GiB, (9, 0)),
    Gpu("l40s-48gb", "NVIDIA-L40S", 48 * GiB, (8, 9)),
    Gpu("t4-16gb", "Tesla-T4", 16 * GiB, (7, 5)),
    Gpu("v100-32gb", "Tesla-V100-SXM2-32GB", 32 * GiB, (7, 0)),
)}
TARGETS = (*GPUS, "cpu")


def gpu(sku: str) -> Gpu | None:
    """The GPU for a --gpu value; None for cpu."""
    if sku == "cpu":
        return None
    if sku not in GPUS:
        raise ConfigError(f"unknown GPU {sku!r} (choose from {', '.join(TARGETS)})")
    return GPUS[sku]
