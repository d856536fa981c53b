"""Running an app locally: the process supervisor behind ``neutrino up``.

Modules: :mod:`~neutrino.local.stack` (:func:`up`: the whole stack, start to stop), :mod:`~neutrino.local.supervisor`
(child processes, their output, start-up waits, restarts, stopping), :mod:`~neutrino.local.restarts` (when a
worker that exited is started again), :mod:`~neutrino.local.workers` (the queued pools' NATS
workers), :mod:`~neutrino.local.autoscale` (applies the gateway's ``/pools`` to them), :mod:`~neutrino.local.nats`
(the nats-server child), :mod:`~neutrino.local.binaries` (finding the programs), :mod:`~neutrino.local.ports`,
:mod:`~neutrino.local.banner`.
"""

from .binaries import find_binaries, find_dashboard_dir, find_nats_server
from .stack import UpOptions, up
from .supervisor import StartupError, Supervisor

__all__ = [
    "UpOptions",
    "up",
    "Supervisor",
    "StartupError",
    "find_binaries",
    "find_dashboard_dir",
    "find_nats_server",
]
