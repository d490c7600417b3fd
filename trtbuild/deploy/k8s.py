"""`trtbuild k8s BUILD -o DIR`: Kubernetes manifests derived from a build (its spec, lock file and
Triton repository), never configured separately.

    DIR/deployment.yaml      Deployment: nvidia.com/gpu = tp x pp, node affinity on the engine's
                             nvidia.com/gpu.product, the GPU toleration, /dev/shm (memory emptyDir
                             sized from the Python-backend instances and ranks), a startupProbe on
                             /v2/health/ready sized to the engine's load time and liveness on
                             /v2/health/live, resources, a non-root securityContext, the init check
                             (`trtbuild preflight`), the serving command; the OpenAI-compatible API
                             on the port `openai` (9000) with readiness on its /health (200 only
                             once Triton is ready): `trtbuild serve --openai-port 9000` in the main
                             container when tp x pp = 1; when tp x pp > 1 the main container runs
                             the mpirun line (readiness on /v2/health/ready) and a sidecar
                             `openai` container, same image, runs `trtbuild openai` against its
                             gRPC port on loopback
    DIR/service.yaml         Service: http 8000, grpc 8001, metrics 8002, openai 9000
    DIR/podmonitor.yaml      PodMonitor (Prometheus operator) scraping :8002/metrics
    DIR/prometheusrule.yaml  recording rules: the queue/compute ratio and the waiting requests
    DIR/hpa.yaml             autoscaling/v2 HorizontalPodAutoscaler on the queue/compute ratio (the
                             Deployment then has no replica count; with --replicas N: no HPA)
    DIR/kustomization.yaml   `kubectl apply -k DIR`
    DIR/prometheus-adapter-values.yaml  the adapter rule that serves the ratio to the HPA (Helm values)

Sizing rules (estimates are stated as such):
- /dev/shm: 64 MiB per Python-backend instance (Triton's minimum region) plus its request tensors
  (max_batch_size x max_seq_len x 8 bytes), 512 MiB per rank for NCCL's shared-memory transport when
  tp x pp > 1, 256 MiB base; rounded up to 256 MiB, at least 1 GiB.
- load time (estimate): 60 s + the largest rank's engine at 200 MiB/s; the startupProbe allows twice
  that and never less than 300 s.
- memory: each rank's engine passes through host memory while it loads, plus 4 GiB per rank
  (CUDA context, MPI, Python models), plus /dev/shm (a memory emptyDir counts against the limit).
  The torch backend: twice the checkpoint plus 2 GiB. The OpenAI frontend (tokenizer, FastAPI,
  gRPC client): 512 MiB more in the main container when it runs there; its sidecar requests 1 GiB
  and is limited to 2 GiB.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from trtbuild.builder.gpus import product_label
from trtbuild.deploy import images
from trtbuild.deploy.build import Build
from trtbuild.common.errors import ConfigError
from trtbuild.common.fsutil import MARKER, staging_dir

MiB, GiB = 1 << 20, 1 << 30
MOUNT = "/models/build"  # where the build is mounted in the pod
SRV = "/srv"  # a writable emptyDir: the repository preflight writes for this mount
REPO = f"{SRV}/triton_repo"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's, on the main container
OPENAI = ("openai", 9000)  # the OpenAI-compatible API (Triton's own OpenAI frontend's default port)
FRONTEND_BYTES = 512 * MiB
STARTUP_PERIOD = 10
LOAD_BYTES_PER_S = 200 * MiB
RATIO_RECORD = "triton:queue_compute:ratio"
RATIO_METRIC = "triton_queue_compute_ratio"  # the name prometheus-adapter serves it under
WAITING_RECORD = "trtbuild:waiting_requests"


@dataclass(frozen=True)
class ModelStore:
    kind: str  # "pvc" | "s3"
    claim: str = ""
    sub_path: str = ""
    url: str = ""


@dataclass(frozen=True)
class Hpa:
    min_replicas: int
    max_replicas: int
    target: float  # average queue/compute ratio per pod


@dataclass(frozen=True)
class Options:
    name: str
    image: str
    store: ModelStore
    hpa: Hpa | None  # autoscaled (the HPA owns the replica count) ...
    replicas: int | None = None  # ... or a fixed count
    namespace: str | None = None
    monitor_labels: tuple[tuple[str, str], ...] = ()  # what the Prometheus operator selects monitors by


_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def k8s_name(text: str) -> str:
    """A DNS-1035 label (Service names need one) from a directory name."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:50].rstrip("-")
    if not name:
        raise ConfigError(f"cannot derive a Kubernetes name from {text!r}: pass --name")
    return name


