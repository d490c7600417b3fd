"""Target GPUs: memory, compute capability and what each can run (one table)."""

from __future__ import annotations

from dataclasses import dataclass

from trtbuild.common.errors import ConfigError

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


# What a node reports about its GPUs (nvidia-smi), for the lock file and the Kubernetes init check.
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"]


@dataclass(frozen=True)
class NodeGpu:
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    driver: str  # e.g. "580.95.05"
    compute_capability: str  # e.g. "9.0"

    @property
    def product_label(self) -> str:
        """The nvidia.com/gpu.product label GPU feature discovery derives from the name."""
        return product_label(self.name)


def product_label(name: str) -> str:
    return "-".join(name.split())


def parse_nvidia_smi(text: str) -> list[NodeGpu]:
    """Rows of `nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader`."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
            raise ConfigError(f"unexpected nvidia-smi output line: {line.strip()!r}")
        gpus.append(NodeGpu(*parts))
    return gpus


def query_node_gpus() -> list[NodeGpu]:
    """This node's GPUs as nvidia-smi reports them; ConfigError when there is no NVIDIA driver."""
    import shutil
    import subprocess

    if shutil.which(NVIDIA_SMI_QUERY[0]) is None:
        raise ConfigError("nvidia-smi not found: no NVIDIA driver is visible here (is this a GPU node, and "
                          "does the pod request nvidia.com/gpu?)")
    try:
        out = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"nvidia-smi failed: {e}") from None
    if out.returncode != 0:
        raise ConfigError(f"nvidia-smi failed (exit {out.returncode}): {' '.join((out.stderr or out.stdout).split())}")
    return parse_nvidia_smi(out.stdout)


def driver_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise ConfigError(f"not a driver version: {version!r}") from None


# The oldest Linux driver each CUDA major runs on (CUDA minor-version compatibility; data-center
# GPUs may run older branches through the forward-compatibility package, which we do not assume).
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
