"""Find an :class:`~neutrino.App` from an app spec: ``path/to/app.py``, ``module`` or ``module:attr``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import zlib
from types import ModuleType
from typing import List, Optional, Tuple

from .app import App
from .errors import AppLoadError

__all__ = ["load_app", "split_spec"]


def split_spec(spec: str) -> Tuple[str, Optional[str]]:
    """Split ``"target:attr"`` into ``("target", "attr")``; ``("target", None)`` when there is no attr."""
    target, sep, attr = spec.rpartition(":")
    if sep and target and attr and all(part.isidentifier() for part in attr.split(".")):
        return target, attr
    return spec, None


def load_app(spec: str) -> App:
    """Import the app named by ``spec`` and return its :class:`~neutrino.App`.

    ``spec`` is one of:

    * ``path/to/app.py`` (optionally ``path/to/app.py:attr``): the file is imported as a module after its
      folder is put first on ``sys.path``, so it can import its siblings.
    * ``package.module`` or ``package.module:attr``: imported normally, with the current directory on
      ``sys.path`` (as ``python -m`` would have it).

    Without ``:attr`` the module must hold exactly one ``App`` instance.

    Raises:
        AppLoadError: no ``App`` (or several) where the spec points.
        FileNotFoundError, ImportError: the file or module does not exist; errors raised while the app's
            own code is imported propagate unchanged.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise AppLoadError("empty app spec; pass path/to/app.py, module or module:attr")
    target, attr = split_spec(spec.strip())
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(target)
    else:
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        module = importlib.import_module(target)
    return _find_app(module, spec, attr)


def _import_file(path: str) -> ModuleType:
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise AppLoadError(f"{path} is a directory; pass the .py file that defines the App")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"app file not found: {path}")
    folder = os.path.dirname(path)
    if sys.path[:1] != [folder]:
        sys.path.insert(0, folder)

    name = _module_name(path)
    existing = sys.modules.get(name)
    if existing is not None:
        return existing

    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise AppLoadError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before it runs: dataclasses and typing.get_type_hints look the module up by name.
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _module_name(path: str) -> str:
    """The file's stem when that names no other module (readable error types like ``app.QuotaExceeded``),
    else a unique private name, so an app file called ``queue.py`` cannot shadow or reuse the stdlib's."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.isidentifier():
        existing = sys.modules.get(stem)
        if existing is None or _same_file(getattr(existing, "__file__", None), path):
            return stem
    return f"_neutrino_app_{zlib.crc32(path.encode()):08x}"


def _same_file(a: Optional[str], b: str) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _find_app(module: ModuleType, spec: str, attr: Optional[str]) -> App:
    if attr is not None:
        obj: object = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise AppLoadError(f"{spec}: module {module.__name__!r} has no attribute {attr!r}") from None
        if not isinstance(obj, App):
            raise AppLoadError(f"{spec}: {attr!r} is a {type(obj).__name__}, not a neutrino.App")
        return obj

    found: List[Tuple[str, App]] = []
    for name, value in vars(module).items():
        if isinstance(value, App) and all(value is not app for _, app in found):
            found.append((name, value))
    if len(found) == 1:
        return found[0][1]
    if not found:
        raise AppLoadError(f"{spec}: no neutrino.App found in module {module.__name__!r}; define app = App('name')")
    candidates = ", ".join(f"{spec}:{name}" for name, _ in found)
    raise AppLoadError(f"{spec}: several neutrino.App instances found; pick one: {candidates}")
