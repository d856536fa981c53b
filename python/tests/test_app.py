"""``App`` and ``@app.task``: defaults, plain-callable behaviour and every DefinitionError."""

from __future__ import annotations

import inspect
from typing import Tuple

import pytest

from neutrino import App, DefinitionError, NeutrinoError, Task, TaskSpec


@pytest.fixture
def app() -> App:
    return App("demo")


# -- defaults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, pool, timeout_ms",
    [("sync", "fast", 5_000), ("async", "async", 300_000), ("gpu", "gpu", 600_000)],
)
def test_defaults_per_mode(app: App, mode: str, pool: str, timeout_ms: int) -> None:
    @app.task(execution_mode=mode)
    def work(x: int) -> int:
        return x

    assert work.spec == TaskSpec(
        name="work", func=work.spec.func, execution_mode=mode, pool=pool, timeout_ms=timeout_ms, retries=0
    )
    assert app.pools() == {pool: mode}


def test_explicit_options(app: App) -> None:
    @app.task(name="report", execution_mode="async", pool="reports", timeout_secs=1.5, retries=3)
    def generate_report(dataset: str) -> dict:
        """Build the report.

        Longer text.
        """
        return {}

    spec = app.tasks["report"]
    assert (spec.pool, spec.timeout_ms, spec.retries) == ("reports", 1500, 3)
    assert spec.description == "Build the report.\n\nLonger text."
    assert generate_report.name == "report"


def test_timeout_ms_and_gpu_pool(app: App) -> None:
    @app.task(execution_mode="gpu", pool="a100", timeout_ms=1_200_000)
    def train(data: str) -> dict:
        return {}

    assert (train.spec.pool, train.spec.timeout_ms) == ("a100", 1_200_000)


def test_sync_timeout_at_the_limit_is_fine(app: App) -> None:
    @app.task(timeout_secs=5)
    def quick() -> None:
        pass

    assert quick.spec.timeout_ms == 5000


def test_tasks_and_pools_in_definition_order(app: App) -> None:
    @app.task(execution_mode="async")
    def b() -> None: ...

    @app.task()
    def a() -> None: ...

    @app.task(execution_mode="gpu", pool="a100")
    def c() -> None: ...

    assert list(app.tasks) == ["b", "a", "c"]
    assert app.pools() == {"async": "async", "fast": "sync", "a100": "gpu"}
    app.tasks.clear()  # a copy: the app is unaffected
    assert len(app.tasks) == 3


# -- the decorated function stays a plain callable --------------------------------------------------


def test_plain_callable(app: App) -> None:
    @app.task()
    def echo(x: int, label: str = "") -> dict:
        """Echo."""
        return {"x": x, "label": label}

    assert echo(3) == {"x": 3, "label": ""}
    assert echo(x=4, label="a") == {"x": 4, "label": "a"}
    assert isinstance(echo, Task)
    assert echo.__name__ == "echo" and echo.__doc__ == "Echo."
    assert echo.__wrapped__ is echo.spec.func
    assert list(inspect.signature(echo).parameters) == ["x", "label"]
    assert "echo" in repr(echo) and "fast" in repr(echo)


def test_bare_decorator(app: App) -> None:
    @app.task
    def ping() -> str:
        return "pong"

    assert ping() == "pong" and ping.spec.pool == "fast"


def test_decorating_a_task_again_registers_the_function(app: App) -> None:
    other = App("other")

    @app.task()
    def ping() -> str:
        return "pong"

    again = other.task(execution_mode="async")(ping)
    assert again.spec.func is ping.spec.func and again() == "pong"


# -- DefinitionError, each with advice --------------------------------------------------------------