def check_name(name: str, option: str = "--name") -> str:
    if len(name) > 50 or not _DNS_LABEL.match(name):
        raise ConfigError(f"{option} {name!r}: use lowercase letters, digits and '-', starting with a letter, "
                          "at most 50 characters")
    return name


def parse_model_store(text: str) -> ModelStore:
    if text.startswith("pvc:"):
        claim, _, sub = text[4:].partition("/")
        if not re.match(r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", claim):
            raise ConfigError(f"--model-store {text!r}: {claim!r} is not a PersistentVolumeClaim name")
        if ".." in sub.split("/"):
            raise ConfigError(f"--model-store {text!r}: the path inside the claim must not contain '..'")
        return ModelStore("pvc", claim=claim, sub_path=sub.strip("/"))
    if text.startswith("s3://"):
        bucket = text[5:].split("/", 1)[0]
        if not re.match(r"^[a-z0-9][-.a-z0-9]{1,61}[a-z0-9]$", bucket):
            raise ConfigError(f"--model-store {text!r}: {bucket!r} is not an S3 bucket name")
        return ModelStore("s3", url=text.rstrip("/"))
    raise ConfigError(f"--model-store {text!r}: expected pvc:CLAIM[/PATH] or s3://BUCKET/PATH")


def parse_hpa(text: str) -> Hpa:
    parts = text.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi, target = int(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        raise ConfigError(f"--hpa {text!r}: expected MIN,MAX,TARGET (e.g. 1,4,1.0: 1 to 4 replicas, "
                          "queue/compute ratio 1.0 per pod)") from None
    if lo < 1 or hi < lo:
        raise ConfigError(f"--hpa {text!r}: need 1 <= MIN <= MAX")
    if not (0.001 <= target <= 1e6):
        raise ConfigError(f"--hpa {text!r}: TARGET must be a ratio between 0.001 and 1000000")
    return Hpa(lo, hi, target)


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def parse_label(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
        raise ConfigError(f"--monitor-label {text!r}: expected KEY=VALUE, a valid Kubernetes label "
                          "(e.g. release=kube-prometheus-stack)")
    return key, value


def mi(n: int) -> str:
    return f"{math.ceil(n / MiB)}Mi"


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def shm_bytes(build: Build) -> int:
    per_instance = 64 * MiB + build.spec.max_batch_size * build.spec.max_seq_len * 8
    n = 256 * MiB + build.python_instances * per_instance
    if build.world_size > 1:
        n += build.world_size * 512 * MiB
    return max(GiB, _round_up(n, 256 * MiB))


def load_seconds(build: Build) -> int:
    """An estimate of the time from container start to ready (see the module docstring)."""
    return 60 + math.ceil(build.engine_bytes_per_rank / LOAD_BYTES_PER_S)


def startup_failure_threshold(build: Build) -> int:
    return math.ceil(max(300, 2 * load_seconds(build)) / STARTUP_PERIOD)


def memory_bytes(build: Build) -> int:
    if build.backend == "tensorrt-llm":
        n = build.world_size * (build.engine_bytes_per_rank + 4 * GiB)
    else:
        n = 2 * build.engine_bytes_per_rank + 2 * GiB
    if build.world_size == 1:  # the main container runs the OpenAI frontend too
        n += FRONTEND_BYTES
    return _round_up(n + shm_bytes(build), GiB)


NVIDIA_ENTRYPOINT = "/opt/nvidia/nvidia_entrypoint.sh"  # the NGC image's own (CUDA compatibility set-up)


def _in_image(build: Build, cmd: list[str]) -> list[str]:
    """In the Triton TRT-LLM image, behind NVIDIA's entrypoint (a pod's `command` replaces the image's)."""
    return [NVIDIA_ENTRYPOINT, *cmd] if build.backend == "tensorrt-llm" else cmd


def serve_command(build: Build) -> list[str]:
    """The main container's command: the mpirun line when tp x pp > 1, else `trtbuild serve` (given
    the whole startup window to become ready) with the OpenAI API on its port."""
    if build.world_size > 1:
        from trtbuild.serve import mpi_command

        cmd = mpi_command(Path(REPO), build.world_size, "0.0.0.0", PORTS["http"], PORTS["grpc"], PORTS["metrics"])
    else:
        cmd = ["trtbuild", "serve", REPO, "--host", "0.0.0.0", "--http-port", str(PORTS["http"]),
               "--grpc-port", str(PORTS["grpc"]), "--metrics-port", str(PORTS["metrics"]),
               "--start-timeout", str(startup_failure_threshold(build) * STARTUP_PERIOD),
               "--openai-port", str(OPENAI[1])]
    return _in_image(build, cmd)


def openai_command(build: Build) -> list[str]:
    """The sidecar's command when tp x pp > 1: the frontend alone, for the server in the same pod."""
    return _in_image(build, ["trtbuild", "openai", REPO, "--grpc-url", f"127.0.0.1:{PORTS['grpc']}",
                             "--metrics-url", f"127.0.0.1:{PORTS['metrics']}", "--host", "0.0.0.0",
                             "--port", str(OPENAI[1])])


def _label_value(text: str) -> str:
    v = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text))[:63].strip("-_.")
    return v or "none"


def labels(build: Build, opts: Options) -> dict[str, str]:
    """Selector labels first; then what the engine is (GPU, TensorRT-LLM version, spec hash)."""
    return {**selector(opts), "app.kubernetes.io/component": "triton", "app.kubernetes.io/managed-by": "trtbuild",
            "trtbuild.dev/backend": build.backend, "trtbuild.dev/gpu": _label_value(build.spec.gpu),
            "trtbuild.dev/tensorrt-llm": _label_value(build.trtllm_version or "none"),
            "trtbuild.dev/spec-hash": build.lock["spec_hash"][:16]}


def selector(opts: Options) -> dict[str, str]:
    return {"app.kubernetes.io/name": "trtbuild", "app.kubernetes.io/instance": opts.name}


def annotations(build: Build, opts: Options) -> dict[str, str]:
    gpu = build.lock.get("gpu") or {}
    versions = build.lock.get("versions") or {}
    return {"trtbuild.dev/spec-hash": build.lock["spec_hash"], "trtbuild.dev/build-key": build.lock["build_key"],
            "trtbuild.dev/gpu-product": gpu.get("product", "none"),
            "trtbuild.dev/gpu-name": gpu.get("name", gpu.get("product", "none")),
            "trtbuild.dev/compute-capability": gpu.get("compute_capability", "none"),
            "trtbuild.dev/tensorrt-llm-version": versions.get("tensorrt_llm") or "none",
            "trtbuild.dev/tensorrt-version": versions.get("tensorrt") or "none",
            "trtbuild.dev/cuda-version": versions.get("cuda") or "none",
            "trtbuild.dev/trtbuild-version": versions.get("trtbuild") or "none",
            "trtbuild.dev/world-size": str(build.world_size),
            "trtbuild.dev/speculative-decoding": build.spec.speculative_decoding_mode or "none",
            "trtbuild.dev/model-store": opts.store.url or f"pvc:{opts.store.claim}/{opts.store.sub_path}".rstrip("/")}


def _meta(build: Build, opts: Options, name: str | None = None) -> dict:
    meta = {"name": name or opts.name, "labels": labels(build, opts)}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    return meta


def _security(uid: int = images.UID) -> dict:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}


