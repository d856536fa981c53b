"""The Kubernetes objects of a Neutrino deployment, as plain dicts: nats-server with JetStream, the gateway, one
workload per pool with its autoscaler, and the network policies. :mod:`neutrino.k8s.kustomize` arranges them into
files."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ..natsauth import GATEWAY_USER, authorization_from_env, env_name, is_safe_password, worker_user
from .plan import (
    API_KEYS_DIR,
    API_KEYS_SECRET,
    APP_DIR,
    CONCURRENCY,
    DASHBOARD_DIR,
    DATA_DIR,
    GATEWAY_PORT,
    GATEWAY_REPLICAS,
    GPU_NODE_SELECTOR,
    GPU_TOLERATIONS,
    IMAGE_NAME,
    INITIAL_REPLICAS,
    MANIFEST_DIR,
    MANIFEST_FILE,
    NATS_CLIENT_PORT,
    NATS_CLUSTER_NAME,
    NATS_CLUSTER_PORT,
    NATS_HEADLESS_SERVICE,
    NATS_IMAGE,
    NATS_MONITOR_PORT,
    NATS_PASSWORD_DIR,
    NATS_REPLICAS,
    NATS_SECRET,
    NATS_SERVICE,
    PART_OF,
    PRESTOP_SLEEP_SECS,
    RESOURCES,
    ROUTES_CONF_KEY,
    ROUTE_USER,
    RUN_AS,
    SCALING,
    STREAM_REPLICAS,
    TASK_STREAM,
    TERMINATION_SLACK_SECS,
    WORKER_LANE_PORT,
    WORKER_PORT,
    DeployOptions,
    PoolPlan,
    nats_secret_key,
)

__all__ = [
    "NATS_CONF",
    "NATS_LABELS",
    "GATEWAY_LABELS",
    "WORKER_LABELS",
    "nats_monitoring_endpoint",
    "nats_pod_host",
    "nats_url",
    "nats_conf",
    "render_nats",
    "render_gateway",
    "render_pool",
    "render_network_policies",
]


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


# Tracing's hook: an optional ConfigMap whose keys become every Neutrino container's environment. Create it with
# OTEL_EXPORTER_OTLP_ENDPOINT (and any other OTEL_* variable) to turn tracing on; without it the pods start as before.
TRACING_CONFIGMAP = "neutrino-tracing"
_TRACING_ENV_FROM: List[Dict[str, Any]] = [{"configMapRef": {"name": TRACING_CONFIGMAP, "optional": True}}]

_POD_IP: Dict[str, Any] = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


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
    """host:port of nats-server's monitoring port as KEDA (in its own namespace) reaches it: the headless Service.

    KEDA's nats-jetstream scaler sees ``cluster_size`` 3 in ``/jsz`` and then reads the consumer's numbers from
    the consumer's leader, which it addresses as ``<server_name>.<this host>`` (``server_name`` is the pod name,
    so that is the pod's own DNS name); a follower's view of ``num_pending``/``num_ack_pending`` can lag."""
    return f"{NATS_HEADLESS_SERVICE}.{namespace}.svc.cluster.local:{NATS_MONITOR_PORT}"


def nats_pod_host(ordinal: int) -> str:
    """The stable DNS name of nats pod ``ordinal`` inside the namespace (``nats-0.nats-headless``)."""
    return f"{NATS_SERVICE}-{ordinal}.{NATS_HEADLESS_SERVICE}"


def nats_url(replicas: int = NATS_REPLICAS) -> str:
    """``--nats`` of the gateway and the workers: every node of the cluster (the client fails over between them)."""
    return ",".join(f"nats://{nats_pod_host(i)}:{NATS_CLIENT_PORT}" for i in range(replicas))


def nats_conf(replicas: int = NATS_REPLICAS) -> str:
    """nats.conf of the StatefulSet's pods: with several replicas, one node of a JetStream cluster whose routes
    are the pods' DNS names."""
    text = f"""# nats-server configuration (JetStream on the PVC mounted at {DATA_DIR}).
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
# Users and permissions (one per pool, the gateway's); passwords from the Secret {NATS_SECRET}.
include ./auth.conf
"""
    if replicas > 1:
        text += f"""# One node of a {replicas}-node cluster: routes to every pod by its stable DNS name (its own route is ignored),
# listed in routes.conf (mounted from the Secret {NATS_SECRET}: each URL carries the route password). A route
# connection must log in as `{ROUTE_USER}`: nothing else in the cluster network can join as a node and read every
# subject. no_advertise: clients use the --nats list they are given, not pod IPs gossiped by the servers.
cluster {{
  name: {NATS_CLUSTER_NAME}
  port: {NATS_CLUSTER_PORT}
  authorization {{
    user: {ROUTE_USER}
    password: ${env_name(ROUTE_USER)}
    timeout: 2
  }}
  include ./routes.conf
  connect_retries: 120
  no_advertise: true
}}
"""
    return text


