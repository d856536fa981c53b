"""Load an app and render its manifest: where ``neutrino openapi``, ``up`` and ``deploy`` start.

:func:`load` imports the app given as ``path/to/app.py``, ``module`` or ``module:attr`` and builds its OpenAPI
manifest (the gateway's ``--manifest``); any failure is one :class:`LoadError` whose message says what went wrong
and, when the app's own code raised, carries the traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import traceback

from ._loader import load_app, split_spec
from .app import App
from .errors import NeutrinoError
from .manifest import build_openapi

__all__ = ["LoadError", "LoadedApp", "load", "manifest_text", "absolute_app_spec", "split_spec", "write_text_atomic"]


class LoadError(Exception):
    """The app could not be imported, or its manifest not built. ``traceback`` is the app's traceback when its
    own code raised (empty otherwise)."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


@dataclasses.dataclass(frozen=True)
class LoadedApp:
    """An imported app with its manifest."""

    #: APP as given: ``path/to/app.py``, ``module`` or ``module:attr``.
    spec: str
    app: App
    #: The OpenAPI 3.1 manifest as JSON text (indented, one final newline): what ``neutrino openapi`` prints.
    manifest: str


def load(spec: str) -> LoadedApp:
    """Import the app ``spec`` names and build its manifest; raises :class:`LoadError`."""
    try:
        app = load_app(spec)
    except (NeutrinoError, FileNotFoundError, ModuleNotFoundError) as exc:
        raise LoadError(str(exc)) from None
    except Exception:
        raise LoadError(f"importing {spec} failed (traceback above)", traceback.format_exc()) from None
    try:
        manifest = manifest_text(app)
    except NeutrinoError as exc:
        raise LoadError(str(exc)) from None
    return LoadedApp(spec, app, manifest)


def manifest_text(app: App) -> str:
    """The app's OpenAPI manifest as JSON text; raises :class:`~neutrino.errors.NeutrinoError` (a definition error)."""
    return json.dumps(build_openapi(app), indent=2, ensure_ascii=False) + "\n"


def absolute_app_spec(spec: str) -> str:
    """The app spec with a file path made absolute (child processes may resolve it from elsewhere)."""
    target, attr = split_spec(spec)
    if target.endswith(".py") or os.sep in target or "/" in target:
        target = os.path.abspath(target)
        return f"{target}:{attr}" if attr else target
    return spec


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (readers never see half a file), creating its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)
