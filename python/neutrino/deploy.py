"""``neutrino deploy APP``: render Kubernetes manifests for the pools an app uses, and apply them.

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

Every file is written with the standard library only: the YAML is a plain block-style subset (strings quoted
as JSON where YAML would read them otherwise), which kubectl, kustomize and any YAML parser read.

``k8s/base`` in the repository is this command's output for ``examples/app.py``; a test keeps them equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._version import __version__
from .app import App

__all__ = [
    "DeployOptions",
    "PoolPlan",
    "plan_pools",
    "render",
    "write_output",
    "to_yaml",
    "split_image",
    "add_parser",
    "cmd_deploy",
]

#: The container image every Neutrino pod runs (kustomization ``images`` replaces it).
IMAGE_NAME = "neutrino"
DEFAULT_IMAGE = f"{IMAGE_NAME}:{__version__}"
NATS_IMAGE = "nats:2.10-alpine"
#: Where the image keeps the app (the Dockerfile copies examples/app.py there; derived images replace it).
APP_DIR = "/opt/neutrino/app"
MANIFEST_DIR = "/etc/neutrino"
MANIFEST_FILE = "openapi.json"
DASHBOARD_DIR = "/opt/neutrino/dashboard"
DATA_DIR = "/data"

GATEWAY_PORT = 8080
WORKER_PORT = 8000
NATS_CLIENT_PORT = 4222
NATS_MONITOR_PORT = 8222
NATS_SERVICE = "nats"
TASK_STREAM = "NEUTRINO_TASKS"

GATEWAY_REPLICAS = 2
RUN_AS = 10001
#: preStop sleep: time for endpoint controllers and kube-proxy to stop sending traffic before SIGTERM.
PRESTOP_SLEEP_SECS = 5
#: Slack on top of preStop + drain before the kubelet's SIGKILL.
TERMINATION_SLACK_SECS = 30
#: How long a sync worker gets to finish in-flight calls (sync tasks run at most 5 s).
SYNC_DRAIN_SECS = 10

#: Scaling defaults per execution mode: (min, max, target, scale-down stabilisation seconds).
#: sync: target = CPU utilisation (%); queued modes: target = KEDA lagThreshold (backlog per replica).
SCALING: Dict[str, Tuple[int, int, int, int]] = {
    "sync": (2, 20, 70, 300),
    "async": (1, 50, 10, 300),
    "gpu": (0, 5, 1, 300),
}
#: Replicas written into each Deployment (the autoscalers take over from there).
INITIAL_REPLICAS = {"sync": 3, "async": 1, "gpu": 0}
CONCURRENCY = {"sync": 4, "async": 4, "gpu": 1}

RESOURCES: Dict[str, Dict[str, Dict[str, str]]] = {
    "gateway": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
    "nats": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    "sync": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
    "async": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
    "gpu": {
        "requests": {"cpu": "1", "memory": "4Gi", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
    },
}
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

PART_OF = {"app.kubernetes.io/part-of": "neutrino"}
AUTOSCALER_KINDS = ("HorizontalPodAutoscaler", "ScaledObject")


# -- planning --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolPlan:
    """One pool of the app: its name, execution mode and the longest timeout of its tasks."""

    name: str
    mode: str
    timeout_secs: int
    tasks: Tuple[str, ...]

    @property
    def object_name(self) -> str:
        """The Deployment / ScaledObject / HPA / PDB name: ``worker-<pool>`` (``_`` → ``-``)."""
        return "worker-" + self.name.replace("_", "-")

    @property
    def service_name(self) -> str:
        """The Service of a sync pool: the pool name (``_`` → ``-``), so the gateway reaches ``http://fast:8000``."""
        return self.name.replace("_", "-")

    @property
    def consumer(self) -> str:
        return f"pool_{self.name}"

    @property
    def drain_secs(self) -> int:
        """``--drain-grace``: a running task may finish (its whole timeout) before the worker hands it back."""
        return SYNC_DRAIN_SECS if self.mode == "sync" else self.timeout_secs

    @property
    def termination_grace_secs(self) -> int:
        """Longer than preStop + the pool's task timeout + the drain, so scale-in never kills a busy task."""
        return PRESTOP_SLEEP_SECS + max(self.timeout_secs, self.drain_secs) + TERMINATION_SLACK_SECS


