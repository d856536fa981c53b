"""The local nats-server children of ``neutrino up``: one ``nats-server -js`` (the default), or a JetStream cluster
of several on loopback (``--nats-cluster N``)."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from typing import List, Optional

from ..natsauth import NatsCredentials, authorization_block, write_private
from .ports import free_port
from .supervisor import Interrupted, StartupError, Supervisor

__all__ = [
    "NATS_CLUSTER_PORT",
    "NATS_MONITOR_PORT",
    "NatsServer",
    "cluster_config",
    "start_nats",
    "start_nats_cluster",
]

#: NATS's conventional monitoring port, used when free.
NATS_MONITOR_PORT = 8222
#: NATS's conventional cluster (route) port, used for the first node when free.
NATS_CLUSTER_PORT = 6222
#: How long the nodes of a new cluster get to elect a JetStream meta leader.
META_LEADER_TIMEOUT_SECS = 60.0


@dataclasses.dataclass
class NatsServer:
    """The local nats-server (or cluster): where clients and the monitoring page reach it, where it stores streams.

    For a cluster, ``url`` lists every node's client URL comma-separated (what ``--nats`` takes), ``urls`` the same
    as a list, ``monitor_url`` is the first node's monitoring page and ``store_dir`` the folder of all the nodes'
    stores."""

    url: str
    monitor_url: str
    store_dir: str
    #: Every node's client URL (one entry for a single server).
    urls: List[str] = dataclasses.field(default_factory=list)
    #: Every node's monitoring URL.
    monitor_urls: List[str] = dataclasses.field(default_factory=list)
    #: The replica count streams get (``--stream-replicas`` of the gateway and workers).
    stream_replicas: int = 1
    #: The users the server knows (None: no authentication).
    credentials: Optional[NatsCredentials] = None

    def __post_init__(self) -> None:
        if not self.urls:
            self.urls = [self.url]
        if not self.monitor_urls:
            self.monitor_urls = [self.monitor_url]

    @property
    def size(self) -> int:
        return len(self.urls)

    def client_args(self) -> List[str]:
        """The gateway's and the workers' flags for this server: ``--nats URL``; for a cluster every node's URL
        (clients fail over between them) and ``--stream-replicas``."""
        args = ["--nats", self.url]
        if self.size > 1:
            args += ["--stream-replicas", str(self.stream_replicas)]
        return args


def single_config(
    host: str, port: int, monitor_port: int, store_dir: str, credentials: Optional[NatsCredentials]
) -> str:
    """The configuration file of ``neutrino up``'s single nats-server (mode 0600: it holds the passwords)."""
    text = (
        "# neutrino up's nats-server (written by neutrino up; rewritten at every start)\n"
        f"host: {host}\n"
        f"port: {port}\n"
        f'http: "{host}:{monitor_port}"\n'
        f"jetstream {{\n"
        f"  store_dir: {json.dumps(store_dir)}\n"
        f"}}\n"
    )
    return text + (authorization_block(credentials) if credentials is not None else "")


def start_nats(
    supervisor: Supervisor,
    binary: str,
    wanted_port: int,
    state_dir: str,
    cluster: int = 1,
    credentials: Optional[NatsCredentials] = None,
) -> NatsServer:
    """Start ``nats-server -js`` on 127.0.0.1 (``wanted_port``, or a free one when that is busy) with its store
    under ``state_dir/nats``, and wait until it accepts connections. ``cluster`` > 1 starts that many nodes forming
    one JetStream cluster instead (:func:`start_nats_cluster`). With ``credentials`` the server admits only those
    users, each with its permissions (:mod:`neutrino.natsauth`); its configuration file is mode 0600."""
    if cluster > 1:
        return start_nats_cluster(supervisor, binary, cluster, wanted_port, state_dir, credentials=credentials)
    host = "127.0.0.1"
    port = free_port(host, wanted_port)
    if port != wanted_port:
        supervisor.say(f"neutrino: port {wanted_port} is busy; nats-server listens on {port} instead")
    monitor_port = free_port(host, NATS_MONITOR_PORT, avoid=[port])
    store_dir = os.path.join(state_dir, "nats")
    os.makedirs(store_dir, exist_ok=True)
    conf = os.path.join(state_dir, "nats.conf")
    write_private(conf, single_config(host, port, monitor_port, store_dir, credentials))
    child = supervisor.spawn("nats", [binary, "-c", conf], ready=None, stop_last=True)
    supervisor.wait_accepting(child, host, port)
    return NatsServer(f"nats://{host}:{port}", f"http://{host}:{monitor_port}", store_dir, credentials=credentials)


