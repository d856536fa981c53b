"""``neutrino up APP``: run the whole app locally (nats-server, workers, gateway) until Ctrl-C.

``neutrino up APP [--port 8080] [--host 127.0.0.1] [--fast-workers 2] [--queue-workers N] [--concurrency 4]
[--nats-port 4222] [--nats-cluster N] [--state-dir .neutrino] [--bin-dir DIR] [--scale POOL=MIN:MAX[:TARGET[:WINDOW]]]...
[--no-autoscale] [--heartbeat-interval SECONDS]``

The command parses its flags; :func:`neutrino.local.up` does the rest.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..local import UpOptions, up
from ..local.autoscale import ScaleSpec, parse_scale
from ..local.binaries import GATEWAY_BINARY, WORKER_BINARY
from .common import add_app_argument, error, load_or_report

__all__ = ["register", "run"]


def register(commands: Any) -> argparse.ArgumentParser:
    """Add ``neutrino up`` to the CLI's subparsers."""
    parser = commands.add_parser(
        "up", help="run the app locally (nats-server, workers, gateway)", description=run.__doc__
    )
    add_app_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="the gateway's listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="the gateway's port (default: %(default)s)")
    parser.add_argument(
        "--fast-workers",
        type=_positive_int,
        default=2,
        metavar="N",
        help="HTTP workers each sync pool starts with (default: %(default)s; within the pool's MIN..MAX when "
        "autoscaled, which the sync pools are whenever NATS runs)",
    )
    parser.add_argument(
        "--queue-workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="NATS workers each async/gpu pool starts with (default: the pool's scaling minimum; "
        "1 with --no-autoscale); the autoscaler then keeps the number the gateway's /pools wants",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="Python threads per queue (async, gpu) worker (default: %(default)s)",
    )
    parser.add_argument(
        "--fast-concurrency",
        type=_positive_int,
        default=16,
        metavar="N",
        help="Python threads per fast (sync) worker: sync calls are mostly I/O-bound and Python releases the GIL "
        "while one waits, so more threads than cores pay (default: %(default)s)",
    )
    parser.add_argument(
        "--nats-port",
        type=_port,
        default=4222,
        metavar="PORT",
        help="client port of the local nats-server, started when the app has async or gpu tasks; "
        "a free one is picked when it is busy (default: %(default)s)",
    )
    parser.add_argument(
        "--nats-cluster",
        type=_cluster_size,
        default=1,
        metavar="N",
        help="nats-server nodes: 1 (default) runs one server; N > 1 runs N nodes on loopback forming one JetStream "
        "cluster (client ports from --nats-port on, routes between them, stores under STATE_DIR/nats-cluster), "
        "every process connected to all of them and every stream on 3 nodes (--stream-replicas 3), so one "
        "node can die without losing a task; 2 is refused (two nodes cannot survive losing either)",
    )
    parser.add_argument(
        "--state-dir",
        default=".neutrino",
        metavar="DIR",
        help="where the manifest, the task log and the JetStream store live (default: %(default)s)",
    )
    parser.add_argument(
        "--bin-dir",
        metavar="DIR",
        help=f"where {WORKER_BINARY} and {GATEWAY_BINARY} are "
        "(default: $NEUTRINO_BIN_DIR, else ./.build/release, ./.build/debug, $PATH)",
    )
    parser.add_argument(
        "--scale",
        type=_scale_spec,
        action="append",
        default=[],
        metavar="POOL=MIN:MAX[:TARGET[:WINDOW]]",
        help="scaling policy of one pool, repeatable (given to the gateway, which computes each pool's desired "
        "replicas): MIN..MAX workers, TARGET tasks of backlog per replica (queued pools; default 10, gpu 1), "
        "WINDOW seconds of lower demand before scaling in (default 60); MIN 0 lets a pool scale to zero "
        "(gpu default: 0:1:1:60)",
    )
    parser.add_argument(
        "--no-autoscale",
        action="store_true",
        help="keep the async/gpu pools at --queue-workers instead of following /pools",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="how often workers announce themselves on NATS (default: the worker's, 2 s); "
        "the gateway forgets a worker after 4 missed intervals (at least 2 s)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="URL",
        help="export OpenTelemetry traces of the gateway and every worker over OTLP/HTTP to this base URL, e.g. "
        "http://127.0.0.1:4318 (a collector, Jaeger, Tempo); default: off, unless OTEL_EXPORTER_OTLP_ENDPOINT is set "
        "(the processes inherit it)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the whole app locally: a nats-server with JetStream and NATS workers for each async/gpu pool (when
    the app has such tasks), HTTP workers for each sync pool, and the gateway in front of them.

    Every pool is autoscaled: once a second the gateway's ``/pools`` says how many workers each pool should have
    (the policy of ``--scale``), and workers are started, or drained with SIGTERM, to match. Pools with MIN 0
    (gpu by default) start with none; sync pools start with ``--fast-workers`` and are found by the gateway from
    their heartbeats (a static ``--http-pool`` list only when no NATS runs: a sync-only app with --no-autoscale).

    A worker that exits without being asked to is restarted in its slot (an HTTP worker on the same port): at
    once after exit status 0 or 75, else after 1 s, 2 s, 4 s ... at most 30 s. A worker that fails at start-up
    (the app cannot be imported) stops start-up, its output shown.

    Stop with Ctrl-C (or SIGTERM): the workers and the gateway get SIGTERM (SIGKILL after 10 s), then
    nats-server. The gateway or nats-server exiting stops everything too.
    """
    loaded = load_or_report(args.app)
    if loaded is None:
        return 1
    options = UpOptions(
        host=args.host,
        port=args.port,
        fast_workers=args.fast_workers,
        queue_workers=args.queue_workers,
        concurrency=args.concurrency,
        fast_concurrency=args.fast_concurrency,
        nats_port=args.nats_port,
        state_dir=args.state_dir,
        bin_dir=args.bin_dir,
        scale=list(args.scale),
        autoscaling=not args.no_autoscale,
        heartbeat_interval=args.heartbeat_interval,
        nats_cluster=args.nats_cluster,
        otlp_endpoint=args.otlp_endpoint,
    )
    return up(loaded, options, error=error)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _cluster_size(text: str) -> int:
    value = int(text)
    if value == 2:
        raise argparse.ArgumentTypeError(
            "2 nodes cannot elect a leader once either is gone: use 1, or 3 or more (3 survives losing one)"
        )
    if not 1 <= value <= 9:
        raise argparse.ArgumentTypeError("must be 1, or 3 to 9")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number above 0")
    return value


def _scale_spec(text: str) -> ScaleSpec:
    try:
        return parse_scale(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number (1-65535)")
    return value