def plan_pools(app: App) -> List[PoolPlan]:
    """The pools ``app`` uses, in order of first use."""
    plans = []
    for pool, mode in app.pools().items():
        specs = [spec for spec in app.tasks.values() if spec.pool == pool]
        timeout_secs = max(-(-spec.timeout_ms // 1000) for spec in specs)
        plans.append(PoolPlan(pool, mode, int(timeout_secs), tuple(spec.name for spec in specs)))
    for plan in plans:
        if len(plan.object_name) > 63:
            raise ValueError(f"pool name {plan.name!r} is too long for a Kubernetes object name (max 56 characters)")
    return plans


@dataclasses.dataclass
class DeployOptions:
    namespace: str = "neutrino"
    image: str = DEFAULT_IMAGE
    #: ``--app`` as the workers see it inside the container.
    app_in_image: str = f"{APP_DIR}/app.py"
    #: Mount the app file from a ConfigMap at APP_DIR instead of using the one in the image.
    app_file: Optional[str] = None
    storage_class: Optional[str] = None


@dataclasses.dataclass
class Rendered:
    """What :func:`render` produces: core/'s files (name → objects), core/'s kustomization and extra files
    (the manifest), and the autoscalers (autoscaling.yaml) with the top kustomization."""

    files: Dict[str, List[Dict[str, Any]]]
    kustomization: Dict[str, Any]
    extra_files: Dict[str, str]
    autoscalers: List[Dict[str, Any]]
    top_kustomization: Dict[str, Any]

    def objects(self) -> List[Dict[str, Any]]:
        return [obj for objs in self.files.values() for obj in objs] + list(self.autoscalers)


# -- rendering -------------------------------------------------------------------------------------


def split_image(image: str) -> Dict[str, str]:
    """``registry:5000/team/neutrino:1.2`` → ``{"name": "neutrino", "newName": ..., "newTag": "1.2"}``."""
    entry = {"name": IMAGE_NAME}
    if "@" in image:
        name, digest = image.split("@", 1)
        entry["newName"] = name
        entry["digest"] = digest
        return entry
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        entry["newName"], entry["newTag"] = image[:colon], image[colon + 1 :]
    else:
        entry["newName"], entry["newTag"] = image, "latest"
    return entry


def _metadata(name: str, labels: Dict[str, str], annotations: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    meta: Dict[str, Any] = {"name": name, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _pod_security() -> Dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> Dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _probes(port_name: str) -> Dict[str, Any]:
    return {
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": port_name},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port_name},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": port_name},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
    }


def _prestop() -> Dict[str, Any]:
    return {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECS)]}}}


def _pod_env() -> List[Dict[str, Any]]:
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]


def _scrape(port: int) -> Dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _tmp_volume() -> Dict[str, Any]:
    return {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}


def _pdb(name: str, selector: Dict[str, str], labels: Dict[str, str], **budget: Any) -> Dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, labels),
        "spec": {**budget, "selector": {"matchLabels": dict(selector)}},
    }


def nats_monitoring_endpoint(namespace: str) -> str:
    """host:port of nats-server's monitoring port as KEDA (in its own namespace) reaches it."""
    return f"{NATS_SERVICE}.{namespace}.svc.cluster.local:{NATS_MONITOR_PORT}"


def nats_url() -> str:
    return f"nats://{NATS_SERVICE}:{NATS_CLIENT_PORT}"


NATS_CONF = f"""# nats-server configuration (JetStream on the PVC mounted at {DATA_DIR}).
server_name: $POD_NAME
pid_file: /tmp/nats.pid
port: {NATS_CLIENT_PORT}
http_port: {NATS_MONITOR_PORT}
max_payload: 8MB
lame_duck_duration: 30s
lame_duck_grace_period: 10s
jetstream {{
  store_dir: {DATA_DIR}/jetstream
  max_memory_store: 256MB
  max_file_store: 8GB
}}
"""

NATS_LABELS = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "queue"}
GATEWAY_LABELS = {"app.kubernetes.io/name": "neutrino-gateway", "app.kubernetes.io/component": "gateway"}
WORKER_LABELS = {"app.kubernetes.io/name": "neutrino-worker", "app.kubernetes.io/component": "worker"}