def routes_conf(password: str, replicas: int = NATS_REPLICAS) -> str:
    """routes.conf of the NATS Secret: the cluster's routes, each URL with the route user's password (nats-server
    substitutes variables only in whole values, not inside a URL, hence a file of the Secret)."""
    if not is_safe_password(password):
        raise ValueError("the route password must be letters and digits")
    routes = "\n".join(
        f"  nats://{ROUTE_USER}:{password}@{nats_pod_host(i)}:{NATS_CLUSTER_PORT}" for i in range(replicas)
    )
    return f"# The NATS cluster's routes (see nats.conf's cluster block). Secret: keep out of version control.\nroutes: [\n{routes}\n]\n"


NATS_CONF = nats_conf()

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


def _nats_users(plans: Sequence[PoolPlan]) -> List[str]:
    return [GATEWAY_USER, *(worker_user(plan.name) for plan in plans)]


def _password_env(user: str) -> Dict[str, Any]:
    return {
        "name": env_name(user),
        "valueFrom": {"secretKeyRef": {"name": NATS_SECRET, "key": nats_secret_key(user)}},
    }


def _nats_client(user: str) -> Dict[str, Any]:
    """What a gateway or worker pod needs to log in to NATS as ``user``: its flags, and the Secret's key mounted
    as a file (a file, not a variable: it can be rotated without a restart of the pod spec)."""
    return {
        "args": ["--nats-user", user, "--nats-password-file", f"{NATS_PASSWORD_DIR}/password"],
        "mount": {"name": "nats-password", "mountPath": NATS_PASSWORD_DIR, "readOnly": True},
        "volume": {
            "name": "nats-password",
            "secret": {
                "secretName": NATS_SECRET,
                "items": [{"key": nats_secret_key(user), "path": "password"}],
                "defaultMode": 0o400,
            },
        },
    }


