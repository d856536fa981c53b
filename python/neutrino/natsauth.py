"""NATS users and permissions (issue 12): who may publish and subscribe to what.

One user for the gateway, one per pool for its workers (``worker_<pool>``), each with a random password. The
permissions follow the subjects the code uses (``QueueLayout``, ``EventStreamLayout``, ``WorkerHeartbeat``,
``DeadLetters``, ``SettledMarkers``, the JetStream API):

- the gateway provisions the streams and consumers, publishes tasks, cancellations, settled marks and its own
  events, reads heartbeats, the max-deliveries advisories and (``--events-via-nats``) the events stream;
- a worker of pool P provisions nothing (the gateway creates the streams and every pool's consumer; a worker with
  a NATS user waits for its consumer), fetches from ``pool_P`` only (``$JS.API.CONSUMER.MSG.NEXT.NEUTRINO_TASKS.pool_P``) and acks
  its deliveries, publishes its pool's events, heartbeats and dead-letter copies and settled marks, reads settled
  marks, may create (or update) the events stream it publishes to, and hears cancellations. It cannot fetch
  another pool's tasks, publish a task or a cancellation, or touch any other stream or consumer.

Each user's reply inboxes are ``_INBOX_<user>.…`` (the Swift side sets cnats's custom inbox prefix to that) and it
may subscribe to its own only, so nobody reads the replies meant for another user (the tasks another pool fetched).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from typing import Dict, Iterable, List, Optional

__all__ = [
    "GATEWAY_USER",
    "NatsCredentials",
    "authorization_block",
    "gateway_permissions",
    "inbox_prefix",
    "load_or_create",
    "worker_permissions",
    "worker_user",
]

GATEWAY_USER = "gateway"
TASKS_STREAM = "NEUTRINO_TASKS"
EVENTS_STREAM = "NEUTRINO_EVENTS"
SETTLED_STREAM = "NEUTRINO_SETTLED"
_TOKEN = re.compile(r"[^A-Za-z0-9_-]")



def new_password() -> str:
    """A random NATS password (192 bits): a letter, then hex digits. nats-server parses a variable it substitutes
    (``$NATS_PW_GATEWAY`` in the Kubernetes config) as a config value, so a password starting with a digit or ``-``
    would be read as a malformed number and the server would not start."""
    return "p" + secrets.token_hex(24)


def is_safe_password(value: object) -> bool:
    """Whether ``value`` is a password nats-server substitutes as a plain string (see :func:`new_password`)."""
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9]{15,}", value) is not None

def worker_user(pool: str) -> str:
    """The NATS user of pool ``pool``'s workers."""
    return f"worker_{pool}"


def inbox_prefix(user: str) -> str:
    """The reply-inbox prefix of ``user``'s connections (``NATSAuth.inboxPrefix`` in Swift)."""
    return "_INBOX_" + _TOKEN.sub("_", user)


def gateway_permissions(user: str = GATEWAY_USER) -> Dict[str, Dict[str, List[str]]]:
    return {
        "publish": {
            "allow": [
                "neutrino.>",  # tasks, cancellations, settled marks, dead letters (janitor), its own events
                "$JS.API.>",  # provisioning, stream/consumer info, message get/delete, the events consumer
                f"$JS.ACK.{EVENTS_STREAM}.>",  # acks of the events it records (--events-via-nats)
            ],
            "deny": ["neutrino.heartbeat.>"],  # a gateway never speaks for a worker
        },
        "subscribe": {
            "allow": [
                "neutrino.heartbeat.>",
                "neutrino.control.finished.*",  # workers' notices that a task finished (long polls answer at once)
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASKS_STREAM}.*",
                f"{inbox_prefix(user)}.>",
            ]
        },
    }


def worker_permissions(pool: str) -> Dict[str, Dict[str, List[str]]]:
    consumer = f"pool_{pool}"
    return {
        "publish": {
            "allow": [
                f"$JS.API.CONSUMER.INFO.{TASKS_STREAM}.{consumer}",  # binding the pull subscription
                f"$JS.API.CONSUMER.MSG.NEXT.{TASKS_STREAM}.{consumer}",  # fetching its pool's tasks
                f"$JS.ACK.{TASKS_STREAM}.{consumer}.>",  # ack, nak, in-progress, term
                f"$JS.API.STREAM.MSG.GET.{SETTLED_STREAM}",  # is this delivery settled already?
                # --task-log nats creates the stream it publishes to when it is missing (a worker started before any
                # gateway); changing an existing stream's limits or retention is the gateway's alone.
                f"$JS.API.STREAM.CREATE.{EVENTS_STREAM}",
                f"$JS.API.STREAM.INFO.{EVENTS_STREAM}",
                f"neutrino.events.{pool}",
                f"neutrino.heartbeat.{pool}",
                f"neutrino.dlq.{pool}.*",
                f"neutrino.settled.{pool}.*",  # marks of its own pool's tasks only
                f"neutrino.control.finished.{pool}",  # "this task of mine is done" for the gateways' long polls
            ]
        },
        "subscribe": {"allow": ["neutrino.control.cancel", f"{inbox_prefix(worker_user(pool))}.>"]},
    }


