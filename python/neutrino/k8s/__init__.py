"""Kubernetes manifests for the pools an app uses: what ``neutrino deploy APP`` renders (and applies).

The output folder is a kustomize root (``kubectl apply -k DIR``)::

    kustomization.yaml          core/ plus autoscaling.yaml
    autoscaling.yaml            sync pools: an HPA on CPU (70 %); async/gpu pools: a KEDA ScaledObject
                                (trigger nats-jetstream on the pool's consumer pool_<pool>)
    core/kustomization.yaml     namespace, labels, image, the manifest ConfigMap generator
    core/openapi.json           the app's manifest (ConfigMap ``neutrino-manifest``, mounted into the gateway)
    core/namespace.yaml         the Namespace
    core/nats.yaml              nats-server with JetStream on a PVC (StatefulSet, Services, config)
    core/gateway.yaml           the gateway StatefulSet (2 replicas, a PVC each for its SQLite task log),
                                its LoadBalancer Service, PodDisruptionBudget
    core/network-policy.yaml    default deny; only the gateway is reachable from outside
    core/pool-<pool>.yaml       one per pool the app uses: a Deployment, a PodDisruptionBudget, and for sync
                                pools a Service

The autoscalers sit outside core/ so that overlays without KEDA (or without autoscaling) build on core/ alone:
old kustomize releases (Debian 12's kubectl 1.20 has kustomize v2.0.3) cannot delete a base's object.

Modules: :mod:`~neutrino.k8s.plan` (pools, options, constants), :mod:`~neutrino.k8s.objects` (the objects as
dicts), :mod:`~neutrino.k8s.kustomize` (files and kustomizations), :mod:`~neutrino.k8s.yamltext` (YAML text,
PyYAML; imported on first use only).

``k8s/base`` in the repository is this package's output for ``examples/app.py``; a test keeps them equal.
"""

from .kustomize import Rendered, render, render_stream, write_output, write_secrets
from .objects import nats_monitoring_endpoint, nats_url
from .plan import (
    APP_DIR,
    DEFAULT_IMAGE,
    GPU_NODE_SELECTOR,
    GPU_TOLERATIONS,
    IMAGE_NAME,
    PRESTOP_SLEEP_SECS,
    DeployOptions,
    PoolPlan,
    app_path_in_image,
    plan_pools,
    split_image,
)
from .yamltext import to_yaml, to_yaml_stream

__all__ = [
    "APP_DIR",
    "DEFAULT_IMAGE",
    "GPU_NODE_SELECTOR",
    "GPU_TOLERATIONS",
    "IMAGE_NAME",
    "PRESTOP_SLEEP_SECS",
    "DeployOptions",
    "PoolPlan",
    "Rendered",
    "app_path_in_image",
    "nats_monitoring_endpoint",
    "nats_url",
    "plan_pools",
    "render",
    "render_stream",
    "split_image",
    "to_yaml",
    "to_yaml_stream",
    "write_output",
    "write_secrets",
]
