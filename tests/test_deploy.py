"""Deployment: Kubernetes manifests rendered from real builds (a tp=1 Medusa and a tp=2 lookahead
tensorrt-llm build) and validated offline — core kinds with kubernetes-validate's strict schemas,
the Prometheus-operator kinds with a strict schema of their own built on Kubernetes' ObjectMeta and
LabelSelector, every PromQL expression parsed — plus the init check (`trtbuild preflight`) and both
Dockerfiles.

No Docker engine and no cluster run here: the images are checked as files (pinned bases, non-root
USER, HEALTHCHECK, no secrets, the CPU image's install step is the README's and its build context
builds the package), the manifests as documents.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from click.testing import CliRunner
from dockerfile_parse import DockerfileParser
from referencing import Registry, Resource

from conftest import make_hf_model, random_heads
from trtbuild.builder.engine import TRTLLM_PIN, engine_config
from trtbuild.builder.gpus import NodeGpu, parse_nvidia_smi
from trtbuild.cli import cli
from trtbuild.cli.serve import openai_frontend, serve
from trtbuild.deploy import images
from trtbuild.deploy import k8s as kube
from trtbuild.deploy.build import read_build
from trtbuild.deploy.preflight import check_node
from trtbuild.common.errors import ConfigError
from trtbuild.serve import mpi_command, moved_engine, relocated_repo
from trtbuild.common.spec import BuildSpec
from trtbuild.triton_repo import MODELS, parse_config

ROOT = Path(__file__).resolve().parent.parent
# the oldest Kubernetes we target (autoscaling/v2beta2 gone) and the newest kubernetes-validate knows
K8S_VERSIONS = ("1.26.0", kubernetes_validate.latest_version())

# What the lock file of an engine built on an H100 in the pinned container says about it.
H100 = {"target": "h100-80gb", "product": "NVIDIA-H100-80GB-HBM3", "compute_capability": "9.0",
        "name": "NVIDIA H100 80GB HBM3", "detected": True, "driver": "590.44.01"}
CONTAINER = {"tensorrt_llm": images.TRTLLM_VERSION, "tensorrt": images.TENSORRT_VERSION, "cuda": images.CUDA_VERSION}


# ---------------------------------------------------------------- builds

def gpu_host_build(hf: Path, out: Path, **spec) -> Path:
    """`trtbuild build --backend tensorrt-llm` as it runs on an H100 host inside the pinned container,
    with the three GPU-only steps stood in: TensorRT-LLM being importable, its engine build (writing
    config.json as `Engine.save` does, without the rank engines) and what torch/nvidia-smi report about
    the GPU. Resolving and validating the spec, the conversion (tp shards), the Triton repository and the
    lock file are the real code."""
    import trtbuild.builder as builder
    import trtbuild.builder.trtllm as trtllm

    real_versions = builder.versions

    def build_engines(rs, checkpoint_dir: Path, engine_dir: Path) -> str:
        pre = json.loads((checkpoint_dir / "config.json").read_text())
        (engine_dir / "config.json").write_text(json.dumps(engine_config(rs, pre, images.TRTLLM_VERSION)))
        return images.TRTLLM_VERSION

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trtllm, "check_available", lambda: images.TRTLLM_VERSION)
        mp.setattr(trtllm, "build_engines", build_engines)
        mp.setattr(builder, "versions", lambda: {**real_versions(), **CONTAINER})
        mp.setattr(builder, "gpu_info", lambda target: dict(H100))
        builder.build(BuildSpec(model=str(hf), backend="tensorrt-llm", gpu="h100-80gb", max_batch_size=8,
                                max_seq_len=256, max_input_len=128, **spec), out, verify=False, echo=lambda s: None)
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("deploy")
    make_hf_model(d / "hf")
    random_heads(d / "medusa_lm_head.safetensors", 3)
    return {
        "medusa_tp1": gpu_host_build(d / "hf", d / "llama-medusa", medusa=str(d / "medusa_lm_head.safetensors"),
                                     medusa_choices="{0}, {1}, {0, 0}"),
        "lookahead_tp2": gpu_host_build(d / "hf", d / "llama-lookahead-tp2", lookahead="4,3,4", tp=2),
        "hf": d / "hf",
    }


def render(build: Path, out: Path, *args: str) -> dict[str, dict]:
    r = CliRunner().invoke(cli, ["k8s", str(build), "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    docs = {}
    for name in kust["resources"]:
        (doc,) = list(yaml.safe_load_all((out / name).read_text()))
        docs[doc["kind"]] = doc
    yamls = {p.name for p in out.glob("*.yaml")}
    adapter = {"prometheus-adapter-values.yaml"} if "HorizontalPodAutoscaler" in docs else set()
    assert yamls == {*kust["resources"], "kustomization.yaml", *adapter}  # nothing escapes validation
    return docs


# ---------------------------------------------------------------- offline validation

_K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1."
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


# The Prometheus operator's PodMonitor and PrometheusRule (monitoring.coreos.com/v1) as its API
# reference documents them, the fields a manifest may carry (strict: unknown fields are errors).
MONITORING_SCHEMAS = {
    "PodMonitor": _obj({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "metadata": {"$ref": _K8S_DEFS + "ObjectMeta"},
        "spec": _obj({
            "selector": {"$ref": _K8S_DEFS + "LabelSelector"},
            "namespaceSelector": _obj({"any": {"type": "boolean"},
                                       "matchNames": {"type": "array", "items": {"type": "string"}}}, []),
            "jobLabel": {"type": "string"}, "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _obj({
                "port": {"type": "string"}, "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                "path": {"type": "string", "pattern": "^/"}, "scheme": {"enum": ["http", "https"]},
                "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                "params": {"type": "object"}}, [])},
        }, ["selector", "podMetricsEndpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "PrometheusRule": _obj({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": {"$ref": _K8S_DEFS + "ObjectMeta"},
        "spec": _obj({"groups": {"type": "array", "minItems": 1, "items": _obj({
            "name": {"type": "string", "minLength": 1}, "interval": _DURATION,
            "limit": {"type": "integer"}, "partial_response_strategy": {"type": "string"},
            "rules": {"type": "array", "minItems": 1, "items": {"oneOf": [
                _obj({"record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                      "expr": {"type": "string", "minLength": 1}, "labels": _STRMAP}, ["record", "expr"]),
                _obj({"alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                      "expr": {"type": "string", "minLength": 1}, "for": _DURATION, "keep_firing_for": _DURATION,
                      "labels": _STRMAP, "annotations": _STRMAP}, ["alert", "expr"]),
            ]}}}, ["name", "rules"])}}, ["groups"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}


def _k8s_definitions(version: str) -> dict:
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return json.loads((base / f"v{version}-local-strict" / "_definitions.json").read_text())


def validate_doc(doc: dict) -> None:
    """Strict, offline: kubernetes-validate's schemas for Kubernetes' own kinds; for the Prometheus
    operator's, the schema above with Kubernetes' ObjectMeta/LabelSelector definitions and each
    PromQL expression parsed."""
    for version in K8S_VERSIONS:
        if doc["apiVersion"] != "monitoring.coreos.com/v1":
            kubernetes_validate.validate(doc, version, strict=True)
            continue
        registry = Resource.from_contents(_k8s_definitions(version)) @ Registry()
        jsonschema.Draft202012Validator(MONITORING_SCHEMAS[doc["kind"]], registry=registry).validate(doc)
    if doc["kind"] == "PrometheusRule":
        for group in doc["spec"]["groups"]:
            for rule in group["rules"]:
                promql_parser.parse(rule["expr"])  # raises on a syntax error
            check_recorded_labels(group["rules"])


def check_recorded_labels(rules: list[dict]) -> None:
    """A rule that selects a recorded series by a label only matches if the recording kept it."""
    kept = {}
    for r in rules:
        if "record" in r:
            by = re.findall(r"sum by \(([^)]*)\)", r["expr"])
            assert by, r["expr"]
            kept[r["record"]] = set.intersection(*({x.strip() for x in b.split(",")} for b in by))
    for r in rules:
        for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", r["expr"]):
            if name in kept:
                used = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",") if m.strip()}
                assert used <= kept[name], f"{r.get('alert') or r['record']}: {used - kept[name]} dropped by {name}"


def test_validation_has_teeth(builds, tmp_path):
    """The checks catch what they are for: an unknown field, a wrong type, a removed API version,
    a bad PromQL expression, an unknown PodMonitor field."""
    docs = render(builds["medusa_tp1"], tmp_path / "k8s")
    for doc in docs.values():
        validate_doc(doc)
    bad = copy.deepcopy(docs["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["shmSize"] = "1Gi"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_doc(bad)
    bad = copy.deepcopy(docs["Deployment"])
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_doc(bad)
    old = dict(docs["HorizontalPodAutoscaler"], apiVersion="autoscaling/v2beta2")  # removed in 1.26
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_doc(old)
    rule = copy.deepcopy(docs["PrometheusRule"])
    rule["spec"]["groups"][0]["rules"][0]["expr"] = "sum by (pod) (rate(x[1m])"
    with pytest.raises(ValueError):
        validate_doc(rule)
    rule = copy.deepcopy(docs["PrometheusRule"])  # an alert on a label the recording aggregated away
    rule["spec"]["groups"][0]["rules"][0]["expr"] = rule["spec"]["groups"][0]["rules"][0]["expr"].replace(
        "sum by (namespace, pod, app_kubernetes_io_instance)", "sum by (namespace, pod)")
    with pytest.raises(AssertionError, match="dropped by triton:queue_compute:ratio"):
        validate_doc(rule)
    mon = copy.deepcopy(docs["PodMonitor"])
    mon["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate_doc(mon)
    mon = copy.deepcopy(docs["PodMonitor"])
    mon["metadata"]["labelz"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate_doc(mon)
    # a probe or a Service port on a port name nobody declares is valid YAML to the schemas, not to us
    check_ports(docs)
    bad = copy.deepcopy(docs)
    bad["Deployment"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "openapi"
    with pytest.raises(AssertionError):
        check_ports(bad)
    bad = copy.deepcopy(docs)
    bad["Service"]["spec"]["ports"][-1]["targetPort"] = "open-ai"
    with pytest.raises(AssertionError):
        check_ports(bad)


# ---------------------------------------------------------------- the manifests

def _container(dep: dict, name: str) -> dict:
    spec = dep["spec"]["template"]["spec"]
    (c,) = [c for c in spec["containers"] + spec["initContainers"] if c["name"] == name]
    return c


def _volume(dep: dict, name: str) -> dict:
    (v,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return v


def check_ports(docs: dict[str, dict]) -> None:
    """What the schemas cannot see: a probe's named port is one its own container declares, each
    Service port targets a port some container of the pod declares, no port is declared twice."""
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    declared = [p["name"] for c in pod["containers"] for p in c.get("ports", [])]
    assert len(declared) == len(set(declared)), declared
    for c in pod["containers"]:
        own = {p["name"] for p in c.get("ports", [])}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in c:
                assert c[kind]["httpGet"]["port"] in own, (c["name"], kind)
    for port in docs["Service"]["spec"]["ports"]:
        assert port["targetPort"] in declared, port


def parses_as(command, args: list[str]) -> dict:
    """A container's arguments as the trtbuild command they start parses them (options and ranges
    checked, nothing run)."""
    with command.make_context(command.name, list(args)) as ctx:
        return ctx.params


OPENAI_PORT = {"name": "openai", "containerPort": 9000, "protocol": "TCP"}
OPENAI_READY = {"path": "/health", "port": "openai"}


def test_tp1_medusa_manifests(builds, tmp_path):
    build = builds["medusa_tp1"]
    lock = json.loads((build / "engine" / "trtbuild.lock.json").read_text())
    docs = render(build, tmp_path / "k8s", "--image", "registry.example.com/trtbuild-trtllm:0.1.0",
                  "--hpa", "2,6,1.5", "--model-store", "pvc:models/llama/medusa",
                  "--monitor-label", "release=kube-prometheus-stack")
    for doc in docs.values():
        validate_doc(doc)
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    triton = _container(dep, "triton")

    # GPUs: tp x pp = 1, on the engine's GPU model, tolerating the GPU taint
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == "1"
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In",
                                         "values": ["NVIDIA-H100-80GB-HBM3"]}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]

    # /dev/shm: 256 MiB + 10 Python instances (pre, post, 8 BLS = max_batch_size) x (64 MiB + 8 x 256 x 8 B)
    # = 896 MiB + 160 KiB -> 1024 MiB (also the minimum)
    assert _volume(dep, "dshm") == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1024Mi"}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    # memory: the engine (a few KiB here) + 4 GiB + the shm emptyDir (it counts), rounded up: 6 GiB
    assert triton["resources"]["limits"]["memory"] == "6144Mi"

    # probes: startup on Triton's ready, liveness on live, on the HTTP port; 300 s at least. Readiness:
    # the OpenAI API's /health, served by this container (200 only while Triton is ready too)
    http = {"path": "/v2/health/ready", "port": "http"}
    assert triton["startupProbe"]["httpGet"] == http
    assert triton["readinessProbe"]["httpGet"] == OPENAI_READY
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert triton["startupProbe"]["periodSeconds"] * triton["startupProbe"]["failureThreshold"] == 300
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in triton["ports"]
    assert OPENAI_PORT in triton["ports"]
    check_ports(docs)

    # tp x pp = 1: trtbuild serve (behind NVIDIA's entrypoint) on the repository the init check wrote for
    # this mount, given the whole startup window, with the OpenAI API on 9000; no mpirun, no sidecar
    assert triton["command"] == [kube.NVIDIA_ENTRYPOINT, "trtbuild", "serve", "/srv/triton_repo", "--host",
                                 "0.0.0.0", "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002",
                                 "--start-timeout", "300", "--openai-port", "9000"]
    params = parses_as(serve, triton["command"][3:])
    assert (params["openai_port"], params["host"], params["start_timeout"]) == (9000, "0.0.0.0", 300)
    assert "mpirun" not in triton["command"]
    assert [c["name"] for c in pod["containers"]] == ["triton"]
    pre = _container(dep, "preflight")
    assert [c["name"] for c in pod["initContainers"]] == ["preflight"]
    assert pre["command"] == [kube.NVIDIA_ENTRYPOINT, "trtbuild", "preflight", "/models/build", "--repo-out",
                              "/srv/triton_repo"]
    assert pre["resources"]["limits"]["nvidia.com/gpu"] == "1"  # it must see the GPUs it checks
    assert pre["image"] == triton["image"] == "registry.example.com/trtbuild-trtllm:0.1.0"

    # the model store: the PVC, read-only, the build at its sub-path
    assert _volume(dep, "model-store")["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    for c in (triton, pre):
        assert {"name": "model-store", "mountPath": "/models/build", "readOnly": True,
                "subPath": "llama/medusa"} in c["volumeMounts"]

    # non-root everywhere
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == images.UID
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]

    # what the engine is, on every object: GPU, TensorRT-LLM version, spec hash
    for doc in docs.values():
        labels = doc["metadata"]["labels"]
        assert labels["trtbuild.dev/gpu"] == "h100-80gb"
        assert labels["trtbuild.dev/tensorrt-llm"] == images.TRTLLM_VERSION
        assert labels["trtbuild.dev/spec-hash"] == lock["spec_hash"][:16]
    ann = dep["metadata"]["annotations"]
    assert ann["trtbuild.dev/spec-hash"] == lock["spec_hash"]
    assert ann["trtbuild.dev/gpu-name"] == "NVIDIA H100 80GB HBM3"
    assert ann["trtbuild.dev/tensorrt-llm-version"] == "1.2.1" and ann["trtbuild.dev/speculative-decoding"] == "medusa"
    assert dep["spec"]["template"]["metadata"]["annotations"]["trtbuild.dev/spec-hash"] == lock["spec_hash"]
    assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "trtbuild",
                                                      "app.kubernetes.io/instance": "llama-medusa"}

    # Service, PodMonitor, HPA fit together
    svc = docs["Service"]
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("http", 8000), ("grpc", 8001), ("metrics", 8002),
                                                                     ("openai", 9000)]
    assert svc["spec"]["ports"][3]["targetPort"] == "openai"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert docs["PodMonitor"]["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert docs["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama-medusa"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert "replicas" not in dep["spec"]  # the HPA owns the count: `kubectl apply` must not reset it
    for kind in ("PodMonitor", "PrometheusRule"):
        assert docs[kind]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "release" not in dep["metadata"]["labels"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "1500m"}

    # the HPA's metric is the recorded queue/compute ratio, served under that name by the adapter
    rules = docs["PrometheusRule"]["spec"]["groups"][0]["rules"]
    ratio = next(r for r in rules if r.get("record") == "triton:queue_compute:ratio")
    assert "nv_inference_queue_duration_us" in ratio["expr"] and "nv_inference_compute_infer_duration_us" in ratio["expr"]
    # this Deployment's pods only: the PodMonitor copies the instance label onto every series
    assert docs["PodMonitor"]["spec"]["podTargetLabels"] == ["app.kubernetes.io/instance"]
    assert 'app_kubernetes_io_instance="llama-medusa"' in ratio["expr"]
    waiting = next(r for r in rules if r.get("record") == "trtbuild:waiting_requests")
    assert 'nv_trt_llm_request_metrics{request_type="waiting"' in waiting["expr"]
    adapter = yaml.safe_load((tmp_path / "k8s" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert re.match(rule["name"]["matches"], ratio["record"])
    assert ratio["record"] in rule["seriesQuery"]


def test_tp2_lookahead_manifests(builds, tmp_path):
    build = builds["lookahead_tp2"]
    docs = render(build, tmp_path / "k8s", "--model-store", "s3://models-bucket/llama/lookahead-tp2",
                  "--namespace", "llm")
    for doc in docs.values():
        validate_doc(doc)
        assert doc["metadata"]["namespace"] == "llm"
    dep = docs["Deployment"]
    triton = _container(dep, "triton")
    assert triton["image"] == images.TRTLLM_IMAGE  # the default for GPU builds

    # tp x pp = 2 GPUs; the mpirun line with one segment per rank, as `trtbuild serve` runs it
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert _container(dep, "preflight")["resources"]["limits"]["nvidia.com/gpu"] == "2"
    cmd = triton["command"]
    assert cmd == [kube.NVIDIA_ENTRYPOINT, *mpi_command(Path("/srv/triton_repo"), 2, "0.0.0.0", 8000, 8001, 8002)]
    assert cmd[1] == "mpirun" and cmd.count(":") == 1 and cmd.count("-n") == 2
    assert {"name": "OMPI_MCA_btl_vader_single_copy_mechanism", "value": "none"} in triton["env"]
    rank1 = cmd[cmd.index(":") + 1:]
    assert "--load-model=tensorrt_llm" in rank1 and "--allow-http=false" in rank1
    assert "--backend-config=python,shm-region-prefix-name=prefix1_" in rank1
    assert "--http-port=8000" in cmd[:cmd.index(":")]

    # /dev/shm: 256 + 10 x (64 MiB + 16 KiB) + 2 ranks x 512 MiB for NCCL = 1920 MiB + 160 KiB -> 2048 MiB
    assert _volume(dep, "dshm")["emptyDir"] == {"medium": "Memory", "sizeLimit": "2048Mi"}
    # memory: 2 ranks x (engine + 4 GiB) + 2 GiB shm = 10 GiB and the engines' KiB, rounded up: 11 GiB
    assert triton["resources"]["limits"]["memory"] == "11264Mi"

    # the OpenAI API: a sidecar from the same image (behind NVIDIA's entrypoint too) running the frontend
    # alone against rank 0's gRPC port on loopback; the main container keeps Triton's readiness
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["triton", "openai"]
    side = _container(dep, "openai")
    assert side["image"] == triton["image"]
    assert side["command"] == [kube.NVIDIA_ENTRYPOINT, "trtbuild", "openai", "/srv/triton_repo", "--grpc-url",
                               "127.0.0.1:8001", "--metrics-url", "127.0.0.1:8002", "--host", "0.0.0.0",
                               "--port", "9000"]
    params = parses_as(openai_frontend, side["command"][3:])
    assert (params["grpc_url"], params["host"], params["port"]) == ("127.0.0.1:8001", "0.0.0.0", 9000)
    assert side["ports"] == [OPENAI_PORT] and OPENAI_PORT not in triton["ports"]
    assert side["readinessProbe"]["httpGet"] == OPENAI_READY
    assert triton["readinessProbe"]["httpGet"] == triton["startupProbe"]["httpGet"] == {"path": "/v2/health/ready",
                                                                                          "port": "http"}
    assert "nvidia.com/gpu" not in side["resources"]["limits"] and "nvidia.com/gpu" not in side["resources"]["requests"]
    # it reads the repository the init check wrote (and the build it points into), read-only
    assert {"name": "srv", "mountPath": "/srv", "readOnly": True} in side["volumeMounts"]
    assert {"name": "model-store", "mountPath": "/models/build", "readOnly": True} in side["volumeMounts"]
    sc = side["securityContext"]
    assert sc["runAsNonRoot"] and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert ("openai", 9000, "openai") in [(p["name"], p["port"], p["targetPort"]) for p in docs["Service"]["spec"]["ports"]]
    check_ports(docs)

    # the build comes from S3 into an emptyDir before the init check reads it
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-build", "preflight"]
    fetch = _container(dep, "fetch-build")
    assert fetch["command"][:3] == ["aws", "s3", "sync"]
    assert fetch["command"][-2:] == ["s3://models-bucket/llama/lookahead-tp2", "/models/build"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "llama-lookahead-tp2-s3", "optional": True}}]
    assert "emptyDir" in _volume(dep, "model-store")
    size = read_build(build).total_bytes
    limit = _volume(dep, "model-store")["emptyDir"]["sizeLimit"]
    assert int(limit.removesuffix("Mi")) * 2**20 >= size * 1.1

    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 4
    assert dep["metadata"]["annotations"]["trtbuild.dev/world-size"] == "2"
    assert dep["metadata"]["annotations"]["trtbuild.dev/speculative-decoding"] == "lookahead_decoding"


def test_sizing_rules_by_hand(builds):
    b = read_build(builds["lookahead_tp2"])
    assert b.python_instances == 10 and b.world_size == 2  # pre, post, 8 BLS (one per engine row)
    big = b.__class__(**{**b.__dict__, "engine_bytes_per_rank": 70 * 2**30})  # a 70 GiB rank engine
    assert kube.load_seconds(big) == 60 + 359  # 70 GiB at 200 MiB/s = 358.4 s
    assert kube.startup_failure_threshold(big) == 84  # 2 x 419 s in 10 s periods
    assert kube.memory_bytes(big) == (2 * (70 + 4) * 2**30 + 2048 * 2**20 + 2**30 - 1) // 2**30 * 2**30


def test_a_build_is_read_typed(builds, tmp_path):
    """Issue 15: spec.yaml and the engine's config.json are read once, typed; a damaged spec.yaml is one
    line naming the file and the setting."""
    from trtbuild.common.engine_config import EngineConfig
    from trtbuild.common.lookahead.spec import LookaheadSpec
    from trtbuild.common.spec import ResolvedSpec

    b = read_build(builds["lookahead_tp2"])
    assert isinstance(b.spec, ResolvedSpec) and isinstance(b.engine_config, EngineConfig)
    assert b.spec.decoding == b.engine_config.decoding == LookaheadSpec(4, 3, 4)
    assert b.engine_config.usable_seq_len == b.spec.max_seq_len and b.engine_config.world_size == b.world_size == 2
    bad = tmp_path / "bad"
    shutil.copytree(builds["lookahead_tp2"], bad, symlinks=True)
    text = (bad / "spec.yaml").read_text()
    (bad / "spec.yaml").write_text(text.replace("\ntp: 2\n", "\ntp: two\n"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad / 'spec.yaml'))}: tp must be an integer, got 'two'$"):
        read_build(bad)


def test_torch_cpu_build_manifests(tmp_path):
    """A torch-backend CPU build deploys on the CPU image: no GPU request, affinity or toleration."""
    make_hf_model(tmp_path / "hf")
    r = CliRunner().invoke(cli, [str(tmp_path / "hf"), "-o", str(tmp_path / "Demo_Build"), "--max-seq-len", "128"])
    assert r.exit_code == 0, r.output
    docs = render(tmp_path / "Demo_Build", tmp_path / "k8s")
    for doc in docs.values():
        validate_doc(doc)
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    triton = _container(dep, "triton")
    assert dep["metadata"]["name"] == "demo-build"
    assert "nvidia.com/gpu" not in triton["resources"]["limits"]
    assert "affinity" not in pod and "tolerations" not in pod
    assert triton["image"] == images.CPU_IMAGE and triton["command"][:2] == ["trtbuild", "serve"]
    assert parses_as(serve, triton["command"][2:])["openai_port"] == 9000
    assert triton["readinessProbe"]["httpGet"] == OPENAI_READY and OPENAI_PORT in triton["ports"]
    assert [c["name"] for c in pod["containers"]] == ["triton"]
    check_ports(docs)
    # torch: pre, post, tensorrt_llm and 8 BLS instances (the default max_batch_size 8)
    assert read_build(tmp_path / "Demo_Build").python_instances == 11
    waiting = docs["PrometheusRule"]["spec"]["groups"][0]["rules"][1]
    assert waiting["expr"].startswith("sum by (namespace, pod, app_kubernetes_io_instance) (trtbuild_scheduler_waiting{")
    # the torch backend names its engine relative to the repository: a moved build serves as it is
    shutil.copytree(tmp_path / "Demo_Build", tmp_path / "mnt" / "build")
    assert moved_engine(tmp_path / "mnt" / "build" / "triton_repo") is None
    # a torch build for a GPU is not deployed (the CPU image has no CUDA; GPUs serve tensorrt-llm engines)
    r = CliRunner().invoke(cli, [str(tmp_path / "hf"), "-o", str(tmp_path / "gpu_build"), "--max-seq-len", "128",
                                 "--gpu", "h100-80gb", "--no-verify"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["k8s", str(tmp_path / "gpu_build"), "-o", str(tmp_path / "k8s-gpu")])
    assert r.exit_code == 1 and "the torch backend deploys on the CPU image" in r.output
    assert not (tmp_path / "k8s-gpu").exists()


@pytest.mark.parametrize("args,message", [
    (["--hpa", "4,1,1"], "need 1 <= MIN <= MAX"),
    (["--hpa", "1,4"], "expected MIN,MAX,TARGET"),
    (["--hpa", "1,4,0"], "TARGET must be a ratio between 0.001 and 1000000"),
    (["--hpa", "1,4,nan"], "TARGET must be a ratio between 0.001 and 1000000"),
    (["--hpa", "1,4,1e308"], "TARGET must be a ratio between 0.001 and 1000000"),
    (["--hpa", "1,4,0.0001"], "TARGET must be a ratio between 0.001 and 1000000"),
    (["--monitor-label", "release"], "expected KEY=VALUE"),
    (["--monitor-label", "re lease=x"], "expected KEY=VALUE"),
    (["--model-store", "nfs:server/path"], "expected pvc:CLAIM[/PATH] or s3://BUCKET/PATH"),
    (["--model-store", "pvc:Bad_Claim"], "is not a PersistentVolumeClaim name"),
    (["--model-store", "pvc:models/../etc"], "must not contain '..'"),
    (["--model-store", "s3://B/x"], "is not an S3 bucket name"),
    (["--name", "Bad_Name"], "--name 'Bad_Name'"),
    (["--namespace", "Prod"], "--namespace 'Prod'"),
])
def test_k8s_bad_arguments(builds, tmp_path, args, message):
    r = CliRunner().invoke(cli, ["k8s", str(builds["medusa_tp1"]), "-o", str(tmp_path / "k8s"), *args])
    assert r.exit_code == 1 and message in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "k8s").exists()


def test_k8s_fixed_replicas(builds, tmp_path):
    docs = render(builds["medusa_tp1"], tmp_path / "k8s", "--replicas", "3")
    for doc in docs.values():
        validate_doc(doc)
    assert docs["Deployment"]["spec"]["replicas"] == 3 and "HorizontalPodAutoscaler" not in docs
    r = CliRunner().invoke(cli, ["k8s", str(builds["medusa_tp1"]), "-o", str(tmp_path / "k8s2"), "--replicas", "2",
                                 "--hpa", "1,4,1"])
    assert r.exit_code == 2 and "choose --replicas N (a fixed count) or --hpa" in r.output
    assert not (tmp_path / "k8s2").exists()


def test_k8s_refuses_what_is_not_a_build(builds, tmp_path):
    dry = tmp_path / "dry"
    r = CliRunner().invoke(cli, [str(builds["hf"]), "-o", str(dry), "--backend", "tensorrt-llm", "--dry-run"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["k8s", str(dry), "-o", str(tmp_path / "k8s")])
    assert r.exit_code == 1 and "is a dry run: it has no engine to deploy" in r.output
    r = CliRunner().invoke(cli, ["k8s", str(builds["hf"]), "-o", str(tmp_path / "k8s")])
    assert r.exit_code == 1 and "is not a build directory" in r.output
    # an output directory with someone else's files is left alone
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for extra in ([], ["--force"]):
        r = CliRunner().invoke(cli, ["k8s", str(builds["medusa_tp1"]), "-o", str(tmp_path / "mine"), *extra])
        assert r.exit_code == 1 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    # our own output is replaced with --force, and only then
    out = tmp_path / "k8s"
    render(builds["medusa_tp1"], out)
    r = CliRunner().invoke(cli, ["k8s", str(builds["medusa_tp1"]), "-o", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output
    render(builds["medusa_tp1"], out, "--force", "--hpa", "1,8,2")
    assert yaml.safe_load((out / "hpa.yaml").read_text())["spec"]["maxReplicas"] == 8


# ---------------------------------------------------------------- the init check

NODE = [NodeGpu("NVIDIA H100 80GB HBM3", "590.44.01", "9.0"), NodeGpu("NVIDIA H100 80GB HBM3", "590.44.01", "9.0")]


def test_parse_nvidia_smi():
    text = "NVIDIA H100 80GB HBM3, 590.44.01, 9.0\nNVIDIA A100-SXM4-80GB, 535.104.05, 8.0\n\n"
    assert parse_nvidia_smi(text) == [NodeGpu("NVIDIA H100 80GB HBM3", "590.44.01", "9.0"),
                                      NodeGpu("NVIDIA A100-SXM4-80GB", "535.104.05", "8.0")]
    assert parse_nvidia_smi(text)[1].product_label == "NVIDIA-A100-SXM4-80GB"
    with pytest.raises(ConfigError, match="unexpected nvidia-smi output"):
        parse_nvidia_smi("NVIDIA H100, 590.44.01\n")


def test_check_node(builds):
    b = read_build(builds["lookahead_tp2"])
    ok = {"tensorrt_llm": "1.2.1", "tensorrt": "10.14.1.48"}
    assert check_node(b, NODE, ok) == []
    assert check_node(b, NODE[:1], ok) == ["the engine needs 2 GPUs (tp x pp); this pod sees 1"]
    a100 = [NodeGpu("NVIDIA A100-SXM4-80GB", "590.44.01", "8.0")] * 2
    assert check_node(b, a100, ok)[0] == ("GPU 0 (NVIDIA A100-SXM4-80GB) has compute capability 8.0; the engine "
                                          "was built for 9.0 (NVIDIA H100 80GB HBM3)")
    h200 = [NodeGpu("NVIDIA H200", "590.44.01", "9.0")] * 2  # same compute capability, another GPU
    assert check_node(b, h200, ok) == ["GPU 0 is NVIDIA H200; the engine was built on NVIDIA H100 80GB HBM3",
                                       "GPU 1 is NVIDIA H200; the engine was built on NVIDIA H100 80GB HBM3"]
    old = [NodeGpu("NVIDIA H100 80GB HBM3", "570.124.06", "9.0")] * 2  # CUDA 13 needs R580+
    assert check_node(b, old, ok) == ["driver 570.124.06 is older than CUDA 13.1 (the engine's) needs: >= 580.65.06"]
    (msg,) = check_node(b, NODE, {**ok, "tensorrt_llm": "1.2.0rc8"})
    assert msg.startswith("this image has tensorrt_llm 1.2.0rc8; the engine was built with 1.2.1")
    (msg,) = check_node(b, NODE, {"tensorrt_llm": None, "tensorrt": "10.14.1.48"})
    assert msg.startswith("this image has tensorrt_llm (not installed)")
    # a lock without a detected GPU name: the product label decides
    undetected = b.__class__(**{**b.__dict__, "lock": {**b.lock, "gpu": {k: v for k, v in H100.items()
                                                                         if k not in ("name", "detected")}}})
    assert check_node(undetected, NODE, ok) == []
    assert check_node(undetected, h200, ok)[0] == "GPU 0 is NVIDIA-H200; the engine was built for NVIDIA-H100-80GB-HBM3"


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """A stand-in `nvidia-smi` on PATH (there is no NVIDIA driver here) printing a fixed query answer."""
    bindir = tmp_path / "bin"
    bindir.mkdir()

    def install(rows: str) -> None:
        script = bindir / "nvidia-smi"
        script.write_text(f"#!/bin/sh\n[ \"$1\" = --query-gpu=name,driver_version,compute_cap ] || exit 9\n"
                          f"printf '{rows}'\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return install


def test_preflight_cli_refuses_a_node(builds, tmp_path, monkeypatch, fake_nvidia_smi):
    build = builds["lookahead_tp2"]
    if shutil.which("nvidia-smi") is None:  # this machine: no driver at all
        r = CliRunner().invoke(cli, ["preflight", str(build), "--repo-out", str(tmp_path / "srv" / "repo")])
        assert r.exit_code == 1 and "nvidia-smi not found" in r.output
    fake_nvidia_smi("NVIDIA H100 80GB HBM3, 590.44.01, 9.0\\n")
    r = CliRunner().invoke(cli, ["preflight", str(build), "--repo-out", str(tmp_path / "srv" / "repo")])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "the engine needs 2 GPUs (tp x pp); this pod sees 1" in r.output
    assert "this image has tensorrt_llm (not installed)" in r.output  # no TensorRT-LLM on this machine
    assert not (tmp_path / "srv").exists()  # refused before writing anything
    # the node matches and the image has the engine's TensorRT-LLM and TensorRT: the repository is written
    import trtbuild.deploy.preflight as pf

    monkeypatch.setattr(pf, "dist_version", lambda dist: CONTAINER[dist])
    fake_nvidia_smi("NVIDIA H100 80GB HBM3, 590.44.01, 9.0\\nNVIDIA H100 80GB HBM3, 590.44.01, 9.0\\n")
    r = CliRunner().invoke(cli, ["preflight", str(build), "--repo-out", str(tmp_path / "srv" / "repo")])
    assert r.exit_code == 0, r.output
    assert "2 x NVIDIA H100 80GB HBM3 (cc 9.0, driver 590.44.01); matches the engine (TensorRT-LLM 1.2.1)" in r.output
    assert (tmp_path / "srv" / "repo" / "tensorrt_llm" / "config.pbtxt").is_file()


def test_repository_follows_a_moved_build(builds, tmp_path):
    """Mounted elsewhere (a PVC at /models/build), a tensorrt-llm build's repository must name the
    engine where it is now: preflight --repo-out and `trtbuild serve` rewrite it; nothing else changes."""
    moved = tmp_path / "models" / "build"
    shutil.copytree(builds["medusa_tp1"], moved)
    assert moved_engine(builds["medusa_tp1"] / "triton_repo") is None  # in place: served as it is
    assert moved_engine(moved / "triton_repo") == moved / "engine"
    repo = relocated_repo(moved, tmp_path / "srv" / "triton_repo")
    for name in MODELS:
        old = parse_config((builds["medusa_tp1"] / "triton_repo" / name / "config.pbtxt").read_text())
        new = parse_config((repo / name / "config.pbtxt").read_text())
        if name == "tensorrt_llm":
            for key in ("gpt_model_path",):
                if key in old.parameters:
                    assert old.parameters[key].string_value == str(builds["medusa_tp1"].resolve() / "engine")
                    assert new.parameters[key].string_value == str(moved / "engine")
                    old.parameters[key].string_value = new.parameters[key].string_value
        assert old == new, name
    assert moved_engine(repo) is None


# ---------------------------------------------------------------- the Dockerfiles

def _dockerfile(name: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((ROOT / "docker" / name).read_bytes()))


def _instructions(p: DockerfileParser, kind: str) -> list[str]:
    return [i["value"] for i in p.structure if i["instruction"] == kind]


@pytest.mark.parametrize("name", ["Dockerfile.trtllm", "Dockerfile.cpu"])
def test_dockerfile_basics(name):
    p = _dockerfile(name)
    base = p.baseimage
    # pinned: an explicit release tag (never latest, never a bare major), the digest optional on top
    assert base == {"Dockerfile.trtllm": images.TRITON_TRTLLM_IMAGE, "Dockerfile.cpu": images.PYTHON_IMAGE}[name]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-trtllm-python-py3|python:3\.\d+\.\d+-slim-[a-z]+",
                        base.split("@")[0]), base
    # non-root: the user is created with the uid the pod runs as, and is the last USER before the entrypoint
    users = _instructions(p, "USER")
    assert users and users[-1] == f"{images.UID}:{images.UID}"
    assert any(f"useradd --uid {images.UID} " in r for r in _instructions(p, "RUN"))
    kinds = [i["instruction"] for i in p.structure]
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    (health,) = _instructions(p, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/v2/health/ready" in health and "--start-period=" in health
    assert json.loads(_instructions(p, "ENTRYPOINT")[0])[-2:] == ["trtbuild", "serve"]
    # Triton's three ports and the OpenAI API's, which the default command serves
    assert _instructions(p, "EXPOSE") == ["8000 8001 8002 9000"]
    (cmd,) = _instructions(p, "CMD")
    params = parses_as(serve, json.loads(cmd))
    assert (params["repo_dir"], params["host"], params["openai_port"]) == (Path("/models/build"), "0.0.0.0", 9000)
    # no secrets in layers: no credential-like ARG/ENV, no dotfiles or keys copied in
    secret = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|API_KEY|ACCESS_KEY|AUTH)(_|$)", re.I)
    assert secret.search("HF_TOKEN") and secret.search("AWS_SECRET_ACCESS_KEY")
    for kind in ("ARG", "ENV"):
        for value in _instructions(p, kind):
            for pair in value.split():
                assert not secret.search(pair.split("=")[0]), value
    for value in _instructions(p, "COPY") + _instructions(p, "ADD"):
        assert not re.search(r"(^|\s)(\.env|\.netrc|\.aws|\.ssh|\.git|id_rsa|\S*\.pem)(\s|/|$)", value), value
    assert not _instructions(p, "ADD")  # nothing fetched from a URL at build time


def test_dockerignore_sends_only_what_the_images_copy():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"  # everything out (.git, .venv, demo/, caches, any local secrets) ...
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for name in ("Dockerfile.trtllm", "Dockerfile.cpu"):  # ... except what is copied
        for value in _instructions(_dockerfile(name), "COPY"):
            *sources, _dest = value.split()
            assert set(sources) <= allowed, (name, sources)


def test_trtllm_image_matches_the_pin():
    p = _dockerfile("Dockerfile.trtllm")
    assert p.args["TRTLLM_PIN"] == TRTLLM_PIN and images.TRTLLM_VERSION.startswith(TRTLLM_PIN + ".")
    (check,) = [r for r in _instructions(p, "RUN") if "m.version('tensorrt_llm')" in r]
    assert "startswith('${TRTLLM_PIN}.')" in check  # the image build refuses another TensorRT-LLM line
    readme = (ROOT / "README.md").read_text()
    # the README's version matrix row for the pinned container, and the documented engine build in it
    row = next(ln for ln in readme.splitlines() if ln.startswith("|") and images.TRITON_TRTLLM_IMAGE in ln)
    for value in (images.TRTLLM_VERSION, images.TENSORRT_VERSION, images.CUDA_VERSION):
        assert value in row
    assert re.search(r"docker run .*--gpus all .*--entrypoint trtbuild .*\s+trtbuild-trtllm:\S+ build .*"
                     r"--backend tensorrt-llm", readme)


def test_trtllm_image_installs_the_openai_frontend():
    """The TRT-LLM image installs trtbuild without dependencies: the frontend's (the serve extra's FastAPI
    and uvicorn, as pyproject pins them) are in its install step, and the build imports the frontend."""
    import tomllib

    serve_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    frontend = [r for r in serve_extra if re.match(r"(fastapi|uvicorn)\b", r)]
    assert len(frontend) == 2, serve_extra
    (install,) = [r for r in _instructions(_dockerfile("Dockerfile.trtllm"), "RUN") if "pip install --no-deps ." in r]
    for req in frontend:
        assert f'"{req}"' in install, req
    assert 'python3 -c "import trtbuild.openai_api.app"' in install


def test_cpu_image_installs_with_the_readme_install_step(tmp_path):
    p = _dockerfile("Dockerfile.cpu")
    runs = _instructions(p, "RUN")
    (install,) = [r for r in runs if "make install" in r]
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make install\b", readme, re.M), "the README documents `make install`"
    # the README's two commands start with that same step (setup depends on install)
    dry = subprocess.run(["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    step = subprocess.run(["make", "-n", "-B", "install", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert any("-c constraints-cpu.txt -e '.[serve]'" in ln for ln in step)
    assert all(ln in dry.splitlines() for ln in step)
    # the build context the Dockerfile copies is enough to build and install the package: copy exactly
    # those files and build the wheel from them (offline)
    ctx = tmp_path / "context"
    for value in _instructions(p, "COPY"):
        *sources, _dest = value.split()
        for src in sources:
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, ctx / src, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                ctx.mkdir(exist_ok=True)
                shutil.copy2(ROOT / src, ctx / src)
    step_here = subprocess.run(["make", "-n", "-B", "install", "VENV=/opt/trtbuild/.venv", "PYTHON=python3"], cwd=ctx,
                               capture_output=True, text=True)
    assert step_here.returncode == 0 and "constraints-cpu.txt" in step_here.stdout, step_here.stderr
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "wheel"), str(ctx)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "wheel").glob("trtbuild-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("trtbuild/cli/__init__.py", "trtbuild/triton_repo/models/tensorrt_llm.py", "trtbuild/common/medusa/presets.json",
              "trtbuild/deploy/k8s.py", "trtbuild/deploy/preflight.py"):
        assert f in names
