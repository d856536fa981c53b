"""The kustomize root ``neutrino deploy`` writes: :func:`render` arranges the objects into files and kustomizations,
:func:`write_output` writes them, :func:`render_stream` prints them as one YAML stream (``--dry-run``)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

from ..app import App
from .objects import render_gateway, render_nats, render_network_policies, render_pool, routes_conf
from .plan import (
    AUTOSCALER_KINDS,
    IMAGE_NAME,
    MANIFEST_FILE,
    NATS_SECRET,
    PART_OF,
    ROUTES_CONF_KEY,
    ROUTE_USER,
    DeployOptions,
    nats_secret_key,
    plan_pools,
    split_image,
)
from .yamltext import to_yaml, to_yaml_stream

__all__ = ["Rendered", "render", "write_output", "write_secrets", "render_stream"]

_HEADER = "# Rendered by `neutrino deploy` (python/neutrino/k8s) for {what}.\n"


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


def render(app: App, manifest_text: str, options: Optional[DeployOptions] = None) -> Rendered:
    """Everything ``neutrino deploy`` writes, for ``app`` (whose manifest is ``manifest_text``)."""
    options = options or DeployOptions()
    plans = plan_pools(app)
    files: Dict[str, List[Dict[str, Any]]] = {
        "namespace.yaml": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": options.namespace, "labels": dict(PART_OF)}}
        ],
        "nats.yaml": render_nats(options, plans),
        "gateway.yaml": render_gateway(plans, options),
        "network-policy.yaml": render_network_policies(plans),
    }
    autoscalers: List[Dict[str, Any]] = []
    for plan in plans:
        objects = render_pool(plan, options)
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


def write_secrets(folder: str, app: App, namespace: str) -> str:
    """Write ``folder/secrets/``: the Secret with the NATS passwords (random, mode 0600; kept when the file exists,
    a user added for each new pool) and its kustomization. Apart from the rendered manifests so that they hold no
    secret: apply it once (``kubectl apply -k DIR/secrets``), keep it out of version control. Returns the folder."""
    from ..natsauth import GATEWAY_USER, is_safe_password, new_password, worker_user, write_private

    secrets_dir = os.path.join(folder, "secrets")
    os.makedirs(secrets_dir, exist_ok=True)
    path = os.path.join(secrets_dir, "nats-auth.yaml")
    users = [GATEWAY_USER, ROUTE_USER, *(worker_user(plan.name) for plan in plan_pools(app))]
    data: Dict[str, str] = {}
    try:
        import yaml  # PyYAML, like the rest of neutrino.k8s's reading

        with open(path, encoding="utf-8") as file:
            data = dict((yaml.safe_load(file) or {}).get("stringData") or {})
    except (OSError, ValueError, ImportError):
        data = {}
    for user in users:
        # Kept across runs, unless an earlier version wrote one nats-server cannot substitute (see new_password).
        if not is_safe_password(data.get(nats_secret_key(user))):
            data[nats_secret_key(user)] = new_password()
    # Derived from the route password on every run (the replica count or the names may change).
    data[ROUTES_CONF_KEY] = routes_conf(data[nats_secret_key(ROUTE_USER)])
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": NATS_SECRET, "namespace": namespace, "labels": dict(PART_OF)},
        "type": "Opaque",
        "stringData": data,
    }
    note = "# NATS passwords of the gateway, each pool's workers and the cluster's routes. Keep out of version control.\n"
    write_private(path, note + to_yaml(secret))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["nats-auth.yaml"],
    }
    with open(os.path.join(secrets_dir, "kustomization.yaml"), "w", encoding="utf-8") as file:
        file.write(to_yaml(kustomization))
    with open(os.path.join(secrets_dir, ".gitignore"), "w", encoding="utf-8") as file:
        file.write("nats-auth.yaml\n")
    return secrets_dir


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

