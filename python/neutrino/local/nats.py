"""The local ``nats-server -js`` child of ``neutrino up``."""

from __future__ import annotations

import dataclasses
import os

from .ports import free_port
from .supervisor import Supervisor

__all__ = ["NATS_MONITOR_PORT", "NatsServer", "start_nats"]

#: NATS's conventional monitoring port, used when free.
NATS_MONITOR_PORT = 8222


@dataclasses.dataclass
class NatsServer:
    """The local nats-server: where clients and the monitoring page reach it, where it stores streams."""

    url: str
    monitor_url: str
    store_dir: str


def start_nats(supervisor: Supervisor, binary: str, wanted_port: int, state_dir: str) -> NatsServer:
    """Start ``nats-server -js`` on 127.0.0.1 (``wanted_port``, or a free one when that is busy) with its store
    under ``state_dir/nats``, and wait until it accepts connections."""
    host = "127.0.0.1"
    port = free_port(host, wanted_port)
    if port != wanted_port:
        supervisor.say(f"neutrino: port {wanted_port} is busy; nats-server listens on {port} instead")
    monitor_port = free_port(host, NATS_MONITOR_PORT, avoid=[port])
    store_dir = os.path.join(state_dir, "nats")
    os.makedirs(store_dir, exist_ok=True)
    argv = [binary, "-js", "-a", host, "-p", str(port), "-sd", store_dir, "-m", str(monitor_port)]
    child = supervisor.spawn("nats", argv, ready=None, stop_last=True)
    supervisor.wait_accepting(child, host, port)
    return NatsServer(f"nats://{host}:{port}", f"http://{host}:{monitor_port}", store_dir)