def cluster_config(
    index: int,
    host: str,
    port: int,
    monitor_port: int,
    cluster_port: int,
    route_ports: List[int],
    store_dir: str,
    cluster_name: str = "neutrino-local",
    credentials: Optional[NatsCredentials] = None,
    route_password: Optional[str] = None,
) -> str:
    """The configuration file of node ``index`` (1-based) of a loopback JetStream cluster.

    ``server_name`` must be unique in the cluster and stable across restarts (JetStream identifies a node's
    store by it); every node lists every node's route (its own included: nats-server ignores a route to itself).
    With ``credentials`` clients must be one of those users; with ``route_password`` the routes authenticate as
    user ``route`` too."""
    auth = f"route:{route_password}@" if route_password else ""
    routes = "\n".join(f"    nats-route://{auth}{host}:{p}" for p in route_ports)
    route_auth = ""
    if route_password:
        route_auth = f'  authorization {{\n    user: route\n    password: "{route_password}"\n  }}\n'
    return (
        f"# node {index} of neutrino up's local JetStream cluster (written by neutrino up; rewritten at every start)\n"
        f"server_name: neutrino-{index}\n"
        f"host: {host}\n"
        f"port: {port}\n"
        f'http: "{host}:{monitor_port}"\n'
        f"jetstream {{\n"
        f"  store_dir: {json.dumps(store_dir)}\n"
        f"}}\n"
        f"cluster {{\n"
        f"  name: {cluster_name}\n"
        f'  listen: "{host}:{cluster_port}"\n'
        f"  routes: [\n{routes}\n  ]\n"
        f"{route_auth}"
        f"}}\n"
    ) + (authorization_block(credentials) if credentials is not None else "")


def start_nats_cluster(
    supervisor: Supervisor,
    binary: str,
    size: int,
    wanted_port: int,
    state_dir: str,
    meta_leader_timeout: float = META_LEADER_TIMEOUT_SECS,
    credentials: Optional[NatsCredentials] = None,
) -> NatsServer:
    """Start ``size`` nats-server children on 127.0.0.1 that form one JetStream cluster: client ports from
    ``wanted_port`` on (free ones when busy), routes between all of them, each node's configuration file and store
    under ``state_dir/nats-cluster/node-N``. Returns once every node accepts connections and the cluster has
    elected its JetStream meta leader (streams can be created then). Streams get ``min(size, 3)`` replicas."""
    if size < 1:
        raise ValueError("a cluster needs at least one node")
    host = "127.0.0.1"
    taken: List[int] = []

    def pick(preferred: int) -> int:
        port = free_port(host, preferred, avoid=taken)
        taken.append(port)
        return port

    ports = [pick(wanted_port + i) for i in range(size)]
    if ports[0] != wanted_port:
        supervisor.say(f"neutrino: port {wanted_port} is busy; the first nats-server listens on {ports[0]} instead")
    cluster_ports = [pick(NATS_CLUSTER_PORT + i) for i in range(size)]
    monitor_ports = [pick(NATS_MONITOR_PORT + i) for i in range(size)]
    base = os.path.join(state_dir, "nats-cluster")
    route_password = secrets.token_urlsafe(24) if credentials is not None else None
    children = []
    for i in range(size):
        node_dir = os.path.join(base, f"node-{i + 1}")
        store_dir = os.path.join(node_dir, "store")
        os.makedirs(store_dir, exist_ok=True)
        conf = os.path.join(node_dir, "nats.conf")
        text = cluster_config(
            i + 1, host, ports[i], monitor_ports[i], cluster_ports[i], cluster_ports, store_dir,
            credentials=credentials, route_password=route_password,
        )
        write_private(conf, text)
        children.append(supervisor.spawn(f"nats-{i + 1}", [binary, "-c", conf], ready=None, stop_last=True))
    for child, port in zip(children, ports):
        supervisor.wait_accepting(child, host, port)
    monitor_urls = [f"http://{host}:{p}" for p in monitor_ports]
    if size > 1:
        _wait_meta_leader(supervisor, monitor_urls, meta_leader_timeout)
    urls = [f"nats://{host}:{p}" for p in ports]
    return NatsServer(
        ",".join(urls),
        monitor_urls[0],
        base,
        urls=urls,
        monitor_urls=monitor_urls,
        stream_replicas=min(size, 3),
        credentials=credentials,
    )


def meta_leader(monitor_url: str, timeout: float = 2.0) -> Optional[str]:
    """The JetStream meta leader as the node at ``monitor_url`` knows it (``/jsz``), or None."""
    try:
        with urllib.request.urlopen(f"{monitor_url}/jsz", timeout=timeout) as response:
            document = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return ((document.get("meta_cluster") or {}).get("leader")) or None


def _wait_meta_leader(supervisor: Supervisor, monitor_urls: List[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if supervisor.stop_requested:
            raise Interrupted()
        leaders = {meta_leader(url) for url in monitor_urls}
        if len(leaders) == 1 and None not in leaders:
            return
        if time.monotonic() > deadline:
            raise StartupError(
                f"the {len(monitor_urls)} nats-server nodes elected no JetStream meta leader within {timeout:.0f} s "
                f"(each node's view: {sorted(str(x) for x in leaders)}); see their output above"
            )
        time.sleep(0.1)
