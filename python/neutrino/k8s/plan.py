"""What ``neutrino deploy`` decides before it renders anything: the pools an app uses (:class:`PoolPlan`), the
options of one rendering (:class:`DeployOptions`), and the constants every object shares (image, paths, ports,
scaling defaults, resources)."""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

from .._loader import split_spec
from .._version import __version__
from ..app import App

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
#: A sync worker's call lane: its gateways' calls without HTTP (docs/architecture.md, "The call lane").
WORKER_LANE_PORT = 8001
NATS_CLIENT_PORT = 4222
NATS_MONITOR_PORT = 8222
NATS_CLUSTER_PORT = 6222
NATS_SERVICE = "nats"
#: The headless Service of the nats StatefulSet: stable per-pod DNS names (nats-0.nats-headless) for the cluster
#: routes, the clients' server list and KEDA's per-node queries.
NATS_HEADLESS_SERVICE = "nats-headless"
#: nats-server pods: a 3-node JetStream cluster, which keeps working (and loses nothing) with one node down.
NATS_REPLICAS = 3
NATS_CLUSTER_NAME = "neutrino"
#: Servers keeping each stream (--stream-replicas of the gateway and the workers).
STREAM_REPLICAS = 3
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
    #: The Ingress in front of the gateway (the only way in by default; a LoadBalancer is an explicit overlay):
    #: its host (None: any), the Secret holding its TLS certificate, its ingressClassName (None: the default).
    ingress_host: Optional[str] = None
    tls_secret: str = "neutrino-tls"
    ingress_class: Optional[str] = None


#: The Secret with the NATS passwords (keys: ``gateway``, ``route``, ``worker-<pool>``), made by
#: ``neutrino deploy`` in ``secrets/`` (never in the rendered manifests) or by hand.
NATS_SECRET = "neutrino-nats-auth"
#: The Secret with the API keys file (key ``api-keys.json``, written by ``neutrino keys create``).
API_KEYS_SECRET = "neutrino-api-keys"
API_KEYS_DIR = "/var/run/neutrino/keys"
NATS_PASSWORD_DIR = "/var/run/neutrino/nats"


#: The user the NATS nodes' route connections log in as (its password is the Secret's key ``route``).
ROUTE_USER = "route"
#: The Secret's key holding routes.conf, the cluster's route URLs with that password.
ROUTES_CONF_KEY = "routes.conf"


def nats_secret_key(user: str) -> str:
    """The key of ``user``'s password in NATS_SECRET (``worker_fast`` → ``worker-fast``)."""
    return user.replace("_", "-")


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



def app_path_in_image(spec: str, app_path: Optional[str] = None) -> str:
    """``--app`` as the workers see it inside the image: ``app_path`` when given, else a file APP moved to
    :data:`APP_DIR` (``path/to/app.py:attr`` → ``/opt/neutrino/app/app.py:attr``); a module name stays as it is."""
    if app_path:
        return app_path
    target, attr = split_spec(spec)
    if target.endswith(".py") or "/" in target or os.sep in target:
        name = f"{APP_DIR}/{os.path.basename(target)}"
        return f"{name}:{attr}" if attr else name
    return spec