class NatsCredentials:
    """Users and their passwords: the gateway's and one per pool. ``admin`` (optional) may do anything; the e2e
    tests use it to reach the wire directly."""

    def __init__(self, passwords: Dict[str, str], admin: Optional[str] = None):
        self.passwords = dict(passwords)
        self.admin = admin

    def password(self, user: str) -> str:
        return self.passwords[user]

    def ensure_pools(self, pools: Iterable[str]) -> bool:
        """Adds a user for each pool that has none; True when one was added."""
        added = False
        for pool in pools:
            user = worker_user(pool)
            if user not in self.passwords:
                self.passwords[user] = new_password()
                added = True
        return added

    def env(self, user: str) -> Dict[str, str]:
        """The environment that hands ``user``'s credentials to a gateway or worker (never its command line)."""
        return {"NEUTRINO_NATS_USER": user, "NEUTRINO_NATS_PASSWORD": self.passwords[user]}

    def gateway_env(self) -> Dict[str, str]:
        return self.env(GATEWAY_USER)

    def worker_env(self, pool: str) -> Dict[str, str]:
        return self.env(worker_user(pool))

    @property
    def pools(self) -> List[str]:
        return sorted(u[len("worker_") :] for u in self.passwords if u.startswith("worker_"))

    def to_json(self) -> str:
        return json.dumps({"version": 1, "users": self.passwords, "admin": self.admin}, indent=2, sort_keys=True)

    @classmethod
    def generate(cls, pools: Iterable[str], admin: Optional[str] = None) -> "NatsCredentials":
        creds = cls({GATEWAY_USER: new_password()}, admin=admin)
        if admin:
            creds.passwords[admin] = new_password()
        creds.ensure_pools(pools)
        return creds


def authorization_block(creds: NatsCredentials, indent: str = "") -> str:
    """The nats-server ``authorization { users = [...] }`` block for ``creds`` (JSON values, which the server's
    configuration syntax accepts)."""
    users = []
    for user, password in sorted(creds.passwords.items()):
        entry: Dict[str, object] = {"user": user, "password": password}
        if user == GATEWAY_USER:
            entry["permissions"] = gateway_permissions(user)
        elif user.startswith("worker_"):
            entry["permissions"] = worker_permissions(user[len("worker_") :])
        elif user != creds.admin:
            raise ValueError(f"no permissions known for NATS user {user!r}")
        users.append(entry)
    body = json.dumps({"users": users}, indent=2)
    inner = "\n".join(indent + "  " + line for line in body[1:-1].strip("\n").splitlines())
    return f"{indent}authorization {{\n{inner}\n{indent}}}\n"


def env_name(user: str) -> str:
    """The environment variable a Kubernetes nats-server pod gets ``user``'s password in (``NATS_PW_WORKER_FAST``)."""
    return "NATS_PW_" + _TOKEN.sub("_", user).replace("-", "_").upper()


def authorization_from_env(pools: Iterable[str]) -> str:
    """The ``authorization`` block for the gateway and ``pools``' workers whose passwords are environment references
    (``$NATS_PW_GATEWAY``, resolved by nats-server at start-up): the form a ConfigMap can hold."""
    users = [GATEWAY_USER, *(worker_user(p) for p in pools)]
    marker = NatsCredentials({u: f"@@{env_name(u)}@@" for u in users})
    text = authorization_block(marker)
    for user in users:
        text = text.replace(f'"@@{env_name(user)}@@"', f"${env_name(user)}")
    return text


def write_private(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` readable by its owner only (mode 0600 from creation on; replaced atomically)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_or_create(path: str, pools: Iterable[str], admin: Optional[str] = None) -> NatsCredentials:
    """The credentials kept in ``path`` (JSON, mode 0600), created with random passwords the first time and
    given a user for every pool in ``pools`` that has none yet; the file is rewritten only when that changes it."""
    pools = list(pools)
    creds: Optional[NatsCredentials] = None
    try:
        with open(path, encoding="utf-8") as file:
            doc = json.load(file)
        users = doc.get("users")
        if isinstance(users, dict) and GATEWAY_USER in users and all(isinstance(v, str) for v in users.values()):
            creds = NatsCredentials(users, admin=doc.get("admin"))
    except (OSError, ValueError):
        creds = None
    changed = creds is None
    if creds is None:
        creds = NatsCredentials.generate(pools, admin=admin)
    else:
        changed = creds.ensure_pools(pools)
        if admin and admin not in creds.passwords:
            creds.passwords[admin] = new_password()
            creds.admin = admin
            changed = True
    if changed or (os.stat(path).st_mode & 0o077):
        write_private(path, creds.to_json())
    return creds
