"""YAML text of the rendered objects, written by PyYAML (``yaml.SafeDumper``).

PyYAML is imported on first use, so nothing but rendering manifests needs it (the worker's embedded interpreter
and the other commands never import it). The style is block YAML with keys in insertion order, no line wrapping,
multi-line strings as ``|`` blocks, and a plain scalar only for strings such as ``name`` or ``/healthz``: any other
string is double-quoted, so no YAML reader (kustomize's Go YAML 1.1 parser included) can take ``1e3``, ``0o17``
or ``yes`` for a number or a boolean.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

__all__ = ["to_yaml", "to_yaml_stream"]

#: Strings written plain (PyYAML still quotes those that a YAML 1.1 reader would resolve, such as ``yes``).
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_STR_TAG = "tag:yaml.org,2002:str"
_dumper: Optional[type] = None


def _make_dumper() -> type:
    import yaml

    class Dumper(yaml.SafeDumper):
        """SafeDumper with Neutrino's string style."""

    def represent_str(dumper: yaml.SafeDumper, text: str) -> Any:
        if "\n" in text:
            style = "|"  # PyYAML falls back to a quoted scalar where a block cannot hold the text exactly
        elif _PLAIN.fullmatch(text):
            style = None
        else:
            style = '"'
        return dumper.represent_scalar(_STR_TAG, text, style=style)

    Dumper.add_representer(str, represent_str)
    return Dumper


def to_yaml(obj: Any) -> str:
    """One YAML document (block style) for JSON-like ``obj``."""
    return to_yaml_stream([obj])


def to_yaml_stream(objects: Sequence[Any]) -> str:
    """Several documents, separated by ``---``."""
    import yaml

    global _dumper
    if _dumper is None:
        _dumper = _make_dumper()
    return yaml.dump_all(
        list(objects), Dumper=_dumper, default_flow_style=False, sort_keys=False, allow_unicode=True, width=1 << 30
    )
