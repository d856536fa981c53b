"""The ``neutrino`` command: one subcommand per module of this package.

``neutrino openapi APP [-o FILE]``
    Print (or write) the app's OpenAPI manifest, the file the gateway is started with (:mod:`.openapi`).

``neutrino up APP [...]``
    Run the whole app locally: nats-server, workers and the gateway, supervised until Ctrl-C (:mod:`.up`, on
    top of :mod:`neutrino.local`).

``neutrino deploy APP [...]``
    Render Kubernetes manifests for the app's pools and apply them (:mod:`.deploy`, on top of
    :mod:`neutrino.k8s`).

``neutrino keys create|list|revoke --file PATH``
    Manage the gateway's API keys file (:mod:`.keys`, on top of :mod:`neutrino.apikeys`).

``APP`` is ``path/to/app.py``, ``module`` or ``module:attr``. Each command module has ``register(commands)``,
which adds its subparser with a ``handler``; :func:`main` builds the parser from :data:`COMMANDS` and runs the
chosen handler. Commands only import the library (:mod:`neutrino.loading`, :mod:`neutrino.local`,
:mod:`neutrino.k8s`), never each other.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .._version import __version__
from . import deploy, keys, openapi, up

__all__ = ["COMMANDS", "build_parser", "main"]

#: The subcommands, in the order ``neutrino --help`` lists them.
COMMANDS = (openapi, up, deploy, keys)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neutrino", description="Neutrino task orchestrator: Python SDK and CLI.")
    parser.add_argument("--version", action="version", version=f"neutrino {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``neutrino`` console script and ``python -m neutrino``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return args.handler(args)