def _pool_labels(plan: PoolPlan) -> Dict[str, str]:
    return {**WORKER_LABELS, "neutrino.io/pool": plan.name, "neutrino.io/mode": plan.mode}


def _pool_selector(plan: PoolPlan) -> Dict[str, str]:
    return {**WORKER_LABELS, "neutrino.io/pool": plan.name}


def _pvc_template(name: str, size: str, storage_class: Optional[str]) -> Dict[str, Any]:
    spec: Dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": name}, "spec": spec}


def _render_nats(options: DeployOptions) -> List[Dict[str, Any]]:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata("nats-config", NATS_LABELS),
        "data": {"nats.conf": NATS_CONF},
    }
    ports = [
        {"name": "client", "port": NATS_CLIENT_PORT, "targetPort": "client"},
        {"name": "monitor", "port": NATS_MONITOR_PORT, "targetPort": "monitor"},
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(NATS_SERVICE, NATS_LABELS),
        "spec": {"selector": dict(NATS_LABELS), "ports": ports},
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata("nats-headless", NATS_LABELS),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": dict(NATS_LABELS), "ports": ports},
    }
    container = {
        "name": "nats",
        "image": NATS_IMAGE,
        "command": ["nats-server", "--config", "/etc/nats/nats.conf"],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [
            {"name": "client", "containerPort": NATS_CLIENT_PORT},
            {"name": "monitor", "containerPort": NATS_MONITOR_PORT},
        ],
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "monitor"},
            "periodSeconds": 2,
            "failureThreshold": 90,
        },
        "livenessProbe": {"httpGet": {"path": "/healthz?js-enabled-only=true", "port": "monitor"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "monitor"}, "periodSeconds": 5},
        "lifecycle": {"preStop": {"exec": {"command": ["nats-server", "--signal", "ldm=/tmp/nats.pid"]}}},
        "resources": RESOURCES["nats"],
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "config", "mountPath": "/etc/nats", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata("nats", NATS_LABELS),
        "spec": {
            "serviceName": "nats-headless",
            "replicas": 1,
            "selector": {"matchLabels": dict(NATS_LABELS)},
            "template": {
                "metadata": {"labels": dict(NATS_LABELS)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "nats-config"}},
                        _tmp_volume(),
                    ],
                },
            },
            "volumeClaimTemplates": [_pvc_template("data", "10Gi", options.storage_class)],
        },
    }
    pdb = _pdb("nats", NATS_LABELS, NATS_LABELS, maxUnavailable=1)
    return [config, service, headless, statefulset, pdb]


def _gateway_args(plans: Sequence[PoolPlan]) -> List[str]:
    args = [
        "--task-log", f"sqlite:{DATA_DIR}/tasks.db",
        "--events-via-nats",
        "--gateway-id", "$(POD_NAME)",
        "--nats", nats_url(),
        "--manifest", f"{MANIFEST_DIR}/{MANIFEST_FILE}",
        "--dashboard-dir", DASHBOARD_DIR,
    ]  # fmt: skip
    for plan in plans:
        if plan.mode == "sync":
            args += ["--http-pool", f"{plan.name}=http://{plan.service_name}:{WORKER_PORT}"]
    for plan in plans:
        low, high, target, window = SCALING[plan.mode]
        target_text = f"{target / 100:g}" if plan.mode == "sync" else str(target)
        args += ["--scale", f"{plan.name}={low}:{high}:{target_text}:{window}"]
    args += ["--host", "0.0.0.0", "--port", str(GATEWAY_PORT), "--log-format", "json"]
    return args


def _render_gateway(plans: Sequence[PoolPlan], options: DeployOptions) -> List[Dict[str, Any]]:
    container = {
        "name": "gateway",
        "image": IMAGE_NAME,
        "command": ["neutrino-gateway"],
        "args": _gateway_args(plans),
        "env": _pod_env(),
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        **_probes("http"),
        "lifecycle": _prestop(),
        "resources": RESOURCES["gateway"],
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata("gateway", GATEWAY_LABELS),
        "spec": {
            "serviceName": "gateway-headless",
            "replicas": GATEWAY_REPLICAS,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": dict(GATEWAY_LABELS)},
            "template": {
                "metadata": {"labels": dict(GATEWAY_LABELS), "annotations": _scrape(GATEWAY_PORT)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    # preStop + in-flight sync calls (at most 5 s) + long polls (at most 60 s) + slack
                    "terminationGracePeriodSeconds": PRESTOP_SLEEP_SECS + 60 + TERMINATION_SLACK_SECS,
                    "containers": [container],
                    "volumes": [
                        {"name": "manifest", "configMap": {"name": "neutrino-manifest"}},
                        _tmp_volume(),
                    ],
                },
            },
            "volumeClaimTemplates": [_pvc_template("data", "5Gi", options.storage_class)],
        },
    }
    public = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata("neutrino", GATEWAY_LABELS),
        "spec": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "selector": dict(GATEWAY_LABELS),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata("gateway-headless", GATEWAY_LABELS),
        "spec": {
            "clusterIP": "None",
            "selector": dict(GATEWAY_LABELS),
            "ports": [{"name": "http", "port": GATEWAY_PORT, "targetPort": "http"}],
        },
    }
    pdb = _pdb("gateway", GATEWAY_LABELS, GATEWAY_LABELS, minAvailable=1)
    return [statefulset, public, headless, pdb]


def _worker_args(plan: PoolPlan, options: DeployOptions) -> List[str]:
    args = ["--mode", "http" if plan.mode == "sync" else "nats", "--pool", plan.name, "--app", options.app_in_image]
    args += ["--task-log", "nats", "--nats", nats_url()]
    args += ["--host", "0.0.0.0", "--port", str(WORKER_PORT)]
    args += ["--concurrency", str(CONCURRENCY[plan.mode]), "--worker-id", "$(POD_NAME)"]
    args += ["--drain-grace", str(plan.drain_secs), "--log-format", "json"]
    return args


def _render_pool(plan: PoolPlan, options: DeployOptions) -> List[Dict[str, Any]]:
    labels = _pool_labels(plan)
    selector = _pool_selector(plan)
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: List[Dict[str, Any]] = [_tmp_volume()]
    if options.app_file:
        mounts.append({"name": "app", "mountPath": APP_DIR, "readOnly": True})
        volumes.append({"name": "app", "configMap": {"name": "neutrino-app"}})
    container = {
        "name": "worker",
        "image": IMAGE_NAME,
        "command": ["neutrino-worker"],
        "args": _worker_args(plan, options),
        "env": _pod_env(),
        "ports": [{"name": "http", "containerPort": WORKER_PORT}],
        **_probes("http"),
        "lifecycle": _prestop(),
        "resources": RESOURCES[plan.mode],
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    pod_spec: Dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": plan.termination_grace_secs,
        "containers": [container],
        "volumes": volumes,
    }
    if plan.mode == "gpu":
        pod_spec["nodeSelector"] = dict(GPU_NODE_SELECTOR)
        pod_spec["tolerations"] = [dict(t) for t in GPU_TOLERATIONS]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(plan.object_name, labels),
        "spec": {
            "replicas": INITIAL_REPLICAS[plan.mode],
            "selector": {"matchLabels": dict(selector)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {"metadata": {"labels": dict(labels), "annotations": _scrape(WORKER_PORT)}, "spec": pod_spec},
        },
    }
    objects = [deployment]
    low, high, target, window = SCALING[plan.mode]
    if plan.mode == "sync":
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _metadata(plan.service_name, labels),
                "spec": {
                    "selector": dict(selector),
                    "ports": [{"name": "http", "port": WORKER_PORT, "targetPort": "http"}],
                },
            }
        )
        objects.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": _metadata(plan.object_name, labels),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.object_name},
                    "minReplicas": low,
                    "maxReplicas": high,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": target},
                            },
                        }
                    ],
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": window}},
                },
            }
        )
    else:
        objects.append(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": _metadata(plan.object_name, labels),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.object_name},
                    "minReplicaCount": low,
                    "maxReplicaCount": high,
                    "pollingInterval": 10,
                    "cooldownPeriod": window,
                    "advanced": {
                        "horizontalPodAutoscalerConfig": {
                            "behavior": {"scaleDown": {"stabilizationWindowSeconds": window}}
                        }
                    },
                    "triggers": [
                        {
                            "type": "nats-jetstream",
                            "metadata": {
                                "natsServerMonitoringEndpoint": nats_monitoring_endpoint(options.namespace),
                                "account": "$G",
                                "stream": TASK_STREAM,
                                "consumer": plan.consumer,
                                "lagThreshold": str(target),
                                "activationLagThreshold": "0",
                            },
                        }
                    ],
                },
            }
        )
    objects.append(_pdb(plan.object_name, selector, labels, maxUnavailable=1))
    return objects


