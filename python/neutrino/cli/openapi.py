"""``neutrino openapi APP [-o FILE]``: print (or write) the app's OpenAPI manifest, the gateway's ``--manifest``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..loading import write_text_atomic
from .common import add_app_argument, load_or_report

__all__ = ["register", "run"]


def register(commands: Any) -> argparse.ArgumentParser:
    """Add ``neutrino openapi`` to the CLI's subparsers."""
    parser = commands.add_parser("openapi", help="print the app's OpenAPI manifest", description=run.__doc__)
    add_app_argument(parser)
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the app's OpenAPI 3.1 manifest (the gateway's --manifest file)."""
    loaded = load_or_report(args.app)
    if loaded is None:
        return 1
    if args.output:
        write_text_atomic(args.output, loaded.manifest)
        print(f"wrote {args.output} ({len(loaded.app.tasks)} tasks)", file=sys.stderr)
    else:
        sys.stdout.write(loaded.manifest)
    return 0
