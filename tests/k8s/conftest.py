"""Fixtures for the Kubernetes manifest tests: no cluster, no container engine.

`kubectl kustomize` (a real kustomize, the one built into kubectl; `make k8s-deps` installs it) renders the base
(`k8s/`, i.e. `k8s/base`) and each overlay; the tests parse what it prints. The process helpers (ServerProcess,
Launcher, wait_for, http_request, ...) come from tests/e2e/conftest.py, loaded as a plain module under another
name so its fixtures and hooks stay out of this suite.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

K8S_TEST_DIR = Path(__file__).resolve().parent
REPO_ROOT = K8S_TEST_DIR.parents[1]
K8S_DIR = REPO_ROOT / "k8s"
SCHEMA_DIR = K8S_TEST_DIR / "schemas"

#: name → kustomize root; "default" is what `kubectl apply -k k8s/` applies.
VARIANTS = {
    "default": K8S_DIR,
    "base": K8S_DIR / "base",
    "dev": K8S_DIR / "overlays" / "dev",
    "hpa-only": K8S_DIR / "overlays" / "hpa-only",
    "loadbalancer": K8S_DIR / "overlays" / "loadbalancer",
}


def _load_e2e_helpers():
    name = "neutrino_e2e_helpers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tests" / "e2e" / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


e2e = _load_e2e_helpers()


def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl is not installed (it renders the kustomizations): run `make k8s-deps`")
    return found


def kustomize(root: Path) -> str:
    """`kubectl kustomize ROOT`: the rendered YAML stream."""
    proc = subprocess.run([kubectl(), "kustomize", str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {root} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def parse_stream(text: str) -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency: pip install -e 'python[test]'")
    return [doc for doc in yaml.safe_load_all(text) if doc]


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def rendered(variant: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders for a variant (cached for the session)."""
    if variant not in _RENDERED:
        _RENDERED[variant] = parse_stream(kustomize(VARIANTS[variant]))
    return _RENDERED[variant]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


@pytest.fixture(scope="session")
def launcher(tmp_path_factory):
    launch = e2e.Launcher(tmp_path_factory.mktemp("neutrino-k8s"))
    yield launch
    launch.stop_all()
