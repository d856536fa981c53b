"""An app whose dependency exists only inside a virtualenv (made by the test with Debian's
`/usr/bin/python3 -m venv --without-pip DIR`); the worker finds it only when started with VIRTUAL_ENV=DIR."""
from __future__ import annotations

import neutrino_e2e_venv_only  # noqa: F401 - written into DIR/lib/python3.11/site-packages by the test

from neutrino import App

app = App("e2e_venv")


@app.task()
def venv_value() -> dict:
    """Where the venv-only module came from."""
    return {"value": neutrino_e2e_venv_only.VALUE, "file": neutrino_e2e_venv_only.__file__}
