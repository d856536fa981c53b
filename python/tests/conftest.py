"""Shared fixtures: apps written to temporary files and loaded like the worker loads them."""

from __future__ import annotations

import itertools
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

_counter = itertools.count()


@pytest.fixture
def write_app(tmp_path: Path) -> Callable[[str], Path]:
    """Write ``source`` (dedented) to a uniquely named ``.py`` file and return its path."""
    created = []

    def write(source: str, stem: str = "") -> Path:
        path = tmp_path / f"{stem or 'nt_app'}_{next(_counter)}.py"
        path.write_text(textwrap.dedent(source))
        created.append(path.stem)
        return path

    yield write
    for stem in created:
        sys.modules.pop(stem, None)


@pytest.fixture(autouse=True)
def _restore_sys_path():
    """Loading an app puts its folder first on sys.path; undo that after each test."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved
