"""Deployment artifacts derived from a build: container images (docker/), Kubernetes manifests
(`trtbuild k8s`, k8s.py) and the init check a pod runs before serving (`trtbuild preflight`,
preflight.py). Pure rendering: nothing here talks to a cluster or a Docker engine."""