def gpu_products(build: Build) -> list[str]:
    gpu = build.lock.get("gpu") or {}
    products = [gpu["product"]] if gpu.get("product") else []
    if gpu.get("detected") and gpu.get("name") and product_label(gpu["name"]) not in products:
        products.append(product_label(gpu["name"]))
    return products


def deployment(build: Build, opts: Options) -> dict:
    gpus = build.world_size if build.gpu is not None else 0
    shm = shm_bytes(build)
    mem = memory_bytes(build)
    gpu_res = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    store_mount = {"name": "model-store", "mountPath": MOUNT, "readOnly": True}
    base_env = [{"name": "HOME", "value": "/tmp"}, {"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    env = list(base_env)
    if build.world_size > 1:  # OpenMPI's single-copy (CMA) needs ptrace rights a non-root pod does not have
        env.append({"name": "OMPI_MCA_btl_vader_single_copy_mechanism", "value": "none"})
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    # the frontend's /health is 200 only while Triton is ready: the readiness of the container serving it
    openai_port = {"name": OPENAI[0], "containerPort": OPENAI[1], "protocol": "TCP"}
    openai_ready = {"httpGet": {"path": "/health", "port": OPENAI[0]}, "periodSeconds": 5, "timeoutSeconds": 3,
                    "failureThreshold": 3}
    sidecar = build.world_size > 1  # the main container runs mpirun: the frontend runs beside it
    triton = {
        "name": "triton", "image": opts.image, "imagePullPolicy": "IfNotPresent",
        "command": serve_command(build), "env": env,
        "ports": [{"name": k, "containerPort": v, "protocol": "TCP"} for k, v in PORTS.items()]
        + ([] if sidecar else [openai_port]),
        "resources": {"requests": {"cpu": str(2 * max(gpus, 1) + 1), "memory": mi(mem), **gpu_res},
                      "limits": {"memory": mi(mem), **gpu_res}},
        "startupProbe": {**probe, "periodSeconds": STARTUP_PERIOD, "timeoutSeconds": 5,
                         "failureThreshold": startup_failure_threshold(build)},
        "readinessProbe": ({**probe, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3} if sidecar
                           else openai_ready),
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 6},
        "volumeMounts": [dict(store_mount), {"name": "srv", "mountPath": SRV, "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _security(),
    }
    preflight = {
        "name": "preflight", "image": opts.image, "imagePullPolicy": "IfNotPresent",
        "command": ([NVIDIA_ENTRYPOINT] if build.backend == "tensorrt-llm" else [])
        + ["trtbuild", "preflight", MOUNT, "--repo-out", REPO], "env": env[:1],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi", **gpu_res},
                      "limits": {"memory": "2Gi", **gpu_res}},
        "volumeMounts": [dict(store_mount), {"name": "srv", "mountPath": SRV}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _security(),
    }
    containers = [triton]
    if sidecar:
        containers.append({
            "name": "openai", "image": opts.image, "imagePullPolicy": "IfNotPresent",
            "command": openai_command(build), "env": base_env, "ports": [openai_port],
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
            "readinessProbe": openai_ready,
            # /v1/models answers from the frontend's own state: a wedged frontend is restarted
            "livenessProbe": {"httpGet": {"path": "/v1/models", "port": OPENAI[0]}, "periodSeconds": 10,
                              "timeoutSeconds": 5, "failureThreshold": 6},
            "volumeMounts": [dict(store_mount), {"name": "srv", "mountPath": SRV, "readOnly": True},
                             {"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": _security(),
        })
    init = [preflight]
    if opts.store.kind == "s3":
        store_volume = {"name": "model-store", "emptyDir": {"sizeLimit": mi(_round_up(int(build.total_bytes * 1.1)
                                                                                        + 64 * MiB, 64 * MiB))}}
        init.insert(0, {
            "name": "fetch-build", "image": images.AWS_CLI_IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["aws", "s3", "sync", "--only-show-errors", "--no-progress", opts.store.url, MOUNT],
            "env": env[:1],
            # credentials: the Secret if it exists, else the pod's own identity (IRSA, instance role)
            "envFrom": [{"secretRef": {"name": f"{opts.name}-s3", "optional": True}}],
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
            "volumeMounts": [{"name": "model-store", "mountPath": MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": _security(),
        })
    else:
        store_volume = {"name": "model-store",
                        "persistentVolumeClaim": {"claimName": opts.store.claim, "readOnly": True}}
        if opts.store.sub_path:
            for c in (*containers, preflight):
                c["volumeMounts"][0]["subPath"] = opts.store.sub_path
    pod: dict = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": images.UID, "runAsGroup": images.UID,
                            "fsGroup": images.UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 60,
        "initContainers": init,
        "containers": containers,
        "volumes": [store_volume, {"name": "srv", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": mi(shm)}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}}],
    }
    if gpus:
        pod["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In",
                                   "values": gpu_products(build)}]}]}}}
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    spec: dict = {} if opts.hpa else {"replicas": opts.replicas or 1}  # with an HPA, it owns the count
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {**_meta(build, opts), "annotations": annotations(build, opts)},
        "spec": {
            **spec,
            "selector": {"matchLabels": selector(opts)},
            # a new pod is ready before an old one goes (needs one spare node's worth of GPUs)
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels(build, opts), "annotations": {
                **annotations(build, opts), "kubectl.kubernetes.io/default-container": "triton"}}, "spec": pod},
        },
    }