def _render_network_policies(plans: Sequence[PoolPlan]) -> List[Dict[str, Any]]:
    def policy(name: str, selector: Dict[str, Any], ingress: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "labels": dict(PART_OF)},
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": ingress},
        }

    def pods(labels: Dict[str, str]) -> Dict[str, Any]:
        return {"podSelector": {"matchLabels": {"app.kubernetes.io/component": labels["app.kubernetes.io/component"]}}}

    def namespace(name: str) -> Dict[str, Any]:
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}

    gateway_pods = pods(GATEWAY_LABELS)
    worker_pods = pods(WORKER_LABELS)
    return [
        policy("default-deny-ingress", {}, []),
        # The only entry from outside the namespace: the gateway's HTTP port (the LoadBalancer Service).
        policy(
            "gateway-ingress",
            {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
            [{"ports": [{"protocol": "TCP", "port": GATEWAY_PORT}]}],
        ),
        # Workers: the gateway (sync calls), Prometheus (/metrics) from the namespace "monitoring".
        policy(
            "worker-ingress",
            {"matchLabels": {"app.kubernetes.io/component": "worker"}},
            [
                {"from": [gateway_pods], "ports": [{"protocol": "TCP", "port": WORKER_PORT}]},
                {"from": [namespace("monitoring")], "ports": [{"protocol": "TCP", "port": WORKER_PORT}]},
            ],
        ),
        # NATS: clients are the gateway and the workers; the monitoring port also serves KEDA's scaler
        # (namespace "keda") and Prometheus exporters (namespace "monitoring").
        policy(
            "nats-ingress",
            {"matchLabels": {"app.kubernetes.io/component": "queue"}},
            [
                {"from": [gateway_pods, worker_pods], "ports": [{"protocol": "TCP", "port": NATS_CLIENT_PORT}]},
                {
                    "from": [gateway_pods, namespace("keda"), namespace("monitoring")],
                    "ports": [{"protocol": "TCP", "port": NATS_MONITOR_PORT}],
                },
            ],
        ),
    ]


def render(app: App, manifest_text: str, options: Optional[DeployOptions] = None) -> Rendered:
    """Everything ``neutrino deploy`` writes, for ``app`` (whose manifest is ``manifest_text``)."""
    options = options or DeployOptions()
    plans = plan_pools(app)
    files: Dict[str, List[Dict[str, Any]]] = {
        "namespace.yaml": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": options.namespace, "labels": dict(PART_OF)}}
        ],
        "nats.yaml": _render_nats(options),
        "gateway.yaml": _render_gateway(plans, options),
        "network-policy.yaml": _render_network_policies(plans),
    }
    autoscalers: List[Dict[str, Any]] = []
    for plan in plans:
        objects = _render_pool(plan, options)
        autoscalers += [o for o in objects if o["kind"] in AUTOSCALER_KINDS]
        files[f"pool-{plan.service_name}.yaml"] = [o for o in objects if o["kind"] not in AUTOSCALER_KINDS]
    extra = {MANIFEST_FILE: manifest_text}
    generators = [{"name": "neutrino-manifest", "files": [MANIFEST_FILE]}]
    if options.app_file:
        app_name = os.path.basename(options.app_file)
        with open(options.app_file, encoding="utf-8") as source:
            extra[app_name] = source.read()
        generators.append({"name": "neutrino-app", "files": [app_name]})
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": options.namespace,
        # commonLabels (not `labels`) and plain file resources: every kustomize from v2.0 reads this, Debian 12's
        # kubectl 1.20 included.
        "commonLabels": dict(PART_OF),
        "resources": list(files),
        "configMapGenerator": generators,
        "images": [split_image(options.image)],
    }
    top = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": options.namespace,
        "commonLabels": dict(PART_OF),
        "bases": ["core"],  # `bases`: kustomize v2 takes folders only there
        "resources": ["autoscaling.yaml"] if autoscalers else [],
    }
    return Rendered(files, kustomization, extra, autoscalers, top)