def _define(app: App, **options):
    def work(x: int) -> int:
        return x

    return app.task(**options)(work)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"name": "Work"}, "pass name='work'"),
        ({"name": "my-task"}, "[a-z0-9_]+"),
        ({"name": ""}, "[a-z0-9_]+"),
        ({"name": "echo\n"}, "[a-z0-9_]+"),
        ({"pool": "fast\n"}, "pool name"),
        ({"pool": "GPU"}, "pool name"),
        ({"pool": "a/b"}, "pool name"),
        ({"execution_mode": "batch"}, "use one of 'sync', 'async', 'gpu'"),
        ({"timeout_ms": 6000}, "use execution_mode='async'"),
        ({"timeout_secs": 30}, "use execution_mode='async'"),
        ({"timeout_ms": 100, "timeout_secs": 1}, "not both"),
        ({"timeout_ms": 0}, "positive"),
        ({"timeout_ms": -5}, "positive"),
        ({"timeout_secs": 0}, "positive"),
        ({"timeout_secs": -1.0}, "positive"),
        ({"timeout_ms": 1.5}, "must be an int"),
        ({"timeout_ms": True}, "must be an int"),
        ({"timeout_secs": "10"}, "number of seconds"),
        ({"timeout_secs": float("inf")}, "number of seconds"),
        ({"retries": -1}, "int >= 0"),
        ({"retries": 1.0}, "int >= 0"),
        ({"retries": True}, "int >= 0"),
    ],
)
def test_bad_options(app: App, options: dict, fragment: str) -> None:
    with pytest.raises(DefinitionError) as info:
        _define(app, **options)
    assert fragment in str(info.value)
    assert app.tasks == {}


def test_definition_error_is_a_value_error_and_a_neutrino_error() -> None:
    assert issubclass(DefinitionError, ValueError) and issubclass(DefinitionError, NeutrinoError)


def test_retries_on_async_is_fine(app: App) -> None:
    assert _define(app, execution_mode="async", retries=2).spec.retries == 2


def test_retries_on_sync_means_rerun_on_crash(app: App) -> None:
    # Sync retries re-run a call whose worker died on another worker (documented as at-least-once).
    assert _define(app, execution_mode="sync", retries=1).spec.retries == 1


def test_function_name_not_matching(app: App) -> None:
    with pytest.raises(DefinitionError, match=r"pass name='fetch_data'"):

        @app.task()
        def fetchData() -> None: ...


def test_duplicate_task_name(app: App) -> None:
    @app.task()
    def echo() -> None: ...

    with pytest.raises(DefinitionError, match="already defined.*pass a different name"):

        @app.task(name="echo")
        def other() -> None: ...


def test_pool_serves_one_mode(app: App) -> None:
    _define(app, execution_mode="async", pool="shared")
    with pytest.raises(DefinitionError, match="pool 'shared' already runs async tasks"):

        @app.task(pool="shared")
        def other() -> None: ...


def test_async_def_accepted(app: App) -> None:
    @app.task()
    async def fetch(url: str) -> str:
        return url

    assert app.tasks["fetch"].execution_mode == "sync"
    assert inspect.iscoroutinefunction(app.tasks["fetch"].func)


def test_async_generator_rejected(app: App) -> None:
    with pytest.raises(DefinitionError, match="return a list instead"):

        @app.task()
        async def stream():
            yield 1


def test_generator_rejected(app: App) -> None:
    with pytest.raises(DefinitionError, match="return a list instead"):

        @app.task()
        def numbers():
            yield 1


@pytest.mark.parametrize("source", ["def f(*args): ...", "def f(**kwargs): ...", "def f(a, *rest, b=1): ..."])
def test_var_parameters_rejected(app: App, source: str) -> None:
    namespace: dict = {}
    exec(source, namespace)
    with pytest.raises(DefinitionError, match="declare each argument as a named parameter"):
        app.task()(namespace["f"])


def test_positional_only_rejected(app: App) -> None:
    namespace: dict = {}
    exec("def f(a: int, /, b: int): ...", namespace)
    with pytest.raises(DefinitionError, match="positional-only parameter 'a'.*remove the '/'"):
        app.task()(namespace["f"])


def test_keyword_only_parameters_are_fine(app: App) -> None:
    @app.task()
    def f(*, a: int, b: int = 2) -> int:
        return a + b

    assert f(a=1) == 3


def test_inexpressible_parameter_hint(app: App) -> None:
    with pytest.raises(DefinitionError, match=r"task 'f': parameter 'pair'.*use list\[T\]"):

        @app.task()
        def f(pair: Tuple[int, int]) -> None: ...


def test_inexpressible_return_hint(app: App) -> None:
    with pytest.raises(DefinitionError, match=r"task 'f': return type.*bytes"):

        @app.task()
        def f() -> bytes:
            return b""


def test_non_string_dict_keys(app: App) -> None:
    with pytest.raises(DefinitionError, match=r"use dict\[str, \.\.\.\]"):

        @app.task()
        def f(table: dict[int, str]) -> None: ...


def test_not_a_function(app: App) -> None:
    with pytest.raises(DefinitionError, match="with parentheses"):
        app.task()(42)  # type: ignore[arg-type]


def test_app_name_required() -> None:
    with pytest.raises(DefinitionError):
        App("")
