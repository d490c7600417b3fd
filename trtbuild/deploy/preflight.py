"""`trtbuild preflight BUILD [--repo-out DIR]`: what a pod runs before it serves a build (the
Kubernetes init container).

1. The node. For a GPU build: at least tp x pp GPUs visible, each of the engine's model (the lock
   file's detected name, else its nvidia.com/gpu.product) and compute capability, with a driver no
   older than the engine's CUDA major needs; for a tensorrt-llm build, the TensorRT-LLM (and
   TensorRT) installed in this image is the version the engine was built with. TensorRT engines run
   only where they were built: any mismatch is refused with one line, before the server starts.
2. The repository. A tensorrt-llm build's triton_repo names the engine by its absolute path at build
   time; --repo-out writes the same repository (write_repo, same streaming switch) for the build where
   it is mounted now.
`check_node` is pure: the node's facts come in as arguments.
"""

from __future__ import annotations

from pathlib import Path

from trtbuild.builder.engine import dist_version
from trtbuild.builder.gpus import MIN_DRIVER, NodeGpu, driver_tuple, product_label
from trtbuild.deploy.build import Build
from trtbuild.common.errors import ConfigError


def check_node(build: Build, gpus: list[NodeGpu], installed: dict[str, str | None]) -> list[str]:
    """What keeps this node from serving `build` (empty: nothing). `installed`: {"tensorrt_llm": v,
    "tensorrt": v} as found in this image."""
    problems: list[str] = []
    locked = build.lock.get("gpu")
    if build.gpu is None or not locked:  # a CPU build (torch backend): nothing of the node to match
        return problems
    ws = build.world_size
    if len(gpus) < ws:
        problems.append(f"the engine needs {ws} GPUs (tp x pp); this pod sees {len(gpus)}")
    want_cc = locked.get("compute_capability")
    want_name = locked.get("name") if locked.get("detected") else None
    want_product = locked.get("product")
    for i, g in enumerate(gpus[:max(ws, 1)]):
        if want_cc and g.compute_capability != want_cc:
            problems.append(f"GPU {i} ({g.name}) has compute capability {g.compute_capability}; the engine was built "
                            f"for {want_cc} ({want_name or want_product})")
        elif want_name and g.name != want_name:
            problems.append(f"GPU {i} is {g.name}; the engine was built on {want_name}")
        elif not want_name and want_product and g.product_label != want_product:
            problems.append(f"GPU {i} is {g.product_label}; the engine was built for {want_product}")
    cuda = (build.lock.get("versions") or {}).get("cuda")
    if cuda and gpus:
        major = int(str(cuda).split(".")[0])
        need = MIN_DRIVER.get(major)
        low = sorted({g.driver for g in gpus if need and driver_tuple(g.driver) < driver_tuple(need)})
        if low:
            problems.append(f"driver {', '.join(low)} is older than CUDA {cuda} (the engine's) needs: >= {need}")
    if build.backend == "tensorrt-llm":
        for dist in ("tensorrt_llm", "tensorrt"):
            want = (build.lock.get("versions") or {}).get(dist)
            have = installed.get(dist)
            if want and have != want:
                problems.append(f"this image has {dist} {have or '(not installed)'}; the engine was built with "
                                f"{want} (rebuild the engine in this image, or serve it from the image it was "
                                f"built in)")
    return problems


def describe(gpus: list[NodeGpu]) -> str:
    if not gpus:
        return "no GPUs"
    names = sorted({f"{g.name} (cc {g.compute_capability}, driver {g.driver})" for g in gpus})
    return f"{len(gpus)} x " + ", ".join(names)


def node_facts(build: Build) -> tuple[list[NodeGpu], dict[str, str | None]]:
    """This node's GPUs (only asked for GPU builds) and the TensorRT-LLM/TensorRT of this image."""
    from trtbuild.builder.gpus import query_node_gpus

    gpus = query_node_gpus() if build.gpu is not None and build.lock.get("gpu") else []
    return gpus, {d: dist_version(d) for d in ("tensorrt_llm", "tensorrt")}


def preflight(build: Build, repo_out: Path | None) -> list[str]:
    """Check the node, then write the repository; returns what to print. ConfigError on a mismatch."""
    gpus, installed = node_facts(build)
    problems = check_node(build, gpus, installed)
    if problems:
        raise ConfigError(f"this node cannot serve {build.path}: " + "; ".join(problems))
    lines = [f"node: {describe(gpus)}; matches the engine"
             + (f" (TensorRT-LLM {installed['tensorrt_llm']})" if build.backend == "tensorrt-llm" else "")]
    if repo_out is not None:
        from trtbuild.serve import relocated_repo

        relocated_repo(build.path, Path(repo_out), force=True)
        lines.append(f"wrote {repo_out} (engine {build.path / 'engine'})")
    return lines