def render_nats(options: DeployOptions, plans: Sequence[PoolPlan] = ()) -> List[Dict[str, Any]]:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata("nats-config", NATS_LABELS),
        "data": {
            "nats.conf": nats_conf(NATS_REPLICAS),
            "auth.conf": authorization_from_env(plan.name for plan in plans),
        },
    }
    ports = [
        {"name": "client", "port": NATS_CLIENT_PORT, "targetPort": "client"},
        {"name": "monitor", "port": NATS_MONITOR_PORT, "targetPort": "monitor"},
    ]
    cluster_port = {"name": "cluster", "port": NATS_CLUSTER_PORT, "targetPort": "cluster"}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(NATS_SERVICE, NATS_LABELS),
        "spec": {"selector": dict(NATS_LABELS), "ports": ports},
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(NATS_HEADLESS_SERVICE, NATS_LABELS),
        # Not-ready pods too: the routes of a forming cluster must resolve before any node is ready.
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": dict(NATS_LABELS),
            "ports": [*ports, cluster_port],
        },
    }
    container = {
        "name": "nats",
        "image": NATS_IMAGE,
        "command": ["nats-server", "--config", "/etc/nats/nats.conf"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *(_password_env(user) for user in _nats_users(plans)),
            _password_env(ROUTE_USER),
        ],
        "ports": [
            {"name": "client", "containerPort": NATS_CLIENT_PORT},
            {"name": "cluster", "containerPort": NATS_CLUSTER_PORT},
            {"name": "monitor", "containerPort": NATS_MONITOR_PORT},
        ],
        # Started = JetStream is on (a node waiting for its peers is not killed); ready = caught up with the
        # cluster (/healthz checks the meta leader and every stream and consumer it holds), which is what the
        # rolling update and the disruption budget wait for before taking the next node down.
        "startupProbe": {
            "httpGet": {"path": "/healthz?js-enabled-only=true", "port": "monitor"},
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
            "serviceName": NATS_HEADLESS_SERVICE,
            "replicas": NATS_REPLICAS,
            # All pods at once: a node only turns ready once the cluster has a quorum, so an ordered start-up
            # would wait for nats-0 forever.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": dict(NATS_LABELS)},
            "template": {
                "metadata": {"labels": dict(NATS_LABELS)},
                "spec": {
                    "automountServiceAccountToken": False,
                    # One node per Kubernetes node: losing a machine costs one replica of each stream, never two.
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "labelSelector": {"matchLabels": dict(NATS_LABELS)},
                                    "topologyKey": "kubernetes.io/hostname",
                                }
                            ]
                        }
                    },
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    "volumes": [
                        {
                            # nats.conf and auth.conf from the ConfigMap, routes.conf (URLs with the route
                            # password) from the Secret.
                            "name": "config",
                            "projected": {
                                "sources": [
                                    {"configMap": {"name": "nats-config"}},
                                    {"secret": {"name": NATS_SECRET, "items": [{"key": ROUTES_CONF_KEY, "path": "routes.conf"}]}},
                                ]
                            },
                        },
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
        "--stream-replicas", str(STREAM_REPLICAS),
        "--manifest", f"{MANIFEST_DIR}/{MANIFEST_FILE}",
        "--dashboard-dir", DASHBOARD_DIR,
    ]  # fmt: skip
    # No --http-pool: the gateway finds each fast pod from its heartbeats (the URL it announces with its pod IP), adds
    # it when it is ready and stops routing to it the moment it says it is stopping (docs/architecture.md).
    for plan in plans:
        low, high, target, window = SCALING[plan.mode]
        target_text = f"{target / 100:g}" if plan.mode == "sync" else str(target)
        args += ["--scale", f"{plan.name}={low}:{high}:{target_text}:{window}"]
    args += ["--host", "0.0.0.0", "--port", str(GATEWAY_PORT), "--log-format", "json"]
    # Last, so that overlays patching arguments by position keep working.
    args += [*_nats_client(GATEWAY_USER)["args"], "--api-keys", f"{API_KEYS_DIR}/api-keys.json"]
    return args


def render_gateway(plans: Sequence[PoolPlan], options: DeployOptions) -> List[Dict[str, Any]]:
    container = {
        "name": "gateway",
        "image": IMAGE_NAME,
        "command": ["neutrino-gateway"],
        "args": _gateway_args(plans),
        "env": _pod_env(),
        "envFrom": _TRACING_ENV_FROM,
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        **_probes("http"),
        "lifecycle": _prestop(),
        "resources": RESOURCES["gateway"],
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            _nats_client(GATEWAY_USER)["mount"],
            {"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True},
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
                        _nats_client(GATEWAY_USER)["volume"],
                        # `neutrino keys create --file api-keys.json`, then
                        # `kubectl create secret generic neutrino-api-keys --from-file=api-keys.json`.
                        {"name": "api-keys", "secret": {"secretName": API_KEYS_SECRET, "defaultMode": 0o400}},
                    ],
                },
            },
            "volumeClaimTemplates": [_pvc_template("data", "5Gi", options.storage_class)],
        },
    }
    # Cluster-internal; the way in from outside is the Ingress (TLS). k8s/overlays/loadbalancer makes it public.
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata("neutrino", GATEWAY_LABELS),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(GATEWAY_LABELS),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            # Dashboard sessions live in the memory of the replica that logged the browser in: keep a client on one
            # replica (the API itself needs no affinity: every replica answers for every task).
            "sessionAffinity": "ClientIP",
        },
    }
    rule: Dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": "neutrino", "port": {"name": "http"}}},
                }
            ]
        }
    }
    tls: Dict[str, Any] = {"secretName": options.tls_secret}
    if options.ingress_host:
        rule["host"] = options.ingress_host
        tls["hosts"] = [options.ingress_host]
    ingress_spec: Dict[str, Any] = {"tls": [tls], "rules": [rule]}
    if options.ingress_class:
        ingress_spec["ingressClassName"] = options.ingress_class
    # ingress-nginx sends to the pods directly (past the Service's affinity): a cookie keeps a browser on the
    # replica holding its dashboard session.
    sticky = {
        "nginx.ingress.kubernetes.io/affinity": "cookie",
        "nginx.ingress.kubernetes.io/session-cookie-name": "neutrino_replica",
        "nginx.ingress.kubernetes.io/session-cookie-samesite": "Strict",
    }
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata("neutrino", GATEWAY_LABELS, sticky),
        "spec": ingress_spec,
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
    return [statefulset, service, ingress, headless, pdb]


