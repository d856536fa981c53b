"""Where ``neutrino up`` finds its programs: the Neutrino binaries, nats-server, the dashboard's files, and the SDK
folder the embedded interpreter needs on ``sys.path``."""

from __future__ import annotations

import os
import shutil
from typing import Optional, Tuple

import neutrino

from .supervisor import StartupError

__all__ = [
    "WORKER_BINARY",
    "GATEWAY_BINARY",
    "NATS_BINARY",
    "find_binaries",
    "find_nats_server",
    "find_dashboard_dir",
    "sdk_path",
]

WORKER_BINARY = "neutrino-worker"
GATEWAY_BINARY = "neutrino-gateway"
NATS_BINARY = "nats-server"


def find_binaries(bin_dir: Optional[str] = None) -> Tuple[str, str]:
    """Paths of ``neutrino-worker`` and ``neutrino-gateway``.

    Looks in ``bin_dir`` (or ``$NEUTRINO_BIN_DIR``) only, when given; else in ``./.build/release``,
    ``./.build/debug`` (here and at the root of the repository holding this SDK), then on ``$PATH``.
    """
    explicit = bin_dir or os.environ.get("NEUTRINO_BIN_DIR")
    if explicit:
        folders = [explicit]
    else:
        repository = os.path.dirname(sdk_path())
        folders = []
        for root in (os.getcwd(), repository):
            for configuration in ("release", "debug"):
                folder = os.path.join(root, ".build", configuration)
                if folder not in folders:
                    folders.append(folder)
    for folder in folders:
        worker, gateway = (os.path.join(folder, name) for name in (WORKER_BINARY, GATEWAY_BINARY))
        if _is_executable(worker) and _is_executable(gateway):
            return worker, gateway
    if not explicit:
        found_worker, found_gateway = shutil.which(WORKER_BINARY), shutil.which(GATEWAY_BINARY)
        if found_worker and found_gateway:
            return found_worker, found_gateway
    where = ", ".join(folders) + ("" if explicit else ", $PATH")
    raise StartupError(
        f"cannot find {WORKER_BINARY} and {GATEWAY_BINARY} (looked in {where}); "
        "build them with `swift build -c release` or pass --bin-dir"
    )


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def sdk_path() -> str:
    """The folder holding the ``neutrino`` package: what the embedded interpreter needs on ``sys.path``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(neutrino.__file__)))


def find_nats_server() -> str:
    """Path of ``nats-server`` on ``$PATH``."""
    found = shutil.which(NATS_BINARY)
    if not found:
        raise StartupError(
            f"the app has async or gpu tasks, which run through NATS JetStream, but {NATS_BINARY} is not on PATH; "
            "install it (Debian: `sudo apt-get install nats-server`) or run `make deps`"
        )
    return found


def find_dashboard_dir(bin_dir: Optional[str] = None) -> Optional[str]:
    """The dashboard's static files for the gateway's ``--dashboard-dir``: ``$NEUTRINO_DASHBOARD_DIR`` when set,
    else the ``dashboard/`` folder of the repository holding this SDK, of the one holding the binaries
    (``<repo>/.build/<configuration>``), or of the current directory; one with an ``index.html`` first."""
    configured = os.environ.get("NEUTRINO_DASHBOARD_DIR")
    if configured:
        return os.path.abspath(configured) if os.path.isdir(configured) else None
    roots = [os.path.dirname(sdk_path())]
    if bin_dir:
        roots.append(os.path.dirname(os.path.dirname(os.path.abspath(bin_dir))))
    roots.append(os.getcwd())
    folders = []
    for root in roots:
        folder = os.path.join(root, "dashboard")
        if os.path.isdir(folder) and folder not in folders:
            folders.append(folder)
    with_index = [folder for folder in folders if os.path.isfile(os.path.join(folder, "index.html"))]
    return (with_index or folders or [None])[0]

