"""k8s, preflight: Kubernetes manifests for a build, and the init check of its pods."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for the manifests (must not exist unless --force).")
@click.option("--image", default=None,
              help="Serving image (default: trtbuild-trtllm:VERSION for GPU builds, trtbuild-cpu:VERSION for CPU "
                   "builds, as docker/ builds them).")
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="A fixed replica count, no autoscaler (instead of --hpa).")
@click.option("--model-store", default=None,
              help="Where pods find the build: pvc:CLAIM[/PATH] (default: pvc:NAME-build) or s3://BUCKET/PATH.")
@click.option("--hpa", "hpa_spec", default=None,
              help="MIN,MAX,TARGET: autoscale between MIN and MAX replicas on the average queue/compute ratio "
                   "per pod (default 1,4,1.0 unless --replicas).")
@click.option("--monitor-label", "monitor_labels", multiple=True, metavar="KEY=VALUE",
              help="A label on the PodMonitor and PrometheusRule, for the Prometheus operator's selectors "
                   "(e.g. release=kube-prometheus-stack); repeatable.")
@click.option("--name", default=None, help="Kubernetes name (default: from BUILD_DIR's name).")
@click.option("--namespace", default=None, help="metadata.namespace of every object (default: kubectl's).")
@click.option("--force", is_flag=True, help="Replace OUT if trtbuild wrote it.")
def k8s(build_dir: Path, out_dir: Path, image: str | None, replicas: int | None, model_store: str | None,
        hpa_spec: str | None, monitor_labels: tuple[str, ...], name: str | None, namespace: str | None,
        force: bool) -> None:
    """Kubernetes manifests for a build: Deployment, Service, PodMonitor, PrometheusRule, HPA (kustomize)."""
    from trtbuild.deploy import k8s as kube
    from trtbuild.deploy.build import read_build

    b = read_build(build_dir.resolve())
    if replicas is not None and hpa_spec is not None:
        raise click.UsageError("choose --replicas N (a fixed count) or --hpa MIN,MAX,TARGET (autoscaled), not both")
    opts = kube.options_for(b, build_dir, name=name, image=image, replicas=replicas, model_store=model_store,
                            hpa=hpa_spec, monitor_labels=monitor_labels, namespace=namespace)
    kube.write(b, opts, out_dir, force=force)
    for line in kube.summary(b, opts, out_dir, image_given=image is not None):
        click.echo(line)


@click.command()
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--repo-out", type=click.Path(path_type=Path), default=None,
              help="Write the build's Triton repository here, for the build where it is mounted now.")
def preflight(build_dir: Path, repo_out: Path | None) -> None:
    """Refuse a node that cannot serve a build (GPU model, compute capability, driver, TensorRT-LLM
    version against the lock file), then write its repository: the Kubernetes init container."""
    from trtbuild.deploy.build import read_build
    from trtbuild.deploy.preflight import preflight as run_preflight

    for line in run_preflight(read_build(build_dir.resolve()), repo_out):
        click.echo(line)


COMMANDS = (k8s, preflight)