def _worker_args(plan: PoolPlan, options: DeployOptions) -> List[str]:
    args = ["--mode", "http" if plan.mode == "sync" else "nats", "--pool", plan.name, "--app", options.app_in_image]
    args += ["--task-log", "nats", "--nats", nats_url(), "--stream-replicas", str(STREAM_REPLICAS)]
    args += _nats_client(worker_user(plan.name))["args"]
    args += ["--host", "0.0.0.0", "--port", str(WORKER_PORT)]
    if plan.mode == "sync":
        args += ["--advertise-host", "$(POD_IP)"]  # the URL in its heartbeats, where gateways send sync calls
        # The call lane on a fixed port, so the network policy can let the gateways reach it.
        args += ["--call-lane-port", str(WORKER_LANE_PORT)]
    args += ["--concurrency", str(CONCURRENCY[plan.mode]), "--worker-id", "$(POD_NAME)"]
    args += ["--drain-grace", str(plan.drain_secs), "--log-format", "json"]
    return args


def render_pool(plan: PoolPlan, options: DeployOptions) -> List[Dict[str, Any]]:
    labels = _pool_labels(plan)
    selector = _pool_selector(plan)
    client = _nats_client(worker_user(plan.name))
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, client["mount"]]
    volumes: List[Dict[str, Any]] = [_tmp_volume(), client["volume"]]
    if options.app_file:
        mounts.append({"name": "app", "mountPath": APP_DIR, "readOnly": True})
        volumes.append({"name": "app", "configMap": {"name": "neutrino-app"}})
    container = {
        "name": "worker",
        "image": IMAGE_NAME,
        "command": ["neutrino-worker"],
        "args": _worker_args(plan, options),
        "env": _pod_env() + ([_POD_IP] if plan.mode == "sync" else []),
        "envFrom": _TRACING_ENV_FROM,
        "ports": [{"name": "http", "containerPort": WORKER_PORT}]
        + ([{"name": "call-lane", "containerPort": WORKER_LANE_PORT}] if plan.mode == "sync" else []),
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
                                "useHttps": "false",
                            },
                        }
                    ],
                },
            }
        )
    objects.append(_pdb(plan.object_name, selector, labels, maxUnavailable=1))
    return objects


def render_network_policies(plans: Sequence[PoolPlan]) -> List[Dict[str, Any]]:
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
        # The only entry from outside the namespace: the gateway's HTTP port (the Ingress controller, or the
        # LoadBalancer of k8s/overlays/loadbalancer).
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
                {"from": [gateway_pods], "ports": [{"protocol": "TCP", "port": WORKER_PORT},
                                                   {"protocol": "TCP", "port": WORKER_LANE_PORT}]},
                {"from": [namespace("monitoring")], "ports": [{"protocol": "TCP", "port": WORKER_PORT}]},
            ],
        ),
        # NATS: clients are the gateway and the workers (each logging in as its own user, see neutrino.natsauth);
        # the nodes route to each other; the monitoring port also
        # serves KEDA's scaler (namespace "keda") and Prometheus exporters (namespace "monitoring").
        policy(
            "nats-ingress",
            {"matchLabels": {"app.kubernetes.io/component": "queue"}},
            [
                {"from": [gateway_pods, worker_pods], "ports": [{"protocol": "TCP", "port": NATS_CLIENT_PORT}]},
                {"from": [pods(NATS_LABELS)], "ports": [{"protocol": "TCP", "port": NATS_CLUSTER_PORT}]},
                {
                    "from": [gateway_pods, namespace("keda"), namespace("monitoring")],
                    "ports": [{"protocol": "TCP", "port": NATS_MONITOR_PORT}],
                },
            ],
        ),
    ]


