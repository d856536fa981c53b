"""``neutrino up --nats-cluster N``: N real nats-server nodes on loopback forming one JetStream cluster, every
process given all of them and ``--stream-replicas``; the default stays one server."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from neutrino.cli import main
from neutrino.local.nats import cluster_config
from test_cli import app_file, children, fake_bin, flag, read_until, start_up  # noqa: F401 - fixtures

needs_nats = pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _jsz(monitor_url: str) -> dict:
    with urllib.request.urlopen(f"{monitor_url}/jsz", timeout=10) as response:
        return json.loads(response.read())


def _nats_hello(host: str, port: int, user, password) -> str:
    """CONNECT (as `user`, or with no credentials) + PING; the server's answer line (PONG or -ERR ...)."""
    with socket.create_connection((host, port), timeout=10) as connection:
        reader = connection.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        connect = {"verbose": False, "pedantic": False, "protocol": 1}
        if user is not None:
            connect.update(user=user, **{"pass": password})
        connection.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        return reader.readline().decode(errors="replace").strip()


def test_node_config_names_the_node_and_routes_to_every_node() -> None:
    text = cluster_config(2, "127.0.0.1", 4223, 8223, 6223, [6222, 6223, 6224], "/state/nats-cluster/node-2/store")
    assert re.search(r"^server_name: neutrino-2$", text, re.M)
    assert re.search(r"^port: 4223$", text, re.M) and 'http: "127.0.0.1:8223"' in text
    assert 'store_dir: "/state/nats-cluster/node-2/store"' in text
    assert 'listen: "127.0.0.1:6223"' in text
    assert re.findall(r"nats-route://127\.0\.0\.1:(\d+)", text) == ["6222", "6223", "6224"]


def test_two_nodes_are_refused(app_file: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    with pytest.raises(SystemExit):
        main(["up", str(app_file), "--nats-cluster", "2"])
    assert "3 or more" in capsys.readouterr().err


def test_one_server_by_default_gets_no_replica_flag(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:  # noqa: F811
    process = start_up(tmp_path, app_file, fake_bin, "--fast-workers", "1")
    try:
        read_until(process, "Press Ctrl-C to stop.")
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    started = children(tmp_path)
    assert len(started["nats-server"]) == 1
    everyone = [*started["neutrino-worker"], *started["neutrino-gateway"]]
    assert all(len(flag(c["argv"], "--nats")[0].split(",")) == 1 for c in everyone)
    assert all(flag(c["argv"], "--stream-replicas") == [] for c in everyone)


@needs_nats
def test_up_runs_a_three_node_jetstream_cluster(tmp_path: Path, app_file: Path, fake_bin: Path) -> None:  # noqa: F811
    (fake_bin / "nats-server").unlink()  # the real one, from PATH
    first = _free_port()
    process = start_up(tmp_path, app_file, fake_bin, "--fast-workers", "1", "--nats-cluster", "3",
                       "--nats-port", str(first))
    try:
        output = "\n".join(read_until(process, "Press Ctrl-C to stop.", timeout=120))
        started = children(tmp_path)
        everyone = [*started["neutrino-worker"], *started["neutrino-gateway"]]
        [urls] = flag(started["neutrino-gateway"][0]["argv"], "--nats")
        servers = urls.split(",")
        assert len(servers) == 3 and all(s.startswith("nats://127.0.0.1:") for s in servers)
        assert all(flag(c["argv"], "--nats") == [urls] for c in everyone), "every process gets every node"
        assert all(flag(c["argv"], "--stream-replicas") == ["3"] for c in everyone)
        # Three nodes, each accepting clients, one cluster with one JetStream meta leader.
        for server in servers:
            host, port = server[len("nats://"):].split(":")
            with socket.create_connection((host, int(port)), timeout=5) as connection:
                assert connection.recv(4096).startswith(b"INFO ")
        # Every node admits the generated users only (the routes authenticate too, or there would be no leader).
        passwords = json.loads((tmp_path / "state" / "nats-auth.json").read_text())["users"]
        for server in servers:
            host, port = server[len("nats://"):].split(":")
            assert "Authorization Violation" in _nats_hello(host, int(port), None, None)
            assert "Authorization Violation" in _nats_hello(host, int(port), "gateway", "wrong")
            assert _nats_hello(host, int(port), "gateway", passwords["gateway"]).startswith("PONG")
            assert _nats_hello(host, int(port), "worker_async", passwords["worker_async"]).startswith("PONG")
        assert all(c["nats_user"] for c in everyone) and not any(
            p in " ".join(c["argv"]) for c in everyone for p in passwords.values())
        state = tmp_path / "state" / "nats-cluster"
        configs = [(state / f"node-{i}" / "nats.conf").read_text() for i in (1, 2, 3)]
        names = [re.search(r"^server_name: (\S+)$", c, re.M).group(1) for c in configs]
        assert len(set(names)) == 3
        monitors = ["http://" + re.search(r'^http: "([^"]+)"$', c, re.M).group(1) for c in configs]
        metas = [_jsz(m)["meta_cluster"] for m in monitors]
        assert {m["cluster_size"] for m in metas} == {3}
        assert len({m["leader"] for m in metas}) == 1 and metas[0]["leader"] in names
        assert all(f"nats-{i} |" in output for i in (1, 2, 3)), output
        assert "3-node JetStream cluster, streams at R3" in output and "nats-cluster/)" in output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert rest.count("Server Exiting") == 3, rest
    for i in (1, 2, 3):
        assert (tmp_path / "state" / "nats-cluster" / f"node-{i}" / "store" / "jetstream").is_dir()