def service(build: Build, opts: Options) -> dict:
    ports = [{"name": k, "port": v, "targetPort": k, "protocol": "TCP"} for k, v in [*PORTS.items(), OPENAI]]
    ports[1]["appProtocol"] = "grpc"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(build, opts),
            "spec": {"type": "ClusterIP", "selector": selector(opts), "ports": ports}}


INSTANCE_LABEL = "app_kubernetes_io_instance"  # the pod label the PodMonitor copies onto every series


def _monitor_meta(build: Build, opts: Options) -> dict:
    meta = _meta(build, opts)
    meta["labels"].update(dict(opts.monitor_labels))
    return meta


def pod_monitor(build: Build, opts: Options) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": _monitor_meta(build, opts),
            "spec": {"selector": {"matchLabels": selector(opts)},
                     "podTargetLabels": ["app.kubernetes.io/instance"],
                     "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]}}


def prometheus_rule(build: Build, opts: Options) -> dict:
    """Recording rules per pod of this Deployment: Triton's queue time over compute time (model and
    hardware independent), and the requests waiting for a batch slot inside the backend."""
    sel = f'{INSTANCE_LABEL}="{opts.name}"' + (f', namespace="{opts.namespace}"' if opts.namespace else "")
    by = f"sum by (namespace, pod, {INSTANCE_LABEL})"  # keeps the labels the alert and the adapter select on
    ratio = (f"{by} (rate(nv_inference_queue_duration_us{{{sel}}}[1m])) / clamp_min({by} "
             f"(rate(nv_inference_compute_infer_duration_us{{{sel}}}[1m])), 1)")
    waiting = (f'{by} (nv_trt_llm_request_metrics{{request_type="waiting", {sel}}})'
               if build.backend == "tensorrt-llm" else f"{by} (trtbuild_scheduler_waiting{{{sel}}})")
    target = opts.hpa.target if opts.hpa else 1.0
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": _monitor_meta(build, opts),
            "spec": {"groups": [{"name": f"trtbuild-{opts.name}", "interval": "15s", "rules": [
                {"record": RATIO_RECORD, "expr": ratio},
                {"record": WAITING_RECORD, "expr": waiting},
                {"alert": "TritonQueueBacklog", "expr": f"{RATIO_RECORD}{{{sel}}} > {4 * target:g}",
                 "for": "10m", "labels": {"severity": "warning"},
                 "annotations": {"summary": f"{opts.name}: requests queue {4 * target:g}x longer than they "
                                            "compute (add replicas or raise the autoscaler's maximum)"}},
            ]}]}}


