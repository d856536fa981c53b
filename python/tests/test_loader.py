"""``load_app``: files, modules, ``:attr``, and the errors when there is not exactly one App."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from neutrino import App, AppLoadError
from neutrino._loader import load_app, split_spec

ONE_APP = """
from neutrino import App
app = App("one")
alias = app

@app.task()
def ping() -> str:
    return "pong"
"""

TWO_APPS = """
from neutrino import App
first = App("first")
second = App("second")
"""


def test_split_spec() -> None:
    assert split_spec("app.py") == ("app.py", None)
    assert split_spec("pkg.mod:app") == ("pkg.mod", "app")
    assert split_spec("dir/app.py:make.app") == ("dir/app.py", "make.app")
    assert split_spec("pkg.mod") == ("pkg.mod", None)


def test_load_file(write_app) -> None:
    path = write_app(ONE_APP)
    app = load_app(str(path))
    assert isinstance(app, App) and app.name == "one"
    assert sys.path[0] == str(path.parent)
    assert app.tasks["ping"].func.__module__ == path.stem  # the readable module name
    assert load_app(str(path)) is app  # imported once


def test_file_can_import_its_siblings(write_app) -> None:
    helper = write_app("VALUE = 41\n", stem="helper_mod")
    path = write_app(f"""
        from neutrino import App
        import {helper.stem} as helper
        app = App("sibling")
        @app.task()
        def answer() -> int:
            return helper.VALUE + 1
        """)
    assert load_app(str(path)).tasks["answer"].func() == 42


def test_load_file_with_attr(write_app) -> None:
    path = write_app(TWO_APPS)
    assert load_app(f"{path}:second").name == "second"


def test_several_apps(write_app) -> None:
    path = write_app(TWO_APPS)
    with pytest.raises(AppLoadError) as info:
        load_app(str(path))
    assert f"{path}:first" in str(info.value) and f"{path}:second" in str(info.value)


def test_same_app_under_two_names_is_one(write_app) -> None:
    assert load_app(str(write_app(ONE_APP))).name == "one"


def test_no_app(write_app) -> None:
    with pytest.raises(AppLoadError, match="no neutrino.App found"):
        load_app(str(write_app("x = 1\n")))


def test_attr_errors(write_app) -> None:
    path = write_app(ONE_APP)
    with pytest.raises(AppLoadError, match="no attribute 'missing'"):
        load_app(f"{path}:missing")
    with pytest.raises(AppLoadError, match="not a neutrino.App"):
        load_app(f"{path}:ping")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_app(str(tmp_path / "nope.py"))


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(AppLoadError, match="directory"):
        load_app(str(tmp_path) + "/")


def test_module_spec(write_app, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_app(ONE_APP, stem="modspec")
    monkeypatch.chdir(path.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(path.parent))])
    assert load_app(path.stem).name == "one"
    assert load_app(f"{path.stem}:alias").name == "one"


def test_stdlib_named_file_gets_a_private_module_name(tmp_path: Path) -> None:
    path = tmp_path / "json.py"
    path.write_text(ONE_APP)
    app = load_app(str(path))
    assert app.tasks["ping"].func.__module__.startswith("_neutrino_app_")
    assert sys.modules["json"].__file__ != str(path)


def test_import_error_in_app_propagates(write_app) -> None:
    path = write_app("raise RuntimeError('broken app')\n")
    with pytest.raises(RuntimeError, match="broken app"):
        load_app(str(path))
    assert path.stem not in sys.modules


def test_empty_spec() -> None:
    with pytest.raises(AppLoadError):
        load_app("  ")
