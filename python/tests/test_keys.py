"""``neutrino keys create|list|revoke``: the keys file the gateway's --api-keys reads."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from neutrino import apikeys
from neutrino.cli import main


def test_create_prints_the_key_once_and_stores_only_its_hash(tmp_path, capsys):
    path = str(tmp_path / "keys.json")
    assert main(["keys", "create", "--name", "ci", "--scopes", "submit,read", "--tasks", "a,b", "--rate", "5",
                 "--file", path]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("nk_")
    key_id, secret = key[3:].split("_", 1)
    assert len(key_id) == 16 and len(secret) >= 43  # 32 random bytes, base64url
    text = open(path).read()
    assert secret not in text and key not in text
    doc = json.loads(text)
    (entry,) = doc["keys"]
    assert entry["id"] == key_id
    assert entry["hash"] == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert entry["scopes"] == ["read", "submit"] and entry["tasks"] == ["a", "b"] and entry["rate_per_second"] == 5
    assert entry["revoked"] is None and entry["created"].endswith("Z")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_list_shows_ids_names_scopes_never_secrets(tmp_path, capsys):
    path = str(tmp_path / "keys.json")
    a = apikeys.create_key(path, name="alpha", scopes=["read"])
    b = apikeys.create_key(path, name="beta", scopes=["admin"], max_in_flight=3)
    assert main(["keys", "list", "--file", path]) == 0
    out = capsys.readouterr().out
    assert a.id in out and b.id in out and "alpha" in out and "admin" in out and "in_flight<=3" in out
    assert a.key not in out and "sha256" not in out
    assert main(["keys", "list", "--json", "--file", path]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in entries] == [a.id, b.id] and all("hash" not in e for e in entries)


def test_revoke_marks_the_key_and_keeps_the_file_0600(tmp_path, capsys):
    path = str(tmp_path / "keys.json")
    a = apikeys.create_key(path, name="alpha", scopes=["submit"])
    b = apikeys.create_key(path, name="beta", scopes=["read"])
    os.chmod(path, 0o644)
    assert main(["keys", "revoke", a.id, "--file", path]) == 0
    assert f"revoked {a.id}" in capsys.readouterr().out
    doc = json.load(open(path))
    by_id = {e["id"]: e for e in doc["keys"]}
    assert by_id[a.id]["revoked"] and by_id[b.id]["revoked"] is None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".neutrino-keys-")]  # no temporary file left
    assert main(["keys", "revoke", "0000000000000000", "--file", path]) == 1
    assert "no key with id" in capsys.readouterr().err


@pytest.mark.parametrize("scopes", ["", "write", "read,root"])
def test_create_refuses_unknown_scopes(tmp_path, capsys, scopes):
    path = str(tmp_path / "keys.json")
    assert main(["keys", "create", "--name", "x", "--scopes", scopes, "--file", path]) == 1
    assert "scopes must be" in capsys.readouterr().err
    assert not os.path.exists(path)


def test_keys_are_unique(tmp_path):
    path = str(tmp_path / "keys.json")
    made = [apikeys.create_key(path, name=f"k{i}", scopes=["read"]) for i in range(20)]
    assert len({m.id for m in made}) == 20 and len({m.key for m in made}) == 20
    assert len(apikeys.list_keys(path)) == 20
