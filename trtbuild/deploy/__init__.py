"""Deployment artifacts derived from a build: container images (docker/), Kubernetes manifests
(`trtbuild k8s`, k8s.py) and the init check a pod runs before serving (`trtbuild preflight`,
preflight.py). Pure rendering: nothing here talks to a cluster or a Docker engine.

May import: trtbuild.common, trtbuild.convert, trtbuild.runtime, trtbuild.triton_repo, trtbuild.builder,
trtbuild.tuning, trtbuild.serve (every layer below; never trtbuild.bench or trtbuild.cli).
"""