def hpa(build: Build, opts: Options) -> dict:
    assert opts.hpa is not None
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(build, opts),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": opts.name},
                "minReplicas": opts.hpa.min_replicas, "maxReplicas": opts.hpa.max_replicas,
                "metrics": [{"type": "Pods", "pods": {"metric": {"name": RATIO_METRIC},
                                                      "target": {"type": "AverageValue",
                                                                 "averageValue": f"{round(opts.hpa.target * 1000)}m"}}}],
                # a new replica takes its load time to help: scale up at once, down slowly
                "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0,
                                         "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
                             "scaleDown": {"stabilizationWindowSeconds": max(300, 2 * load_seconds(build)),
                                           "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]}},
            }}


def adapter_values() -> dict:
    """prometheus-adapter Helm values: serve the recorded ratio as the HPA's Pods metric."""
    return {"prometheus": {"url": "http://prometheus-operated.monitoring.svc", "port": 9090},
            "rules": {"custom": [{
        "seriesQuery": f'{{__name__="{RATIO_RECORD}",namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^triton:queue_compute:ratio$", "as": RATIO_METRIC},
        "metricsQuery": "avg(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    }]}}


def render(build: Build, opts: Options) -> dict[str, dict]:
    if build.backend == "tensorrt-llm" and build.gpu is None:
        raise ConfigError("a tensorrt-llm build without a GPU target cannot be deployed")
    if build.backend == "torch" and build.gpu is not None:
        raise ConfigError(f"{build.path.name} is a torch-backend build for {build.spec.gpu}: the torch backend "
                          "deploys on the CPU image (build with --gpu cpu), GPU deployments serve tensorrt-llm "
                          "engines (--backend tensorrt-llm)")
    if (opts.hpa is None) == (opts.replicas is None):
        raise ConfigError("choose --replicas N (a fixed count) or --hpa MIN,MAX,TARGET (autoscaled), not both")
    docs = {"deployment.yaml": deployment(build, opts), "service.yaml": service(build, opts),
            "podmonitor.yaml": pod_monitor(build, opts), "prometheusrule.yaml": prometheus_rule(build, opts)}
    if opts.hpa is not None:
        docs["hpa.yaml"] = hpa(build, opts)
    return docs


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # plain YAML: no &anchors / *aliases for repeated values
        return True


def _dump(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def write(build: Build, opts: Options, out: Path, force: bool = False) -> Path:
    docs = render(build, opts)
    header = (f"# generated by `trtbuild k8s` from {build.path.name} (spec {build.lock['spec_hash'][:16]}); "
              "regenerate rather than edit\n")
    with staging_dir(out, force, kind="k8s", inputs=[build.path]) as tmp:
        for fname, doc in docs.items():
            (tmp / fname).write_text(header + _dump(doc))
        kust = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": list(docs)}
        (tmp / "kustomization.yaml").write_text(header + _dump(kust))
        if opts.hpa is not None:
            (tmp / "prometheus-adapter-values.yaml").write_text(
                "# prometheus-adapter (Helm chart prometheus-community/prometheus-adapter): merge these into its\n"
                "# values (prometheus.url: your Prometheus service) so the HPA's Pods metric exists.\n"
                + _dump(adapter_values()))
        (tmp / MARKER).write_text(json.dumps({"kind": "k8s", "build": str(build.path), "name": opts.name},
                                             indent=2) + "\n")
    return out


def options_for(build: Build, build_dir: Path, *, name: str | None = None, image: str | None = None,
                replicas: int | None = None, model_store: str | None = None, hpa: str | None = None,
                monitor_labels: tuple[str, ...] = (), namespace: str | None = None) -> Options:
    """`trtbuild k8s`'s options with their defaults: the name from the build directory's, the image
    docker/ builds for the backend, the claim NAME-build, and HPA 1,4,1.0 unless a fixed replica count."""
    name = check_name(name) if name else k8s_name(Path(build_dir).resolve().name)
    if namespace is not None:
        check_name(namespace, "--namespace")
    return Options(name=name, image=image or default_image(build), store=parse_model_store(model_store or
                                                                                            f"pvc:{name}-build"),
                   hpa=None if replicas is not None else parse_hpa(hpa or "1,4,1.0"), replicas=replicas,
                   namespace=namespace, monitor_labels=tuple(parse_label(t) for t in monitor_labels))


def default_image(build: Build) -> str:
    return images.TRTLLM_IMAGE if build.backend == "tensorrt-llm" else images.CPU_IMAGE


def summary(build: Build, opts: Options, out: Path, image_given: bool) -> list[str]:
    """What `trtbuild k8s` wrote, the notes a user needs before applying it, and the apply command."""
    gpus = f"{build.world_size} x nvidia.com/gpu ({', '.join(gpu_products(build))})" if build.gpu else "CPU only"
    scale = f"HPA {opts.hpa.min_replicas}-{opts.hpa.max_replicas}" if opts.hpa else f"{opts.replicas} replica(s)"
    lines = [f"wrote {out}: Deployment {opts.name} ({gpus}, image {opts.image}, /dev/shm {mi(shm_bytes(build))}, "
             f"startup window {startup_failure_threshold(build) * STARTUP_PERIOD} s, {scale}; OpenAI API on port "
             f"{OPENAI[1]}{' (a sidecar)' if build.world_size > 1 else ''}), Service, PodMonitor, PrometheusRule"]
    if not image_given:
        lines.append(f"note: image {opts.image} is what docker/ builds locally: push it to a registry the "
                     "cluster pulls from and pass --image")
    if opts.store.kind == "pvc":
        lines.append(f"note: the build must be on the claim {opts.store.claim}"
                     + (f" under {opts.store.sub_path}" if opts.store.sub_path else "")
                     + " (ReadOnlyMany or ReadWriteMany, for replicas on several nodes)")
    return lines + [f"apply: kubectl apply -k {out}"]
