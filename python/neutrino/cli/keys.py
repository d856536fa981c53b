"""``neutrino keys create|list|revoke --file PATH``: manage the gateway's API keys file (:mod:`neutrino.apikeys`).

``create`` prints the new key once (only its SHA-256 is stored); ``list`` shows ids, names, scopes, limits, when
each was created and revoked, never a secret; ``revoke KEY_ID`` marks a key revoked, which a running gateway applies
within a second (it watches the file; SIGHUP reloads at once).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, List, Optional

from ..apikeys import KeyFileError, create_key, list_keys, revoke_key
from .common import error

__all__ = ["register", "run_create", "run_list", "run_revoke"]


def _csv(text: Optional[str]) -> Optional[List[str]]:
    return None if text is None else [p for p in (s.strip() for s in text.split(",")) if p]


def register(commands: Any) -> argparse.ArgumentParser:
    """Add ``neutrino keys`` and its subcommands."""
    parser = commands.add_parser("keys", help="manage the gateway's API keys file", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")

    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="what the key is for (shown by list)")
    create.add_argument("--scopes", required=True, help="comma-separated: submit, read, admin (admin implies the others)")
    create.add_argument("--tasks", help="comma-separated task names the key may submit (default: any)")
    create.add_argument("--pools", help="comma-separated pools the key may submit to (default: any)")
    create.add_argument("--rate", type=float, help="requests per second (default: the gateway's --default-rate)")
    create.add_argument("--burst", type=float, help="requests allowed at once above the rate (default: the rate)")
    create.add_argument("--max-in-flight", type=int, help="queued + running tasks the key may have (default: no cap)")
    create.add_argument("--json", action="store_true", help="print {id, key} as JSON")
    create.add_argument("--file", required=True, metavar="PATH", help="the keys file (created 0600 if missing)")
    create.set_defaults(handler=run_create)

    listing = sub.add_parser("list", help="list the keys (never their secrets)")
    listing.add_argument("--file", required=True, metavar="PATH")
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")
    listing.set_defaults(handler=run_list)

    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.add_argument("--file", required=True, metavar="PATH")
    revoke.set_defaults(handler=run_revoke)

    parser.set_defaults(handler=lambda _args: (parser.print_help(), 2)[1])
    return parser


def run_create(args: argparse.Namespace) -> int:
    try:
        created = create_key(args.file, name=args.name, scopes=_csv(args.scopes) or [], tasks=_csv(args.tasks),
                             pools=_csv(args.pools), rate=args.rate, burst=args.burst, max_in_flight=args.max_in_flight)
    except KeyFileError as e:
        error(str(e))
        return 1
    if args.json:
        print(json.dumps({"id": created.id, "key": created.key}))
    else:
        print(created.key)
        print(f"created key {created.id} ({args.name}; scopes {','.join(created.entry['scopes'])}) in {args.file}; "
              "the key is shown only now", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    try:
        entries = list_keys(args.file)
    except KeyFileError as e:
        error(str(e))
        return 1
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    print(f"{'ID':<16}  {'NAME':<20}  {'SCOPES':<18}  {'CREATED':<20}  {'REVOKED':<20}  LIMITS")
    for e in entries:
        limits = []
        if e.get("tasks"):
            limits.append("tasks=" + ",".join(e["tasks"]))
        if e.get("pools"):
            limits.append("pools=" + ",".join(e["pools"]))
        if e.get("rate_per_second"):
            limits.append(f"rate={e['rate_per_second']:g}/s")
        if e.get("max_in_flight"):
            limits.append(f"in_flight<={e['max_in_flight']}")
        print(f"{e.get('id', ''):<16}  {str(e.get('name', ''))[:20]:<20}  {','.join(e.get('scopes', [])):<18}  "
              f"{e.get('created') or '':<20}  {e.get('revoked') or '-':<20}  {' '.join(limits)}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    try:
        entry = revoke_key(args.file, args.key_id)
    except KeyFileError as e:
        error(str(e))
        return 1
    print(f"revoked {entry['id']} ({entry.get('name', '')}) at {entry['revoked']}")
    return 0
