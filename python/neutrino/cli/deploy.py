"""``neutrino deploy APP``: render Kubernetes manifests for the pools an app uses (:mod:`neutrino.k8s`) into a
kustomize root and ``kubectl apply -k`` it."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from .. import k8s
from ..loading import split_spec
from .common import add_app_argument, error, load_or_report

__all__ = ["register", "run"]


def register(commands: Any) -> argparse.ArgumentParser:
    """Add ``neutrino deploy`` to the CLI's subparsers."""
    parser = commands.add_parser(
        "deploy",
        help="render Kubernetes manifests for the app's pools and kubectl apply -k them",
        description=run.__doc__,
    )
    add_app_argument(parser)
    parser.add_argument(
        "--output", "-o", metavar="DIR", help="write the kustomize root here (default: a temporary folder)"
    )
    parser.add_argument(
        "--image", default=k8s.DEFAULT_IMAGE, help="the Neutrino image with your app (default: %(default)s)"
    )
    parser.add_argument("--namespace", "-n", default="neutrino", help="the namespace (default: %(default)s)")
    parser.add_argument(
        "--app-path",
        metavar="SPEC",
        help=f"--app as the workers see it inside the image (default: {k8s.APP_DIR}/<APP's file name>)",
    )
    parser.add_argument(
        "--app-configmap",
        action="store_true",
        help=f"ship APP (one .py file) in a ConfigMap mounted at {k8s.APP_DIR} instead of baking it into the image",
    )
    parser.add_argument("--storage-class", metavar="NAME", help="storageClassName of the PVCs (default: the cluster's)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="do not apply: print the rendered YAML (or only write it, with --output)",
    )
    parser.add_argument("--ingress-host", metavar="HOST", help="the Ingress's host name (default: any)")
    parser.add_argument(
        "--tls-secret", default="neutrino-tls", metavar="NAME", help="the Ingress's TLS Secret (default: %(default)s)"
    )
    parser.add_argument(
        "--ingress-class", metavar="NAME", help="the Ingress's ingressClassName (default: the cluster's)"
    )
    parser.add_argument("--kubectl", default="kubectl", help="the kubectl to run (default: %(default)s)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Render the Kubernetes manifests for the pools APP uses (the gateway, nats-server with JetStream, one
    Deployment per pool with its autoscaler) into a kustomize root and run `kubectl apply -k` on it.

    With --dry-run nothing is applied: the YAML is printed, or written to --output.
    """
    loaded = load_or_report(args.app)
    if loaded is None:
        return 1
    app = loaded.app
    target, _ = split_spec(args.app)
    if args.app_configmap and not target.endswith(".py"):
        error("--app-configmap needs APP to be a .py file")
        return 1
    options = k8s.DeployOptions(
        namespace=args.namespace,
        image=args.image,
        app_in_image=k8s.app_path_in_image(args.app, args.app_path),
        app_file=target if args.app_configmap else None,
        storage_class=args.storage_class,
        ingress_host=args.ingress_host,
        tls_secret=args.tls_secret,
        ingress_class=args.ingress_class,
    )
    try:
        rendered = k8s.render(app, loaded.manifest, options)
    except ValueError as exc:
        error(str(exc))
        return 1
    what = f"app {app.name!r} ({args.app})"
    if args.dry_run and not args.output:
        sys.stdout.write(k8s.render_stream(rendered, what))
        return 0
    folder = args.output
    temporary = None
    if not folder:
        temporary = folder = tempfile.mkdtemp(prefix="neutrino-deploy-")
    try:
        k8s.write_output(rendered, folder, what)
        secrets_dir = k8s.write_secrets(folder, app, options.namespace)
        pools = ", ".join(f"{p.name} ({p.mode})" for p in k8s.plan_pools(app))
        print(f"wrote {folder} (namespace {options.namespace}, pools: {pools})", file=sys.stderr)
        print(
            f"wrote {secrets_dir} (the NATS passwords, mode 0600: apply it once, keep it out of version control); "
            f"the gateway also needs the Secret neutrino-api-keys (`neutrino keys create --file api-keys.json`, then "
            f"`kubectl -n {options.namespace} create secret generic neutrino-api-keys --from-file=api-keys.json`) "
            f"and the Ingress the TLS Secret {options.tls_secret}",
            file=sys.stderr,
        )
        if args.dry_run:
            return 0
        kubectl = shutil.which(args.kubectl) or args.kubectl
        try:
            for target in (secrets_dir, folder):
                command = [kubectl, "apply", "-k", target]
                print("$ " + " ".join(command), file=sys.stderr)
                status = subprocess.call(command)
                if status != 0:
                    return status
            return 0
        except OSError as exc:
            error(f"cannot run {args.kubectl}: {exc} (install kubectl, or use --dry-run --output DIR)")
            return 1
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
