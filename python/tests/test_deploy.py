"""`neutrino deploy`: rendering the Kubernetes objects for the pools an app uses (no cluster needed)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from neutrino import k8s
from neutrino._loader import load_app
from neutrino.cli import main
from neutrino.manifest import build_openapi

yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency (python[test])")

A100_APP = """
from neutrino import App
app = App("ml")

@app.task()
def echo(x: int) -> int:
    return x

@app.task(execution_mode="async", timeout_secs=120, retries=2)
def report(dataset: str) -> dict:
    return {}

@app.task(execution_mode="async", timeout_secs=900)
def rebuild() -> None:
    pass

@app.task(execution_mode="gpu", pool="a100", timeout_secs=600)
def train_model(data: str) -> dict:
    return {}
"""

SYNC_ONLY_APP = """
from neutrino import App
app = App("small")

@app.task(pool="my_pool")
def ping() -> str:
    return "pong"
"""


def _render(path: Path, **options: Any) -> k8s.Rendered:
    app = load_app(str(path))
    return k8s.render(app, json.dumps(build_openapi(app)), k8s.DeployOptions(**options))


def _get(objects: List[Dict[str, Any]], kind: str, name: str) -> Dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found among {names}"
    return found[0]


def _kinds(objects: List[Dict[str, Any]], kind: str) -> List[str]:
    return [o["metadata"]["name"] for o in objects if o["kind"] == kind]


def _args(deployment: Dict[str, Any]) -> List[str]:
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def _flag(args: List[str], name: str) -> List[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def test_plan_pools_takes_the_longest_timeout(write_app):
    plans = {p.name: p for p in k8s.plan_pools(load_app(str(write_app(A100_APP))))}
    assert [(p.name, p.mode) for p in plans.values()] == [("fast", "sync"), ("async", "async"), ("a100", "gpu")]
    assert plans["async"].timeout_secs == 900
    assert plans["a100"].timeout_secs == 600 and plans["fast"].timeout_secs == 5
    assert plans["a100"].consumer == "pool_a100" and plans["a100"].object_name == "worker-a100"


def test_gpu_pool_named_a100(write_app):
    rendered = _render(write_app(A100_APP))
    objects = rendered.objects()
    assert _kinds(objects, "Deployment") == ["worker-fast", "worker-async", "worker-a100"]
    assert _kinds(objects, "ScaledObject") == ["worker-async", "worker-a100"]
    assert "pool-a100.yaml" in rendered.files
    assert [o["kind"] for o in rendered.autoscalers] == ["HorizontalPodAutoscaler", "ScaledObject", "ScaledObject"]

    worker = _get(objects, "Deployment", "worker-a100")
    args = _args(worker)
    assert _flag(args, "--mode") == ["nats"] and _flag(args, "--pool") == ["a100"]
    assert _flag(args, "--task-log") == ["nats"] and _flag(args, "--nats") == [
        "nats://nats-0.nats-headless:4222,nats://nats-1.nats-headless:4222,nats://nats-2.nats-headless:4222"]
    assert _flag(args, "--stream-replicas") == ["3"]
    assert _flag(args, "--port") == ["8000"] and _flag(args, "--drain-grace") == ["600"]
    pod = worker["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == k8s.GPU_NODE_SELECTOR and pod["tolerations"] == k8s.GPU_TOLERATIONS
    assert pod["terminationGracePeriodSeconds"] >= 600 + k8s.PRESTOP_SLEEP_SECS
    assert worker["spec"]["replicas"] == 0

    scaled = _get(objects, "ScaledObject", "worker-a100")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "worker-a100"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 5)
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 300
    }
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"]["consumer"] == "pool_a100" and trigger["metadata"]["stream"] == "NEUTRINO_TASKS"
    assert trigger["metadata"]["account"] == "$G"
    assert all(isinstance(v, str) for v in trigger["metadata"].values())

    async_so = _get(objects, "ScaledObject", "worker-async")
    assert (async_so["spec"]["minReplicaCount"], async_so["spec"]["maxReplicaCount"]) == (1, 50)
    assert async_so["spec"]["triggers"][0]["metadata"]["lagThreshold"] == "10"
    async_pod = _get(objects, "Deployment", "worker-async")["spec"]["template"]["spec"]
    assert async_pod["terminationGracePeriodSeconds"] >= 900 + k8s.PRESTOP_SLEEP_SECS
    assert "nodeSelector" not in async_pod

    hpa = _get(objects, "HorizontalPodAutoscaler", "worker-fast")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    assert _get(objects, "Service", "fast")["spec"]["ports"][0]["port"] == 8000

    gateway = _get(objects, "StatefulSet", "gateway")
    gateway_args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
    # No static list: the gateway finds the fast pods from their heartbeats, each announcing its pod IP.
    assert _flag(gateway_args, "--http-pool") == []
    assert _flag(_args(_get(objects, "Deployment", "worker-fast")), "--advertise-host") == ["$(POD_IP)"]
    assert _flag(_args(_get(objects, "Deployment", "worker-async")), "--advertise-host") == []
    assert _flag(gateway_args, "--scale") == ["fast=2:20:0.7:300", "async=1:50:10:300", "a100=0:5:1:300"]
    assert "--events-via-nats" in gateway_args and _flag(gateway_args, "--gateway-id") == ["$(POD_NAME)"]
    assert len(_kinds(objects, "PodDisruptionBudget")) == 5  # nats, gateway, three pools


def test_sync_only_app_and_underscore_pool(write_app):
    objects = _render(write_app(SYNC_ONLY_APP)).objects()
    assert _kinds(objects, "ScaledObject") == []
    assert _kinds(objects, "Deployment") == ["worker-my-pool"]
    assert _flag(_args(_get(objects, "Deployment", "worker-my-pool")), "--pool") == ["my_pool"]
    assert _get(objects, "Service", "my-pool")
    gateway_args = _get(objects, "StatefulSet", "gateway")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert _flag(gateway_args, "--http-pool") == []
    assert _flag(_args(_get(objects, "Deployment", "worker-my-pool")), "--advertise-host") == ["$(POD_IP)"]
    # The gateway keeps its task log through NATS events, so nats-server is deployed even without queued pools.
    assert _get(objects, "StatefulSet", "nats")


def test_namespace_and_image(write_app):
    rendered = _render(write_app(A100_APP), namespace="ml-prod", image="registry.local:5000/team/neutrino-ml:2.1")
    assert rendered.kustomization["namespace"] == "ml-prod"
    assert _get(rendered.objects(), "Namespace", "ml-prod")
    assert rendered.kustomization["images"] == [
        {"name": "neutrino", "newName": "registry.local:5000/team/neutrino-ml", "newTag": "2.1"}
    ]
    trigger = _get(rendered.objects(), "ScaledObject", "worker-a100")["spec"]["triggers"][0]
    # The headless Service: KEDA reaches the consumer's leader as <pod>.nats-headless.ml-prod.svc.cluster.local.
    assert trigger["metadata"]["natsServerMonitoringEndpoint"] == "nats-headless.ml-prod.svc.cluster.local:8222"


@pytest.mark.parametrize(
    "image, entry",
    [
        ("neutrino", {"newName": "neutrino", "newTag": "latest"}),
        ("neutrino:0.1.0", {"newName": "neutrino", "newTag": "0.1.0"}),
        ("localhost:5000/neutrino", {"newName": "localhost:5000/neutrino", "newTag": "latest"}),
        ("ghcr.io/a/b@sha256:abc", {"newName": "ghcr.io/a/b", "digest": "sha256:abc"}),
    ],
)
def test_split_image(image, entry):
    assert k8s.split_image(image) == {"name": "neutrino", **entry}


@pytest.mark.parametrize(
    "value",
    [
        {"a": "yes", "b": "0.0.0.0", "c": "$(POD_NAME)", "d": "a: b", "e": "#x", "f": "-x", "g": "", "h": "1"},
        {"nested": [[1, 2], [], {}, {"k": [{"x": None, "y": True, "z": 1.5}]}], "empty": {}},
        {"text": "line 1\n  indented\n\nlast\n", "unicode": "héllo ✓", "quote": 'say "hi"', "tab": "a\tb"},
        {"a": " lead\nx\n", "b": "no final newline\nx", "c": "two\n\n", "d": "\n", "e": "crlf\r\nx\n"},
        [{"name": "x", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, "plain", 3],
    ],
)
def test_yaml_round_trips(value):
    assert yaml.safe_load(k8s.to_yaml(value)) == value


def test_every_rendered_object_round_trips_through_yaml(write_app):
    rendered = _render(write_app(A100_APP))
    for objects in [*rendered.files.values(), rendered.autoscalers]:
        assert list(yaml.safe_load_all(k8s.to_yaml_stream(objects))) == objects
    for kustomization in (rendered.kustomization, rendered.top_kustomization):
        assert yaml.safe_load(k8s.to_yaml(kustomization)) == kustomization


def test_cli_dry_run_prints_yaml(write_app, capsys):
    app_path = write_app(A100_APP)
    assert main(["deploy", str(app_path), "--dry-run", "--image", "example/neutrino:9"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    manifest = _get(docs, "ConfigMap", "neutrino-manifest")
    assert json.loads(manifest["data"]["openapi.json"]) == build_openapi(load_app(str(app_path)))
    worker = _get(docs, "Deployment", "worker-a100")
    assert worker["metadata"]["namespace"] == "neutrino"
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "example/neutrino:9"
    assert _flag(container["args"], "--app") == [f"/opt/neutrino/app/{app_path.name}"]


def test_cli_dry_run_output_writes_a_kustomize_root(write_app, tmp_path, capsys):
    app_path = write_app(A100_APP)
    out = tmp_path / "out"
    assert main(["deploy", str(app_path), "--dry-run", "--output", str(out), "-n", "ml"]) == 0
    assert sorted(os.listdir(out)) == ["autoscaling.yaml", "core", "kustomization.yaml", "secrets"]
    # The NATS passwords: a Secret of their own, mode 0600, apart from the manifests.
    assert sorted(os.listdir(out / "secrets")) == [".gitignore", "kustomization.yaml", "nats-auth.yaml"]
    assert (out / "secrets" / "nats-auth.yaml").stat().st_mode & 0o777 == 0o600
    secret = yaml.safe_load((out / "secrets" / "nats-auth.yaml").read_text())
    assert secret["metadata"] == {"name": "neutrino-nats-auth", "namespace": "ml",
                                  "labels": {"app.kubernetes.io/part-of": "neutrino"}}
    assert set(secret["stringData"]) == {"gateway", "route", "routes.conf", "worker-fast", "worker-async", "worker-a100"}
    # The cluster's route URLs carry the route password: nats-server cannot substitute a variable inside a URL.
    assert f"nats://route:{secret['stringData']['route']}@nats-0.nats-headless:6222" in secret["stringData"]["routes.conf"]
    core = sorted(os.listdir(out / "core"))
    assert core == sorted(
        ["kustomization.yaml", "openapi.json", "namespace.yaml", "nats.yaml", "gateway.yaml", "network-policy.yaml",
         "pool-fast.yaml", "pool-async.yaml", "pool-a100.yaml"]
    )
    top = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert (top["namespace"], top["bases"], top["resources"]) == ("ml", ["core"], ["autoscaling.yaml"])
    kustomization = yaml.safe_load((out / "core" / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "ml"
    listed = sorted(n for n in core if n not in ("kustomization.yaml", "openapi.json"))
    assert sorted(kustomization["resources"]) == listed
    assert json.loads((out / "core" / "openapi.json").read_text()) == build_openapi(load_app(str(app_path)))
    autoscalers = list(yaml.safe_load_all((out / "autoscaling.yaml").read_text()))
    assert [(o["kind"], o["metadata"]["name"]) for o in autoscalers] == [
        ("HorizontalPodAutoscaler", "worker-fast"), ("ScaledObject", "worker-async"), ("ScaledObject", "worker-a100")]
    assert "ScaledObject" not in (out / "core" / "pool-a100.yaml").read_text()


def test_cli_app_from_configmap(write_app, tmp_path):
    app_path = write_app(SYNC_ONLY_APP)
    out = tmp_path / "out"
    assert main(["deploy", str(app_path), "--dry-run", "--output", str(out), "--app-configmap"]) == 0
    kustomization = yaml.safe_load((out / "core" / "kustomization.yaml").read_text())
    assert {"name": "neutrino-app", "files": [app_path.name]} in kustomization["configMapGenerator"]
    assert (out / "core" / app_path.name).read_text() == app_path.read_text()
    pool_file = (out / "core" / "pool-my-pool.yaml").read_text()
    [worker] = [d for d in yaml.safe_load_all(pool_file) if d["kind"] == "Deployment"]
    pod = worker["spec"]["template"]["spec"]
    assert {"name": "app", "configMap": {"name": "neutrino-app"}} in pod["volumes"]
    assert {"name": "app", "mountPath": "/opt/neutrino/app", "readOnly": True} in pod["containers"][0]["volumeMounts"]


def test_cli_applies_with_kubectl(write_app, tmp_path):
    """Without --dry-run the command runs `KUBECTL apply -k DIR/secrets`, then `KUBECTL apply -k DIR` (here a
    stand-in that records its argv)."""
    record = tmp_path / "argv.json"
    stand_in = tmp_path / "kubectl"
    stand_in.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"calls = json.load(open({str(record)!r})) if os.path.exists({str(record)!r}) else []\n"
        f"calls.append({{'argv': sys.argv[1:], 'files': sorted(os.listdir(sys.argv[3]))}})\n"
        f"json.dump(calls, open({str(record)!r}, 'w'))\n"
    )
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    assert main(["deploy", str(write_app(A100_APP)), "--output", str(out), "--kubectl", str(stand_in)]) == 0
    secrets, manifests = json.loads(record.read_text())
    assert secrets["argv"] == ["apply", "-k", str(out / "secrets")]  # the NATS passwords first
    assert manifests["argv"] == ["apply", "-k", str(out)]
    assert sorted(manifests["files"]) == ["autoscaling.yaml", "core", "kustomization.yaml", "secrets"]


def test_cli_reports_a_missing_kubectl(write_app, tmp_path, capsys):
    app = str(write_app(A100_APP))
    code = main(["deploy", app, "--output", str(tmp_path / "o"), "--kubectl", str(tmp_path / "nope")])
    assert code == 1
    assert "cannot run" in capsys.readouterr().err


def test_cli_bad_app(tmp_path, capsys):
    assert main(["deploy", str(tmp_path / "missing.py"), "--dry-run"]) == 1


def test_nats_passwords_are_plain_strings_to_nats_server_config_substitution():
    """nats-server parses a substituted variable ($NATS_PW_GATEWAY in the rendered config) as a config value: a
    password starting with a digit or '-' is read as a malformed number and the server does not start."""
    from neutrino.natsauth import is_safe_password, new_password

    passwords = {new_password() for _ in range(2000)}
    assert len(passwords) == 2000
    assert all(is_safe_password(p) and p[0].isalpha() and p.isalnum() and len(p) >= 48 for p in passwords)
    assert not is_safe_password("6KqfJ0oFhZ_x-1ab2cd3ef4") and not is_safe_password("-abc123def456ghi789")
