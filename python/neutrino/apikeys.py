"""The gateway's API keys file (``neutrino-gateway --api-keys PATH``): create, list and revoke keys.

A key is ``nk_<key id>_<secret>``: the id is 16 hex digits (public: it names the key in logs, metrics and the task
log), the secret 32 random bytes in base64url. The file keeps only the SHA-256 of the whole key::

    {"version": 1,
     "keys": [{"id": "3f9c0e1a2b4d5e6f", "name": "ci", "hash": "sha256:<64 hex digits>",
               "scopes": ["submit", "read"], "tasks": ["resize"], "pools": null,
               "rate_per_second": 5, "burst": 10, "max_in_flight": 100,
               "created": "2025-01-01T00:00:00Z", "revoked": null}]}

``tasks``/``pools`` (``null`` = any) limit what the key may submit; ``rate_per_second``/``burst`` and
``max_in_flight`` (``null`` = the gateway's ``--default-rate`` / unlimited) bound its use; ``revoked`` is the time the
key was revoked. Every write goes to a temporary file in the same folder, mode 0600, then replaces the file
(``rename``), so the gateway, which reloads the file when it changes, never reads half of one.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["SCOPES", "CreatedKey", "KeyFileError", "create_key", "list_keys", "revoke_key", "load", "hash_key"]

SCOPES = ("submit", "read", "admin")


class KeyFileError(Exception):
    """The keys file cannot be read, is not one, or the request does not fit it (unknown id, bad scope)."""


@dataclass(frozen=True)
class CreatedKey:
    id: str
    key: str
    entry: Dict[str, Any]


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def load(path: str) -> Dict[str, Any]:
    """The file's document; an empty one when the file does not exist yet."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode() or "{}")
    except FileNotFoundError:
        return {"version": 1, "keys": []}
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys", []), list):
        raise KeyFileError(f"{path}: not a keys file (expected {{\"keys\": [...]}})")
    data.setdefault("version", 1)
    data.setdefault("keys", [])
    return data


def _save(path: str, document: Dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".neutrino-keys-", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _names(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    if values is None:
        return None
    out = [v.strip() for v in values if v.strip()]
    return out or None


def create_key(
    path: str,
    *,
    name: str,
    scopes: Sequence[str],
    tasks: Optional[Sequence[str]] = None,
    pools: Optional[Sequence[str]] = None,
    rate: Optional[float] = None,
    burst: Optional[float] = None,
    max_in_flight: Optional[int] = None,
) -> CreatedKey:
    """Add a new random key to the file (created if missing) and return it; only its hash is stored."""
    scopes = [s.strip() for s in scopes if s.strip()]
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise KeyFileError(f"scopes must be some of {', '.join(SCOPES)} (got {', '.join(scopes) or 'none'})")
    for label, value in (("rate", rate), ("burst", burst), ("max_in_flight", max_in_flight)):
        if value is not None and not value > 0:
            raise KeyFileError(f"{label} must be positive")
    document = load(path)
    taken = {k.get("id") for k in document["keys"]}
    key_id = secrets.token_hex(8)
    while key_id in taken:
        key_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    key = f"nk_{key_id}_{secret}"
    entry: Dict[str, Any] = {
        "id": key_id,
        "name": name,
        "hash": hash_key(key),
        "scopes": sorted(set(scopes)),
        "tasks": _names(tasks),
        "pools": _names(pools),
        "rate_per_second": rate,
        "burst": burst,
        "max_in_flight": max_in_flight,
        "created": _now(),
        "revoked": None,
    }
    document["keys"].append(entry)
    _save(path, document)
    return CreatedKey(id=key_id, key=key, entry=entry)


def list_keys(path: str) -> List[Dict[str, Any]]:
    """The entries without their hashes."""
    return [{k: v for k, v in e.items() if k != "hash"} for e in load(path)["keys"]]


def revoke_key(path: str, key_id: str) -> Dict[str, Any]:
    """Mark a key revoked (the entry stays, for the record); a gateway refuses it within a second."""
    document = load(path)
    for entry in document["keys"]:
        if entry.get("id") == key_id:
            if not entry.get("revoked"):
                entry["revoked"] = _now()
                _save(path, document)
            return {k: v for k, v in entry.items() if k != "hash"}
    raise KeyFileError(f"no key with id {key_id} in {path}")
