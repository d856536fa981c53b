"""What the commands share: the APP argument, error lines, loading the app with its manifest."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..loading import LoadedApp, LoadError, load

__all__ = ["APP_HELP", "add_app_argument", "error", "load_or_report"]

APP_HELP = "the app: path/to/app.py, module or module:attr"


def add_app_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", metavar="APP", help=APP_HELP)


def error(message: str) -> None:
    """``neutrino: error: MESSAGE`` on stderr."""
    print(f"neutrino: error: {message}", file=sys.stderr)


def load_or_report(spec: str) -> Optional[LoadedApp]:
    """The app with its manifest, or None after saying on stderr why not (with the app's traceback when its own
    code raised)."""
    try:
        return load(spec)
    except LoadError as exc:
        if exc.traceback:
            sys.stderr.write(exc.traceback)
        error(str(exc))
        return None
