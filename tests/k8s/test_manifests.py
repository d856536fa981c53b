"""The Kubernetes manifests, checked without a cluster.

1. `kubectl kustomize` renders `k8s/` (the base), `k8s/base` and every overlay.
2. Every rendered object validates against the Kubernetes OpenAPI schemas (`kubernetes-validate`, strict: unknown
   fields fail, as `kubectl apply`'s server-side strict field validation would), and each KEDA ScaledObject against
   the ScaledObject CRD schema vendored in tests/k8s/schemas/ (also strict).
3. The shape the design asks for: replicas, autoscalers, probes, drain, security, PDBs, NetworkPolicy, storage.
4. `k8s/base` is what `neutrino deploy examples/app.py` renders, and its manifest ConfigMap is the example app's.
5. The real binaries accept each container's command line: the three nats-server pods with the rendered nats.conf
   (forming one JetStream cluster on loopback), the workers and both gateway replicas with their rendered args
   (addresses rewritten to loopback, paths to a temp dir); the streams are at R3;
   every probe path answers 200 on the declared port; the KEDA stream/consumer names are what the processes
   provision (nats-server's /jsz); a sync and an async task go through the rendered topology.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from conftest import (
    K8S_DIR,
    REPO_ROOT,
    SCHEMA_DIR,
    VARIANTS,
    e2e,
    find,
    kustomize,
    one,
    parse_stream,
    rendered,
    workloads,
)

sys.path.insert(0, str(REPO_ROOT / "python"))

from neutrino._loader import load_app  # noqa: E402
from neutrino.manifest import build_openapi  # noqa: E402

EXAMPLE_APP = REPO_ROOT / "examples" / "app.py"
K8S_VERSIONS = ["1.29.0", "1.37.0"]  # the oldest version the manifests target, and the newest the validator has


# ----------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kustomize_renders(variant):
    objects = rendered(variant)
    assert objects, f"{variant} renders nothing"
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name"), obj
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "neutrino", f"{obj['kind']} {obj['metadata']['name']}"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "neutrino"


def test_k8s_root_is_the_base():
    """`kubectl apply -k k8s/` applies exactly the base."""
    assert rendered("default") == rendered("base")


# ---------------------------------------------------------------------------------------------- validation


def _strict(schema: Any) -> Any:
    """The CRD schema with additionalProperties: false wherever it lists properties (unknown fields fail)."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _scaledobject_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMA_DIR / "keda-scaledobject-v1alpha1.json").read_text())
    strict = _strict(schema)
    strict["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is checked by Kubernetes, not the CRD
    cls = jsonschema.validators.validator_for(strict)
    cls.check_schema(strict)
    return cls(strict)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", ["base", "dev", "hpa-only"])
def test_objects_validate_against_kubernetes_schemas(variant, version):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (python[test] extras)")
    scaled_objects = _scaledobject_validator()
    checked = set()
    for obj in rendered(variant):
        where = f"{variant}: {obj['kind']} {obj['metadata']['name']}"
        if obj["apiVersion"] == "keda.sh/v1alpha1":
            assert obj["kind"] == "ScaledObject", where
            errors = sorted(scaled_objects.iter_errors(obj), key=lambda e: list(e.path))
            assert not errors, f"{where}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
        else:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{where} (Kubernetes {version}): {'.'.join(map(str, exc.path))}: {exc.message}")
        checked.add(obj["kind"])
    assert {"Deployment", "StatefulSet", "Service", "NetworkPolicy", "PodDisruptionBudget"} <= checked


def test_kubernetes_validation_rejects_a_bad_object():
    """The validation above has teeth: an unknown field and a wrong type in a Deployment both fail."""
    kv = pytest.importorskip("kubernetes_validate")
    good = copy.deepcopy(one(rendered("base"), "Deployment", "worker-fast"))
    kv.validate(good, K8S_VERSIONS[0], strict=True)
    bad = copy.deepcopy(good)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[0], strict=True)
    bad = copy.deepcopy(good)
    bad["spec"]["replicas"] = "3"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[0], strict=True)