# -- YAML (a block-style subset, standard library only) --------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_YAML_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)


def _emit(value: Any, indent: int, out: List[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            key_text = _scalar(key)
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{key_text}:")
                _emit(item, indent + (2 if isinstance(item, dict) else 0), out)
            elif isinstance(item, str) and _literal_ok(item):
                out.append(f"{pad}{key_text}: |")
                out.extend(f"{pad}  {line}" if line else "" for line in item.rstrip("\n").split("\n"))
            else:
                out.append(f"{pad}{key_text}: {_empty(item) if isinstance(item, (dict, list)) else _scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                nested: List[str] = []
                _emit(item, indent + 2, nested)
                first = nested[0]
                out.append(f"{pad}- {first[indent + 2 :]}")
                out.extend(nested[1:])
            else:
                out.append(f"{pad}- {_empty(item) if isinstance(item, (dict, list)) else _scalar(item)}")
    else:
        out.append(pad + _scalar(value))


def _literal_ok(text: str) -> bool:
    """Whether ``text`` can be written as a ``|`` block (multi-line, one final newline, nothing YAML would alter)."""
    return (
        "\n" in text.rstrip("\n")
        and text.endswith("\n")
        and not text.endswith("\n\n")
        and not text[:1].isspace()
        and all(ch == "\n" or ch == "\t" or ch.isprintable() for ch in text)
        and "\t" not in text
    )


def _empty(value: Any) -> str:
    return "{}" if isinstance(value, dict) else "[]"


def to_yaml(obj: Any) -> str:
    """One YAML document (block style) for JSON-like ``obj``."""
    out: List[str] = []
    _emit(obj, 0, out)
    return "\n".join(out) + "\n"


def to_yaml_stream(objects: Sequence[Any]) -> str:
    return "---\n".join(to_yaml(obj) for obj in objects)


# -- output ----------------------------------------------------------------------------------------

_HEADER = "# Rendered by `neutrino deploy` (python/neutrino/deploy.py) for {what}.\n"


def write_output(rendered: Rendered, folder: str, what: str = "the app") -> List[str]:
    """Write the kustomize root into ``folder``; returns the paths written."""
    os.makedirs(os.path.join(folder, "core"), exist_ok=True)
    written = []
    header = _HEADER.format(what=what)
    texts = {f"core/{name}": header + to_yaml_stream(objs) for name, objs in rendered.files.items()}
    texts["core/kustomization.yaml"] = header + to_yaml(rendered.kustomization)
    texts.update({f"core/{name}": text for name, text in rendered.extra_files.items()})
    if rendered.autoscalers:
        texts["autoscaling.yaml"] = header + to_yaml_stream(rendered.autoscalers)
    texts["kustomization.yaml"] = header + to_yaml(rendered.top_kustomization)
    for name, text in texts.items():
        path = os.path.join(folder, *name.split("/"))
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        written.append(path)
    return written


def render_stream(rendered: Rendered, what: str = "the app") -> str:
    """The rendered objects as one YAML stream (what ``--dry-run`` prints without ``--output``).

    This is the input of kustomize, not its output: the manifest ConfigMap is shown as the generator's
    files are, and the image is the kustomization's ``images`` entry applied by hand.
    """
    image = rendered.kustomization["images"][0]
    full = image["newName"] + (("@" + image["digest"]) if "digest" in image else (":" + image["newTag"]))
    namespace = rendered.kustomization["namespace"]
    objects = []
    configmaps = []
    for generator in rendered.kustomization["configMapGenerator"]:
        data = {name: rendered.extra_files[name] for name in generator["files"]}
        metadata = {"name": generator["name"]}
        configmaps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    for obj in [*rendered.objects()[:1], *configmaps, *rendered.objects()[1:]]:
        obj = json.loads(json.dumps(obj))
        if obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = namespace
        obj["metadata"].setdefault("labels", {}).update(PART_OF)
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            if container.get("image") == IMAGE_NAME:
                container["image"] = full
        objects.append(obj)
    return _HEADER.format(what=what) + to_yaml_stream(objects)


# -- the command -----------------------------------------------------------------------------------


def add_parser(commands: Any, app_help: str) -> argparse.ArgumentParser:
    """Register ``neutrino deploy`` on the CLI's subparsers."""
    deploy = commands.add_parser(
        "deploy",
        help="render Kubernetes manifests for the app's pools and kubectl apply -k them",
        description=cmd_deploy.__doc__,
    )
    deploy.add_argument("app", metavar="APP", help=app_help)
    deploy.add_argument(
        "--output", "-o", metavar="DIR", help="write the kustomize root here (default: a temporary folder)"
    )
    deploy.add_argument(
        "--image", default=DEFAULT_IMAGE, help="the Neutrino image with your app (default: %(default)s)"
    )
    deploy.add_argument("--namespace", "-n", default="neutrino", help="the namespace (default: %(default)s)")
    deploy.add_argument(
        "--app-path",
        metavar="SPEC",
        help=f"--app as the workers see it inside the image (default: {APP_DIR}/<APP's file name>)",
    )
    deploy.add_argument(
        "--app-configmap",
        action="store_true",
        help=f"ship APP (one .py file) in a ConfigMap mounted at {APP_DIR} instead of baking it into the image",
    )
    deploy.add_argument("--storage-class", metavar="NAME", help="storageClassName of the PVCs (default: the cluster's)")
    deploy.add_argument(
        "--dry-run",
        action="store_true",
        help="do not apply: print the rendered YAML (or only write it, with --output)",
    )
    deploy.add_argument("--kubectl", default="kubectl", help="the kubectl to run (default: %(default)s)")
    deploy.set_defaults(handler=cmd_deploy)
    return deploy


def _error(message: str) -> None:
    print(f"neutrino: error: {message}", file=sys.stderr)


def _app_path_in_image(spec: str, app_path: Optional[str]) -> str:
    if app_path:
        return app_path
    from ._loader import split_spec

    target, attr = split_spec(spec)
    if target.endswith(".py") or "/" in target or os.sep in target:
        name = f"{APP_DIR}/{os.path.basename(target)}"
        return f"{name}:{attr}" if attr else name
    return spec


def cmd_deploy(args: argparse.Namespace) -> int:
    """Render the Kubernetes manifests for the pools APP uses (the gateway, nats-server with JetStream, one
    Deployment per pool with its autoscaler) into a kustomize root and run `kubectl apply -k` on it.

    With --dry-run nothing is applied: the YAML is printed, or written to --output.
    """
    from .cli import _load_with_manifest

    loaded = _load_with_manifest(args.app)
    if loaded is None:
        return 1
    app, manifest = loaded
    target, _ = _split(args.app)
    if args.app_configmap and not target.endswith(".py"):
        _error("--app-configmap needs APP to be a .py file")
        return 1
    options = DeployOptions(
        namespace=args.namespace,
        image=args.image,
        app_in_image=_app_path_in_image(args.app, args.app_path),
        app_file=target if args.app_configmap else None,
        storage_class=args.storage_class,
    )
    try:
        rendered = render(app, manifest, options)
    except ValueError as exc:
        _error(str(exc))
        return 1
    what = f"app {app.name!r} ({args.app})"
    if args.dry_run and not args.output:
        sys.stdout.write(render_stream(rendered, what))
        return 0
    folder = args.output
    temporary = None
    if not folder:
        import tempfile

        temporary = folder = tempfile.mkdtemp(prefix="neutrino-deploy-")
    try:
        write_output(rendered, folder, what)
        pools = ", ".join(f"{p.name} ({p.mode})" for p in plan_pools(app))
        print(f"wrote {folder} (namespace {options.namespace}, pools: {pools})", file=sys.stderr)
        if args.dry_run:
            return 0
        kubectl = shutil.which(args.kubectl) or args.kubectl
        command = [kubectl, "apply", "-k", folder]
        print("$ " + " ".join(command), file=sys.stderr)
        try:
            return subprocess.call(command)
        except OSError as exc:
            _error(f"cannot run {args.kubectl}: {exc} (install kubectl, or use --dry-run --output DIR)")
            return 1
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


def _split(spec: str) -> Tuple[str, Optional[str]]:
    from ._loader import split_spec

    return split_spec(spec)