def test_scaledobject_schema_rejects_a_bad_object():
    """The vendored CRD schema is really applied (strict): a wrong type and an unknown field both fail."""
    validator = _scaledobject_validator()
    good = copy.deepcopy(one(rendered("base"), "ScaledObject", "worker-async"))
    assert not list(validator.iter_errors(good))
    bad = copy.deepcopy(good)
    bad["spec"]["minReplicaCount"] = "one"
    assert list(validator.iter_errors(bad))
    bad = copy.deepcopy(good)
    bad["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 10  # trigger metadata values are strings
    assert list(validator.iter_errors(bad))
    bad = copy.deepcopy(good)
    bad["spec"]["maxReplicas"] = 5  # an HPA field, not a ScaledObject one
    assert list(validator.iter_errors(bad))


# ------------------------------------------------------------------------------------------------ the shape


def _pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def _container(workload: dict) -> dict:
    containers = _pod(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def _arg(container: dict, flag: str) -> str | None:
    args = container.get("args", [])
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    assert len(values) <= 1, f"{flag} given {len(values)} times"
    return values[0] if values else None


def _task_timeouts(pool: str) -> list[int]:
    app = load_app(str(EXAMPLE_APP))
    return [spec.timeout_ms for spec in app.tasks.values() if spec.pool == pool]


def test_base_topology():
    objs = rendered("base")
    assert one(objs, "Namespace", "neutrino")

    nats = one(objs, "StatefulSet", "nats")
    conf = one(objs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert re.search(r"^port: 4222$", conf, re.M) and re.search(r"^http_port: 8222$", conf, re.M)
    assert re.search(r"^jetstream \{", conf, re.M) and "store_dir: /data/jetstream" in conf
    assert [c["metadata"]["name"] for c in nats["spec"]["volumeClaimTemplates"]] == ["data"]
    assert {p["containerPort"] for p in _container(nats)["ports"]} == {4222, 6222, 8222}
    nats_service = one(objs, "Service", "nats")
    assert {p["port"] for p in nats_service["spec"]["ports"]} == {4222, 8222}

    # NATS is a 3-node JetStream cluster: one pod per Kubernetes node, routes by the pods' stable DNS names
    # (headless Service), a PVC each, started all at once, at most one down by choice.
    assert nats["spec"]["replicas"] == 3 and nats["spec"]["podManagementPolicy"] == "Parallel"
    headless = one(objs, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in headless["spec"]["ports"]} >= {4222, 6222, 8222}
    [anti] = _pod(nats)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"].items() <= _pod_labels(nats).items()
    assert one(objs, "PodDisruptionBudget", "nats")["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": nats["spec"]["selector"]["matchLabels"]}}
    pods = [f"nats-{i}.{headless['metadata']['name']}" for i in range(3)]
    assert re.search(r"^server_name: \$POD_NAME$", conf, re.M), "server_name is the pod name (unique, and KEDA's key)"
    cluster = re.search(r"^cluster \{(.*?)^\}", conf, re.M | re.S)
    assert cluster, conf
    assert re.search(r"^\s*port: 6222$", cluster.group(1), re.M)
    # Routes log in: the cluster block requires the route user, whose password comes from the Secret; the route
    # URLs (with that password) are in routes.conf, a key of the Secret projected next to nats.conf.
    assert re.search(r"authorization \{\s*user: route\s*password: \$NATS_PW_ROUTE\s", cluster.group(1)), cluster.group(1)
    assert "include ./routes.conf" in cluster.group(1) and "nats://" not in conf
    config_volume = next(v for v in _pod(nats)["volumes"] if v["name"] == "config")
    assert config_volume["projected"]["sources"] == [
        {"configMap": {"name": "nats-config"}},
        {"secret": {"name": "neutrino-nats-auth", "items": [{"key": "routes.conf", "path": "routes.conf"}]}}]
    from neutrino.k8s.objects import routes_conf
    assert re.findall(r"nats://route:pSecret0123456789@(\S+):6222", routes_conf("pSecret0123456789")) == pods
    assert re.search(r"^\s*no_advertise: true$", cluster.group(1), re.M)
    cluster_urls = ",".join(f"nats://{pod}:4222" for pod in pods)

    gateway = one(objs, "StatefulSet", "gateway")
    assert gateway["spec"]["replicas"] == 2
    assert [c["metadata"]["name"] for c in gateway["spec"]["volumeClaimTemplates"]] == ["data"]
    c = _container(gateway)
    assert c["command"] == ["neutrino-gateway"]
    assert _arg(c, "--task-log") == "sqlite:/data/tasks.db"
    assert "--events-via-nats" in c["args"]
    assert _arg(c, "--gateway-id") == "$(POD_NAME)"
    assert any(e["name"] == "POD_NAME" and e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" for e in c["env"])
    assert _arg(c, "--nats") == cluster_urls and _arg(c, "--stream-replicas") == "3"
    assert _arg(c, "--manifest") == "/etc/neutrino/openapi.json"
    assert _arg(c, "--dashboard-dir") == "/opt/neutrino/dashboard"
    # The fast pods are found from their heartbeats (no static list): each announces its pod IP.
    assert _arg(c, "--http-pool") is None
    fast = _container(one(objs, "Deployment", "worker-fast"))
    assert _arg(fast, "--advertise-host") == "$(POD_IP)"
    assert any(e["name"] == "POD_IP" and e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP" for e in fast["env"])
    # Tracing's hook: an optional ConfigMap (OTEL_EXPORTER_OTLP_ENDPOINT, ...) in every Neutrino container's environment.
    for name, kind in (("gateway", "StatefulSet"), ("worker-fast", "Deployment"), ("worker-async", "Deployment"),
                       ("worker-gpu", "Deployment")):
        env_from = _container(one(objs, kind, name)).get("envFrom")
        assert env_from == [{"configMapRef": {"name": "neutrino-tracing", "optional": True}}], (name, env_from)
    assert (_arg(c, "--host"), _arg(c, "--port"), _arg(c, "--log-format")) == ("0.0.0.0", "8080", "json")
    manifest_volume = next(v for v in _pod(gateway)["volumes"] if v["name"] == "manifest")
    assert manifest_volume["configMap"]["name"].startswith("neutrino-manifest")
    assert find(objs, "ConfigMap", manifest_volume["configMap"]["name"]), "the gateway mounts a ConfigMap that exists"
    public = one(objs, "Service", "neutrino")
    assert public["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    # Nothing is public by default: every Service is ClusterIP (or headless); the way in is the Ingress, with TLS.
    for service in find(objs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
    ingress = one(objs, "Ingress", "neutrino")
    assert ingress["spec"]["tls"] == [{"secretName": "neutrino-tls"}]
    [path] = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"] == {"name": "neutrino", "port": {"name": "http"}}

    fast = one(objs, "Deployment", "worker-fast")
    assert fast["spec"]["replicas"] == 3
    c = _container(fast)
    assert c["command"] == ["neutrino-worker"]
    assert [_arg(c, f) for f in ("--mode", "--pool", "--host", "--port", "--task-log", "--nats", "--stream-replicas")] == [
        "http", "fast", "0.0.0.0", "8000", "nats", cluster_urls, "3"]
    fast_service = one(objs, "Service", "fast")
    assert fast_service["spec"]["ports"][0]["port"] == 8000
    assert fast_service["spec"]["selector"] == fast["spec"]["selector"]["matchLabels"]
    hpa = one(objs, "HorizontalPodAutoscaler", "worker-fast")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker-fast"}
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["averageUtilization"] == 70
    assert "cpu" in c["resources"]["requests"], "a CPU HPA needs CPU requests"

    for pool, low, high, lag in (("async", 1, 50, "10"), ("gpu", 0, 5, "1")):
        deployment = one(objs, "Deployment", f"worker-{pool}")
        c = _container(deployment)
        assert [_arg(c, f) for f in ("--mode", "--pool", "--task-log", "--host", "--port", "--nats", "--stream-replicas")] == [
            "nats", pool, "nats", "0.0.0.0", "8000", cluster_urls, "3"]
        so = one(objs, "ScaledObject", f"worker-{pool}")
        assert so["spec"]["scaleTargetRef"]["name"] == f"worker-{pool}"
        assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (low, high)
        [trigger] = so["spec"]["triggers"]
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert meta["stream"] == "NEUTRINO_TASKS" and meta["consumer"] == f"pool_{pool}"
        assert meta["account"] == "$G" and meta["lagThreshold"] == lag
        # The headless Service: KEDA sees a 3-node cluster in /jsz and reads the consumer's leader, which it reaches
        # as <server_name>.<this host> = <pod>.nats-headless.neutrino.svc.cluster.local (the pod's own DNS name).
        host, _, port = meta["natsServerMonitoringEndpoint"].rpartition(":")
        assert host == "nats-headless.neutrino.svc.cluster.local"
        assert int(port) in {p["port"] for p in headless["spec"]["ports"]}
        assert meta["useHttps"] == "false"
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300

    gpu = one(objs, "Deployment", "worker-gpu")
    c = _container(gpu)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _pod(gpu)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in _pod(gpu)["tolerations"]


def test_drain_outlasts_the_longest_task():
    """terminationGracePeriodSeconds >= preStop + the pool's longest task timeout (+ drain), and --drain-grace
    lets a running task finish its whole timeout."""
    for deployment in find(rendered("base"), "Deployment"):
        pod, c = _pod(deployment), _container(deployment)
        pool = _arg(c, "--pool")
        timeout_s = math.ceil(max(_task_timeouts(pool)) / 1000)
        drain = float(_arg(c, "--drain-grace"))
        prestop = c["lifecycle"]["preStop"]["exec"]["command"]
        assert prestop[0] == "sleep" and 0 < int(prestop[1]) <= 15, prestop
        assert pod["terminationGracePeriodSeconds"] >= int(prestop[1]) + max(timeout_s, drain), pool
        if _arg(c, "--mode") == "nats":
            assert drain >= timeout_s, f"pool {pool}: --drain-grace {drain} < task timeout {timeout_s}"


@pytest.mark.parametrize("variant", ["base", "dev", "hpa-only"])
def test_pods_are_hardened_and_probed(variant):
    objs = rendered(variant)
    for workload in workloads(objs):
        name = workload["metadata"]["name"]
        pod = _pod(workload)
        assert pod["automountServiceAccountToken"] is False, name
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 1000, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, f"{name}: no writable /tmp"
            tmp = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp), name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for kind in ("livenessProbe", "readinessProbe"):
                probe = c[kind]["httpGet"]
                assert probe["port"] in ports, f"{name}: {kind} on undeclared port {probe['port']}"
            if c["name"] != "nats":
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
                annotations = workload["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/scrape"] == "true"
                assert annotations["prometheus.io/path"] == "/metrics"
                assert int(annotations["prometheus.io/port"]) in ports.values()
        # A PodDisruptionBudget selects every workload's pods.
        labels = workload["spec"]["template"]["metadata"]["labels"]
        pdbs = [p for p in find(objs, "PodDisruptionBudget")
                if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(pdbs) == 1, f"{variant}: {name} is covered by {len(pdbs)} PodDisruptionBudgets"


def _policy_allows(policy: dict, source_labels: dict | None, source_namespace: str | None, port: int) -> bool:
    for rule in policy["spec"].get("ingress") or []:
        if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "podSelector" in peer and source_labels is not None and source_namespace is None:
                if peer["podSelector"].get("matchLabels", {}).items() <= source_labels.items():
                    return True
            if "namespaceSelector" in peer and source_namespace is not None:
                if peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": source_namespace}:
                    return True
    return False


def test_network_policy():
    """Default deny; from outside only the gateway; workers from the gateway; nats from gateway + workers (and
    its monitoring port from KEDA)."""
    objs = rendered("base")
    policies = find(objs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]

    def labels(kind: str, name: str) -> dict:
        return one(objs, kind, name)["spec"]["template"]["metadata"]["labels"]

    def allowed(target: dict, port: int, source: dict | None = None, namespace: str | None = None) -> bool:
        applicable = [p for p in policies if p["spec"]["podSelector"].get("matchLabels", {}).items() <= target.items()]
        return any(_policy_allows(p, source, namespace, port) for p in applicable)

    gateway, nats = labels("StatefulSet", "gateway"), labels("StatefulSet", "nats")
    workers = [labels("Deployment", f"worker-{pool}") for pool in ("fast", "async", "gpu")]
    outsider = {"app": "something-else"}
    assert allowed(gateway, 8080, namespace="anywhere")
    assert allowed(gateway, 8080, outsider)
    for worker in workers:
        assert allowed(worker, 8000, gateway)
        assert not allowed(worker, 8000, outsider)
        assert not allowed(worker, 8000, namespace="anywhere")
        assert allowed(nats, 4222, worker)
    assert allowed(nats, 4222, gateway)
    assert not allowed(nats, 4222, outsider)
    assert not allowed(nats, 4222, namespace="anywhere")
    assert allowed(nats, 8222, namespace="keda"), "KEDA's nats-jetstream scaler reads /jsz"
    assert allowed(nats, 6222, nats), "the nats nodes route to each other"
    assert not allowed(nats, 6222, gateway) and not allowed(nats, 6222, namespace="anywhere")


def test_loadbalancer_only_in_its_overlay():
    """The public LoadBalancer is an explicit overlay; the base and the other overlays have none."""
    for variant in VARIANTS:
        services = find(rendered(variant), "Service")
        public = [s["metadata"]["name"] for s in services if s["spec"].get("type") == "LoadBalancer"]
        assert public == (["neutrino"] if variant == "loadbalancer" else []), variant


def test_nats_credentials_come_from_secrets():
    """NATS admits users only (a user per pool, the gateway's), their passwords in the Secret neutrino-nats-auth:
    the server reads them from its environment, each client from a file mounted from its own key. No password is
    in a rendered manifest; the gateway requires API keys from the Secret neutrino-api-keys."""
    objs = rendered("base")
    config = one(objs, "ConfigMap", next(c["metadata"]["name"] for c in find(objs, "ConfigMap")
                                         if c["metadata"]["name"].startswith("nats-config")))
    assert "include ./auth.conf" in config["data"]["nats.conf"]
    auth = config["data"]["auth.conf"]
    users = re.findall(r'"user": "([a-z0-9_]+)",\s*"password": \$(NATS_PW_[A-Z0-9_]+)', auth)
    assert dict(users) == {"gateway": "NATS_PW_GATEWAY", "worker_fast": "NATS_PW_WORKER_FAST",
                           "worker_async": "NATS_PW_WORKER_ASYNC", "worker_gpu": "NATS_PW_WORKER_GPU"}
    assert '"$JS.API.CONSUMER.MSG.NEXT.NEUTRINO_TASKS.pool_async"' in auth
    nats = _container(one(objs, "StatefulSet", "nats"))
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in nats["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {**{var: {"name": "neutrino-nats-auth", "key": user.replace("_", "-")} for user, var in users},
                    "NATS_PW_ROUTE": {"name": "neutrino-nats-auth", "key": "route"}}
    for kind, name, user in [("StatefulSet", "gateway", "gateway"), ("Deployment", "worker-fast", "worker_fast"),
                             ("Deployment", "worker-async", "worker_async"), ("Deployment", "worker-gpu", "worker_gpu")]:
        workload = one(objs, kind, name)
        c = _container(workload)
        assert _arg(c, "--nats-user") == user
        password_file = _arg(c, "--nats-password-file")
        mount = next(m for m in c["volumeMounts"] if password_file.startswith(m["mountPath"] + "/"))
        volume = next(v for v in _pod(workload)["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "neutrino-nats-auth"
        assert volume["secret"]["items"] == [{"key": user.replace("_", "-"), "path": "password"}]
    gateway = one(objs, "StatefulSet", "gateway")
    keys = _arg(_container(gateway), "--api-keys")
    assert keys == "/var/run/neutrino/keys/api-keys.json"
    assert any(v.get("secret", {}).get("secretName") == "neutrino-api-keys" for v in _pod(gateway)["volumes"])
    assert not find(objs, "Secret"), "the rendered manifests hold no secret"


def test_deploy_writes_the_nats_secret_apart(tmp_path):
    """`neutrino deploy --output DIR` writes DIR/secrets/: random passwords, mode 0600, kept on a second run."""
    out = tmp_path / "deploy"
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "neutrino.cli", "deploy", "examples/app.py", "--dry-run", "--output",
                        str(out)], cwd=REPO_ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "python")})
        secret_file = out / "secrets" / "nats-auth.yaml"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        text = secret_file.read_text()
        if _ == 0:
            first = text
    assert text == first, "a second run keeps the passwords"
    [secret] = parse_stream(text)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "neutrino-nats-auth"
    data = secret["stringData"]
    routes = data.pop("routes.conf")
    assert set(data) == {"gateway", "route", "worker-fast", "worker-async", "worker-gpu"}
    assert len(set(data.values())) == 5 and all(len(v) >= 24 for v in data.values())
    assert not any(v in (out / "core" / "nats.yaml").read_text() for v in data.values())
    # The route URLs carry the route password (and no other).
    assert re.findall(r"nats://route:(\w+)@", routes) == [data["route"]] * 3


def test_dev_overlay():
    objs = rendered("dev")
    assert not find(objs, "ScaledObject") and not find(objs, "HorizontalPodAutoscaler")
    for workload in workloads(objs):
        assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]
    # One nats-server, not a cluster: no routes, and every client on that server with its streams at R1.
    conf = one(objs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "cluster {" not in conf and "store_dir: /data/jetstream" in conf
    from neutrino.k8s.objects import nats_conf
    assert conf == nats_conf(1), "k8s/overlays/dev/single-nats.yaml is nats_conf(1) of python/neutrino/k8s/objects.py"
    for workload in workloads(objs):
        c = _container(workload)
        if c["name"] != "nats":
            assert (_arg(c, "--nats"), _arg(c, "--stream-replicas")) == ("nats://nats:4222", "1"), workload["metadata"]["name"]
    gpu = one(objs, "Deployment", "worker-gpu")
    assert "nodeSelector" not in _pod(gpu) and "tolerations" not in _pod(gpu)
    assert "nvidia.com/gpu" not in json.dumps(_container(gpu)["resources"])
    _same_command_lines("dev")


def test_hpa_only_overlay():
    objs = rendered("hpa-only")
    assert not find(objs, "ScaledObject")
    for pool, low, high, target in (("async", 1, 50, "10"), ("gpu", 1, 5, "1")):
        hpa = one(objs, "HorizontalPodAutoscaler", f"worker-{pool}")
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"worker-{pool}"
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (low, high)
        [metric] = hpa["spec"]["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["metric"]["name"] == "neutrino_queue_depth"  # docs/observability-contract.md
        assert metric["external"]["metric"]["selector"]["matchLabels"] == {"pool": pool}
        assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": target}
    assert one(objs, "HorizontalPodAutoscaler", "worker-fast")["spec"]["metrics"][0]["type"] == "Resource"
    assert (K8S_DIR / "overlays" / "hpa-only" / "prometheus-adapter-rules.yaml").is_file()
    _same_command_lines("hpa-only")


def _same_command_lines(variant: str) -> None:
    """Overlays change replicas, resources and autoscalers, never a command line (the run test covers the base),
    except for the NATS servers a client is given and the streams' replica count (the dev overlay runs one server)."""
    def normalised(args: list[str] | None) -> list[str] | None:
        if args is None:
            return None
        out = list(args)
        for flag in ("--nats", "--stream-replicas"):
            if flag in out:
                out[out.index(flag) + 1] = "<" + flag + ">"
        return out

    base = {w["metadata"]["name"]: _container(w) for w in workloads(rendered("base"))}
    for workload in workloads(rendered(variant)):
        c = _container(workload)
        b = base[workload["metadata"]["name"]]
        assert (c.get("command"), normalised(c.get("args")), c["ports"]) == (
            b.get("command"), normalised(b.get("args")), b["ports"])


# ------------------------------------------------------------------------------ the base is `neutrino deploy`


def test_base_manifest_is_the_example_apps():
    text = (K8S_DIR / "base" / "core" / "openapi.json").read_text()
    assert json.loads(text) == build_openapi(load_app(str(EXAMPLE_APP))), (
        "k8s/base/core/openapi.json is stale: `neutrino deploy examples/app.py --dry-run --output k8s/base`")
    configmap = next(
        c for c in find(rendered("base"), "ConfigMap") if c["metadata"]["name"].startswith("neutrino-manifest"))
    assert json.loads(configmap["data"]["openapi.json"]) == json.loads(text)


def test_base_equals_neutrino_deploy_output(tmp_path):
    """k8s/base is `neutrino deploy examples/app.py --dry-run --output k8s/base`: the rendered objects match."""
    out = tmp_path / "deploy"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "python"))
    proc = subprocess.run(
        [sys.executable, "-m", "neutrino.cli", "deploy", "examples/app.py", "--dry-run", "--output", str(out)],
        cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert parse_stream(kustomize(out)) == rendered("base"), (
        "k8s/base differs from what `neutrino deploy examples/app.py` renders; regenerate it with "
        "`neutrino deploy examples/app.py --dry-run --output k8s/base`")


# ------------------------------------------------------------------------ the real binaries run the manifests


def _flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def _help_flags(binary: Path) -> set[str]:
    proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", proc.stdout + proc.stderr))


def _require_binaries() -> None:
    missing = e2e._binaries_missing()
    if missing:
        pytest.skip("Neutrino binaries not built: missing " + ", ".join(missing) + " (run `swift build`)")


def test_binaries_know_every_flag_of_the_manifests():
    _require_binaries()
    known = {"neutrino-gateway": _help_flags(e2e.GATEWAY_BIN), "neutrino-worker": _help_flags(e2e.WORKER_BIN)}
    for variant in ("base", "dev", "hpa-only"):
        for workload in workloads(rendered(variant)):
            c = _container(workload)
            if c["name"] == "nats":
                continue
            unknown = _flags(c["args"]) - known[c["command"][0]]
            assert not unknown, f"{variant}: {workload['metadata']['name']}: {c['command'][0]} does not know {unknown}"


class _Pod:
    """One pod of a rendered workload run as a local process: its argv and environment made local."""

    def __init__(self, workload: dict, ordinal: int, rewrites: dict[str, str], work_dir: Path):
        self.workload = workload
        self.kind = workload["kind"]
        base = workload["metadata"]["name"]
        self.name = f"{base}-{ordinal}" if self.kind == "StatefulSet" else f"{base}-local{ordinal}"
        self.container = _container(workload)
        self.env = {"POD_NAME": self.name}
        for item in self.container.get("env", []):
            if "value" in item:
                self.env[item["name"]] = item["value"]
            elif item["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP":
                self.env[item["name"]] = "127.0.0.1"  # every local pod is on loopback
            else:
                assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", item
        self.env["HOME"] = str(work_dir)
        self.work_dir = work_dir
        self.rewrites = rewrites
        self.proc: Any = None

    def argv(self, binaries: dict[str, str], extra: list[str] = ()) -> list[str]:
        command = [binaries[self.container["command"][0]], *self.container["command"][1:]]
        args = []
        previous = None
        for arg in self.container.get("args", []):
            # $(VAR) expansion, as the kubelet does it for args.
            arg = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: self.env.get(m.group(1), m.group(0)), arg)
            if previous == "--host":
                arg = "127.0.0.1"
            elif previous == "--port":
                arg = "0"  # the process picks a free port and prints it; the probes use what it printed
            else:
                for old, new in self.rewrites.items():
                    arg = arg.replace(old, new)
            assert not re.search(r"(^|[:=])/(data|etc/neutrino|opt/neutrino|var/run/neutrino)\b", arg), (
                f"unmapped container path {arg}")
            args.append(arg)
            previous = arg
        return [*command, *args, *extra]

    def port_of(self, port: Any) -> int:
        declared = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        number = declared.get(port, port)
        assert int(number) in declared.values(), f"{self.name}: port {port} is not declared"
        return int(number)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _probe_ok(url: str) -> bool:
    return e2e.http_request("GET", url, timeout=30).status == 200


def test_rendered_pods_run_on_the_real_binaries(launcher, tmp_path):
    _require_binaries()
    if not os.access(e2e.NATS_SERVER_BIN, os.X_OK):
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    objs = rendered("base")
    work = launcher.new_dir("k8s-run")
    binaries = {"neutrino-gateway": str(e2e.GATEWAY_BIN), "neutrino-worker": str(e2e.WORKER_BIN)}

    # The nats StatefulSet's pods, each nats-server with the rendered nats.conf: its paths into the pod's own temp
    # dir, its cluster port and the routes' pod DNS names onto loopback ports picked here (the client and monitoring
    # ports are free ones on the command line, which override the file's).
    nats_set = one(objs, "StatefulSet", "nats")
    nats_container = _container(nats_set)
    assert nats_container["command"][:2] == ["nats-server", "--config"]
    conf = one(objs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    auth_conf = one(objs, "ConfigMap", "nats-config")["data"]["auth.conf"]
    # The Secrets the operator creates: `neutrino deploy`'s NATS passwords, an API key file from `neutrino keys`.
    secret_out = work / "deploy"
    subprocess.run([sys.executable, "-m", "neutrino.cli", "deploy", "examples/app.py", "--dry-run", "--output",
                    str(secret_out)], cwd=REPO_ROOT, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "python")})
    nats_secret = parse_stream((secret_out / "secrets" / "nats-auth.yaml").read_text())[0]["stringData"]
    (work / "keys").mkdir()
    admin_key = subprocess.run([sys.executable, "-m", "neutrino.cli", "keys", "create", "--name", "ops", "--scopes",
                                "admin", "--file", str(work / "keys" / "api-keys.json")], check=True,
                               capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "python")}).stdout.strip()
    auth = {"Authorization": f"Bearer {admin_key}"}
    nats_env = {e["name"]: nats_secret[e["valueFrom"]["secretKeyRef"]["key"]] for e in nats_container["env"]
                if "secretKeyRef" in e.get("valueFrom", {})}
    replicas = nats_set["spec"]["replicas"]
    headless = nats_set["spec"]["serviceName"]
    route_ports = [_free_port() for _ in range(replicas)]
    nats_nodes = []
    for ordinal in range(replicas):
        pod_dir = work / f"nats-{ordinal}"
        local_dirs = {"/data/": f"{pod_dir}/data/", "/tmp/": f"{pod_dir}/tmp/"}
        (pod_dir / "tmp").mkdir(parents=True)
        text = re.sub(r"(?<![\w/])/(data|tmp)/", lambda m: local_dirs[m.group(0)], conf)
        text = re.sub(r"(?m)^(\s+)port: 6222$", rf"\g<1>listen: 127.0.0.1:{route_ports[ordinal]}", text)
        text = re.sub(rf"nats-(\d+)\.{re.escape(headless)}:6222", lambda m: f"127.0.0.1:{route_ports[int(m.group(1))]}",
                      text)
        conf_path = pod_dir / "nats.conf"
        conf_path.write_text(text)
        (pod_dir / "auth.conf").write_text(auth_conf)
        (pod_dir / "routes.conf").write_text(re.sub(
            rf"nats-(\d+)\.{re.escape(headless)}:6222", lambda m: f"127.0.0.1:{route_ports[int(m.group(1))]}",
            nats_secret["routes.conf"]))
        argv = [e2e.NATS_SERVER_BIN, "--config", str(conf_path), "-a", "127.0.0.1", "-p", "-1", "-m", "-1"]
        env = e2e._server_env({"POD_NAME": f"nats-{ordinal}", **nats_env})
        nats_nodes.append((launcher.spawn(f"nats-{ordinal}", argv, env=env, log_dir=work), local_dirs))
    nats_ports, monitor_ports = [], []
    for node, _ in nats_nodes:
        e2e.wait_for_output(node, e2e.NATS_READY_RE, timeout=60)
        nats_ports.append(int(e2e.wait_for_output(node, e2e.NATS_CLIENT_PORT_RE, timeout=5).group(1)))
        monitor_ports.append(int(e2e.wait_for_output(node, e2e.NATS_MONITOR_PORT_RE, timeout=5).group(1)))
        assert "JetStream" in node.output
    nats, monitor_port = nats_nodes[0][0], monitor_ports[0]

    def jsz(port: int, query: str = "") -> dict:
        resp = e2e.http_request("GET", f"http://127.0.0.1:{port}/jsz{query}", timeout=30)
        assert resp.status == 200, resp
        return resp.json()

    # One cluster: every node knows the same JetStream meta leader, one of the pods.
    e2e.wait_for(lambda: len({jsz(p).get("meta_cluster", {}).get("leader") for p in monitor_ports}
                             - {None, ""}) == 1 and all(jsz(p).get("meta_cluster", {}).get("leader")
                                                         for p in monitor_ports),
                 timeout=90, message=lambda: f"one meta leader ({[jsz(p).get('meta_cluster') for p in monitor_ports]})")
    # A leader can be elected by two nodes before the third has joined: wait for all of them (bounded).
    e2e.wait_for(lambda: jsz(monitor_port).get("meta_cluster", {}).get("cluster_size") == replicas, timeout=60,
                 message=lambda: f"{replicas} nodes in the meta cluster ({jsz(monitor_port).get('meta_cluster')})")
    # A server that knows the route port but not the route password cannot join the cluster (it would see every
    # subject): refused, and the nodes keep their routes to each other only.
    stranger_dir = work / "stranger"
    stranger_dir.mkdir()
    (stranger_dir / "nats.conf").write_text(
        f"server_name: stranger\ncluster {{\n  name: neutrino\n  listen: 127.0.0.1:{_free_port()}\n"
        f"  routes: [nats://127.0.0.1:{route_ports[0]}]\n}}\n")
    stranger = launcher.spawn("nats-stranger", [e2e.NATS_SERVER_BIN, "--config", str(stranger_dir / "nats.conf"),
                                                "-a", "127.0.0.1", "-p", "-1"], env=e2e._server_env(), log_dir=work)
    e2e.wait_for(lambda: "Authorization Violation" in stranger.output, timeout=30,
                 message=lambda: f"the stranger's route refused:\n{stranger.output[-2000:]}")
    stranger.stop()

    def route_peers() -> set[str]:
        routez = e2e.http_request("GET", f"http://127.0.0.1:{monitor_port}/routez", timeout=30).json()
        return {r["remote_id"] for r in routez["routes"]}
    # A node's route to a peer it learned by gossip can still be connecting when the meta cluster already counts
    # every node (CI once saw one route of two here): wait for the full mesh, then check it holds no stranger.
    e2e.wait_for(lambda: len(route_peers()) >= replicas - 1, timeout=60,
                 message=lambda: f"routes to the {replicas - 1} other nodes ({route_peers()})")
    assert len(route_peers()) == replicas - 1, route_peers()
    for port in monitor_ports:
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = nats_container[kind]["httpGet"]
            assert {p["name"]: p["containerPort"] for p in nats_container["ports"]}[probe["port"]] == 8222
            e2e.wait_for(lambda: _probe_ok(f"http://127.0.0.1:{port}{probe['path']}"), timeout=60,
                         message=f"nats {kind} {probe['path']}")

    manifest_map = next(c for c in find(objs, "ConfigMap") if c["metadata"]["name"].startswith("neutrino-manifest"))
    (work / "etc").mkdir()
    (work / "etc" / "openapi.json").write_text(manifest_map["data"]["openapi.json"])
    rewrites = {
        **{f"nats://nats-{i}.{headless}:4222": f"nats://127.0.0.1:{port}" for i, port in enumerate(nats_ports)},
        "/etc/neutrino/": f"{work}/etc/",
        "/opt/neutrino/dashboard": str(REPO_ROOT / "dashboard"),
        "/opt/neutrino/app/app.py": str(EXAMPLE_APP),  # what the Dockerfile puts there
        "/var/run/neutrino/keys/": f"{work}/keys/",
    }

    def with_secrets(workload: dict, name: str, extra: dict) -> dict:
        """The rewrites of a pod whose NATS password Secret key is mounted at /var/run/neutrino/nats/."""
        volume = next(v for v in _pod(workload)["volumes"] if v["name"] == "nats-password")
        mounted = work / f"{name}-nats-password"
        mounted.mkdir(exist_ok=True)
        for item in volume["secret"]["items"]:
            (mounted / item["path"]).write_text(nats_secret[item["key"]] + "\n")
        return {**rewrites, **extra, "/var/run/neutrino/nats/": f"{mounted}/"}
    # The image installs the SDK into Debian's Python; here the embedded interpreter gets it from the checkout.
    sdk = ["--python-path", str(REPO_ROOT / "python")]

    started: list[tuple[_Pod, Any]] = []

    def start(pod: _Pod, extra: list[str] = ()):
        argv = pod.argv(binaries, list(extra))
        proc = launcher.spawn(pod.name, argv, env=e2e._server_env(pod.env), log_dir=work)
        started.append((pod, proc))
        return proc

    # Worker pods: one of each pool (HTTP and NATS workers alike print `listening on` for their --port).
    worker_urls: dict[str, str] = {}
    for deployment in find(objs, "Deployment"):
        pod = _Pod(deployment, 1, with_secrets(deployment, deployment["metadata"]["name"], {}), work)
        proc = start(pod, sdk)
        url = proc.wait_listening()
        worker_urls[_arg(pod.container, "--pool")] = url
        pod.proc = proc

    # Gateway pods: both replicas of the StatefulSet, each with its own data dir (its PVC), finding the fast worker
    # from its heartbeats.
    gateway_set = one(objs, "StatefulSet", "gateway")
    gateways = []
    for ordinal in range(gateway_set["spec"]["replicas"]):
        data = work / f"gateway-{ordinal}-data"
        data.mkdir()
        pod = _Pod(gateway_set, ordinal, with_secrets(gateway_set, f"gateway-{ordinal}", {"/data/": f"{data}/"}), work)
        proc = start(pod)
        proc.wait_listening()
        pod.proc = proc
        gateways.append(pod)
    # NATS workers log in as their pool's user, which may not provision: they consume once a gateway provisioned.
    for pod, proc in started:
        if pod.kind == "Deployment" and _arg(pod.container, "--mode") == "nats":
            m = e2e.wait_for_output(proc, e2e.CONSUMING_RE)
            assert m.group(1) == f"pool_{_arg(pod.container, '--pool')}"

    # Every probe of every pod answers 200 on the port its container declares.
    for pod, proc in started:
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = pod.container[kind]["httpGet"]
            pod.port_of(probe["port"])  # declared
            url = f"{proc.url}{probe['path']}"
            e2e.wait_for(lambda: _probe_ok(url), timeout=90, message=f"{pod.name} {kind} GET {probe['path']} → 200")
        annotations = pod.workload["spec"]["template"]["metadata"]["annotations"]
        assert pod.port_of(int(annotations["prometheus.io/port"]))
        metrics = e2e.http_request("GET", proc.url + annotations["prometheus.io/path"], headers=auth, timeout=30)
        assert metrics.status == 200 and b"neutrino_" in metrics.body, f"{pod.name} /metrics: {metrics!r}"

    # KEDA reads /jsz?acc=$G&consumers=true: the stream and consumer it is given exist there.
    def jsz_consumers() -> dict[str, set[str]]:
        account = quote("$G", safe="")
        resp = e2e.http_request("GET", f"http://127.0.0.1:{monitor_port}/jsz?acc={account}&consumers=true&config=true")
        assert resp.status == 200, resp
        out: dict[str, set[str]] = {}
        for acc in resp.json().get("account_details") or []:
            for stream in acc.get("stream_detail") or []:
                names = {c.get("name") for c in stream.get("consumer_detail") or []}
                out[f"{acc.get('name')}/{stream['name']}"] = names
        return out

    for so in find(objs, "ScaledObject"):
        meta = so["spec"]["triggers"][0]["metadata"]
        key = f"{meta['account']}/{meta['stream']}"
        e2e.wait_for(lambda: meta["consumer"] in jsz_consumers().get(key, set()), timeout=60,
                     message=lambda: f"consumer {meta['consumer']} of {key} in /jsz (have {jsz_consumers()})")
    # Every stream at R3, and the pool consumers' leaders are pods: KEDA finds the leader's numbers at
    # <leader>.<the headless Service>, the leader's own DNS name.
    def stream_details() -> dict[str, dict]:
        document = jsz(monitor_port, "?acc=%24G&consumers=true&config=true")
        return {s["name"]: s for a in document.get("account_details") or [] for s in a.get("stream_detail") or []}

    e2e.wait_for(lambda: {"NEUTRINO_TASKS", "NEUTRINO_DLQ", "NEUTRINO_SETTLED", "NEUTRINO_EVENTS"} <= set(stream_details()),
                 timeout=60, message=lambda: f"Neutrino's streams (have {sorted(stream_details())})")
    details = stream_details()
    for name in ("NEUTRINO_TASKS", "NEUTRINO_DLQ", "NEUTRINO_SETTLED", "NEUTRINO_EVENTS"):
        assert details[name]["config"]["num_replicas"] == replicas, (name, details[name]["config"])
    for so in find(objs, "ScaledObject"):
        def leader(name=so["spec"]["triggers"][0]["metadata"]["consumer"]):
            consumers = stream_details()["NEUTRINO_TASKS"].get("consumer_detail") or []
            return next((c for c in consumers if c["name"] == name), {}).get("cluster", {}).get("leader")
        # The gateway provisioned the consumers moments ago: their leaders may still be being elected.
        elected = e2e.wait_for(leader, timeout=60, message="a leader for each pool consumer")
        assert elected in {f"nats-{i}" for i in range(replicas)}, elected

    # The events stream of the cluster task log, with one durable consumer per gateway replica.
    e2e.wait_for(lambda: {f"events_{g.name}" for g in gateways} <= jsz_consumers().get("$G/NEUTRINO_EVENTS", set()),
                 timeout=60, message=lambda: f"NEUTRINO_EVENTS consumers of both gateways (have {jsz_consumers()})")

    # Traffic through the rendered topology: sync via gateway-0, async via gateway-1, the result on both.
    g0, g1 = (g.proc.url for g in gateways)
    for g in (g0, g1):
        e2e.wait_for(
            lambda g=g: any(w.get("url") == worker_urls["fast"] for w in e2e.pools_by_name(g, auth)["fast"]["workers"]),
            timeout=60, message=lambda: f"the fast worker {worker_urls['fast']} discovered by {g}")
    assert e2e.post_task(g0, "echo", {"x": 3}).status == 401, "the gateway requires an API key"
    echo = e2e.post_task(g0, "echo", {"x": 3}, headers=auth)
    assert echo.status == 200 and echo.json()["result"] == {"x": 3, "label": ""}, echo
    queued = e2e.post_task(g1, "generate_report", {"dataset": "q3"}, headers=auth)
    assert queued.status == 202, queued
    task_id = queued.json()["task_id"]
    for url in (g1, g0):
        def done(url=url):
            resp = e2e.http_request("GET", f"{url}/tasks/{task_id}?wait=10", headers=auth, timeout=60)
            return resp.status == 200 and resp.json().get("status") == "completed"
        e2e.wait_for(done, timeout=120, message=f"task {task_id} completed as seen by {url}")
    depth = e2e.wait_for(
        lambda: re.search(rb'^neutrino_queue_depth\{[^}]*pool="async"[^}]*\} ', e2e.http_request(
            "GET", g0 + "/metrics", headers=auth).body, re.M), timeout=30, message="neutrino_queue_depth{pool=async} on /metrics")
    assert depth

    # SIGTERM drain: an idle NATS worker exits 0 well within its pod's grace period.
    for pod, proc in started:
        if pod.kind == "Deployment" and _arg(pod.container, "--mode") == "nats":
            proc.ended_by_test = True
            proc.proc.send_signal(signal.SIGTERM)
            grace = _pod(pod.workload)["terminationGracePeriodSeconds"]
            assert proc.wait_exit(timeout=grace) == 0, proc.output[-2000:]

    # nats' preStop hook puts the server into lame-duck mode (through its pid file).
    local_dirs = nats_nodes[0][1]
    prestop = [re.sub(r"(?<![\w/])/(data|tmp)/", lambda m: local_dirs[m.group(0)], a)
               for a in nats_container["lifecycle"]["preStop"]["exec"]["command"]]
    assert prestop[0] == "nats-server"
    done = subprocess.run([e2e.NATS_SERVER_BIN, *prestop[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    e2e.wait_for_output(nats, re.compile(r"lame duck", re.I), timeout=30)
