"""``App`` and the ``@app.task`` decorator.

.. code-block:: python

    from neutrino import App

    app = App("demo")

    @app.task()                                        # sync: pool "fast", 5000 ms
    def echo(x: int, label: str = "") -> dict:
        return {"x": x, "label": label}

    @app.task(execution_mode="async", timeout_secs=300, retries=3)
    def generate_report(dataset: str) -> dict:
        ...

    @app.task()                                        # async def: runs on the worker's event loop
    async def lookup(key: str) -> dict:
        ...

Every check runs when the decorator runs, so a task that the gateway could not route, validate or time
out fails at import time with a :class:`~neutrino.errors.DefinitionError` that says what to do instead.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import sys
from typing import Any, Callable, Dict, Generic, Optional, TypeVar, Union, overload

from .errors import DefinitionError
from .schema import SchemaBuilder, UnresolvedTypeHint

if sys.version_info >= (3, 10):
    from typing import ParamSpec

    P = ParamSpec("P")
else:  # Python 3.9: annotations are never evaluated at runtime, a TypeVar keeps Generic[...] happy.
    P = TypeVar("P")
R = TypeVar("R")

__all__ = ["App", "AsgiMount", "Task", "TaskSpec", "EXECUTION_MODES", "SYNC_TIMEOUT_LIMIT_MS"]

#: The execution modes and, for each, its default pool and timeout (milliseconds).
EXECUTION_MODES: Dict[str, tuple] = {
    "sync": ("fast", 5_000),
    "async": ("async", 300_000),
    "gpu": ("gpu", 600_000),
}
#: Sync tasks answer inside the HTTP request, so they must finish within this many milliseconds.
SYNC_TIMEOUT_LIMIT_MS = 5_000

_NAME_RE = re.compile(r"[a-z0-9_]+")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything Neutrino needs to route and run one task (``task.spec``)."""

    #: The task's name: the URL segment of ``POST /api/<name>`` and the NATS subject token.
    name: str
    #: The undecorated function.
    func: Callable[..., Any]
    #: ``"sync"``, ``"async"`` or ``"gpu"``.
    execution_mode: str
    #: The worker pool that runs it.
    pool: str
    #: The timeout in milliseconds; the worker interrupts the task after it.
    timeout_ms: int
    #: How many times a failed attempt is retried (async and gpu tasks only).
    retries: int
    #: The function's docstring, cleaned, or ``None``.
    description: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        """The routing facts as the worker runtime reports them."""
        return {
            "name": self.name,
            "execution_mode": self.execution_mode,
            "pool": self.pool,
            "timeout_ms": self.timeout_ms,
            "retries": self.retries,
        }


@dataclasses.dataclass(frozen=True)
class AsgiMount:
    """An ASGI app mounted with :meth:`App.mount`: served for every request that is not a Neutrino route."""

    #: The ASGI application (``async def app(scope, receive, send)``).
    app: Any
    #: The sync pool whose HTTP workers serve it.
    pool: str

    def routes(self) -> list:
        """The app's routes as the manifest records them: ``[{"path", "methods", "kind"}]`` from Starlette/FastAPI's
        ``app.routes`` (``kind``: ``"route"``, ``"websocket"`` or ``"mount"``); empty when the app has none to show."""
        out = []
        for route in getattr(self.app, "routes", None) or []:
            path = getattr(route, "path", None)
            if not isinstance(path, str):
                continue
            methods = getattr(route, "methods", None)
            name = type(route).__name__
            kind = "websocket" if "WebSocket" in name else ("mount" if "Mount" in name or "Host" in name else "route")
            entry: Dict[str, Any] = {"path": path or "/", "kind": kind}
            if methods:
                entry["methods"] = sorted(str(m) for m in methods)
            out.append(entry)
        return out


def _describe_asgi(app: Any) -> str:
    cls = type(app)
    return f"{cls.__module__}.{cls.__qualname__}"


class Task(Generic[P, R]):
    """A decorated task function. Calling it runs the function locally, unchanged.

    ``task.spec`` holds its :class:`TaskSpec`; ``functools.update_wrapper`` keeps its name, docstring
    and signature visible to ``help()``, ``inspect`` and test tools.
    """

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        functools.update_wrapper(self, spec.func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.spec.func(*args, **kwargs)

    @property
    def name(self) -> str:
        """The task's name."""
        return self.spec.name

    def __repr__(self) -> str:
        spec = self.spec
        return f"<neutrino task {spec.name!r} mode={spec.execution_mode} pool={spec.pool} timeout={spec.timeout_ms}ms>"


class App:
    """A named collection of tasks: what ``neutrino up`` serves and ``neutrino openapi`` describes.

    Args:
        name: the app's name, shown in the manifest (``x-neutrino-app``) and the dashboard.
        version: the manifest's ``info.version``.
        asgi: an ASGI application (FastAPI, Starlette, ...) to serve every request that is not a Neutrino route;
            the same as calling :meth:`mount` with it (on pool ``"fast"``).
    """

    def __init__(self, name: str, *, version: str = "0.1.0", asgi: Any = None) -> None:
        if not isinstance(name, str) or not name:
            raise DefinitionError("App(name): name must be a non-empty string, e.g. App('demo')")
        self.name = name
        self.version = version
        self._tasks: Dict[str, TaskSpec] = {}
        self._asgi: Optional[AsgiMount] = None
        if asgi is not None:
            self.mount(asgi)

    def __repr__(self) -> str:
        return f"App({self.name!r}, tasks={list(self._tasks)})"

    def mount(self, asgi_app: Any, *, pool: str = "fast") -> Any:
        """Serve ``asgi_app`` (a FastAPI or Starlette app, any ASGI 3 application) as the gateway's fallback.

        Every request that matches no Neutrino route (``/api/<task>``, ``/tasks``, ``/pools``, ``/metrics``, ...) is
        forwarded to an HTTP worker of ``pool``, a sync pool, which runs the app on its asyncio event loop (the loop
        of the ``async def`` tasks) with lifespan startup and shutdown once per worker. Neutrino's routes win over
        the app's; the gateway reports the app's routes they shadow when it starts (README, "Mounting an ASGI app").
        Returns ``asgi_app``, so ``api = app.mount(FastAPI())`` reads naturally.

        Raises:
            DefinitionError: not an ASGI callable, a second mount, or a pool that is not a sync pool.
        """
        if self._asgi is not None:
            raise DefinitionError(
                f"app {self.name!r} already mounts an ASGI app ({_describe_asgi(self._asgi.app)}); mount one app and "
                "route inside it (Starlette Mount, FastAPI include_router)"
            )
        if not callable(asgi_app) or isinstance(asgi_app, type):
            raise DefinitionError(
                f"mount() takes an ASGI application instance (e.g. FastAPI()), not {asgi_app!r}"
            )
        if not isinstance(pool, str) or not _NAME_RE.fullmatch(pool):
            raise DefinitionError(f"mount(): the pool name {pool!r} must match [a-z0-9_]+, e.g. pool='web'")
        pool_mode = self.pools().get(pool)
        if pool_mode is not None and pool_mode != "sync":
            raise DefinitionError(
                f"mount(): pool {pool!r} runs {pool_mode} tasks; an ASGI app is served by HTTP workers of a sync pool "
                "(the default 'fast', or a pool of its own such as pool='web')"
            )
        self._asgi = AsgiMount(app=asgi_app, pool=pool)
        return asgi_app

    @property
    def asgi(self) -> Optional["AsgiMount"]:
        """The mounted ASGI app and its pool, or ``None``."""
        return self._asgi

    @property
    def tasks(self) -> Dict[str, TaskSpec]:
        """The registered tasks, name → :class:`TaskSpec`, in definition order."""
        return dict(self._tasks)

    def pools(self) -> Dict[str, str]:
        """The pools the app's tasks use, pool → execution mode, in order of first use."""
        pools: Dict[str, str] = {}
        for spec in self._tasks.values():
            pools.setdefault(spec.pool, spec.execution_mode)
        if self._asgi is not None:
            pools.setdefault(self._asgi.pool, "sync")
        return pools

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        func: None = None,
        /,
        *,
        name: Optional[str] = None,
        execution_mode: str = "sync",
        pool: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        timeout_secs: Optional[float] = None,
        retries: int = 0,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        func: Optional[Callable[..., Any]] = None,
        /,
        *,
        name: Optional[str] = None,
        execution_mode: str = "sync",
        pool: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        timeout_secs: Optional[float] = None,
        retries: int = 0,
    ) -> Union[Task[Any, Any], Callable[[Callable[..., Any]], Task[Any, Any]]]:
        """Register a function as a task. Use as ``@app.task()`` or ``@app.task(...)`` (bare ``@app.task`` works too).

        Args:
            name: the task's name (default: the function's ``__name__``); ``[a-z0-9_]+``.
            execution_mode: ``"sync"`` (answered in the HTTP response, at most 5 s), ``"async"`` (queued,
                polled) or ``"gpu"`` (queued on a GPU pool).
            pool: the worker pool that runs it; ``[a-z0-9_]+``. Default: ``"fast"``, ``"async"`` or ``"gpu"``
                by mode. All tasks of one pool must share its execution mode.
            timeout_ms: the timeout in milliseconds. Default: 5000 (sync), 300000 (async), 600000 (gpu).
            timeout_secs: the timeout in seconds instead; give one of ``timeout_ms`` / ``timeout_secs``.
            retries: extra attempts. Async and gpu tasks: after a failure, with backoff. Sync tasks: only when the
                worker dies mid-call (crash, OOM kill), re-run on another worker: at-least-once, so only for tasks
                that are safe to run twice; the task's own exceptions are never retried (the caller is waiting).
                Default 0: a sync call whose worker died ends ``failed`` with ``WorkerCrashed`` (HTTP 502).

        Parameters must be plain named parameters with JSON-expressible hints (see :mod:`neutrino.schema`);
        the function must be a plain ``def`` returning a JSON-serialisable value.

        Raises:
            DefinitionError: at decoration time, for anything the gateway could not route or validate.
        """

        def decorate(function: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(
                function,
                name=name,
                execution_mode=execution_mode,
                pool=pool,
                timeout_ms=timeout_ms,
                timeout_secs=timeout_secs,
                retries=retries,
            )

        return decorate if func is None else decorate(func)

    # -- registration -------------------------------------------------------------------------------

    def _register(
        self,
        func: Callable[..., Any],
        *,
        name: Optional[str],
        execution_mode: str,
        pool: Optional[str],
        timeout_ms: Optional[int],
        timeout_secs: Optional[float],
        retries: int,
    ) -> Task[Any, Any]:
        if isinstance(func, Task):
            func = func.spec.func
        if not callable(func) or not hasattr(func, "__name__"):
            raise DefinitionError(
                f"@app.task() decorates functions, not {func!r}; "
                "write @app.task() (with parentheses) or @app.task directly above a def"
            )
        where = f"task {getattr(func, '__qualname__', func.__name__)!r}"

        task_name = func.__name__ if name is None else name
        if not isinstance(task_name, str) or not _NAME_RE.fullmatch(task_name):
            suggestion = re.sub(r"[^a-z0-9_]+", "_", re.sub(r"(?<!^)(?=[A-Z])", "_", str(task_name)).lower()).strip("_")
            raise DefinitionError(
                f"{where}: the name {task_name!r} must match [a-z0-9_]+ (it becomes a URL segment and a "
                f"NATS subject token); pass name={suggestion or 'my_task'!r}"
            )
        where = f"task {task_name!r}"
        if task_name in self._tasks:
            other = self._tasks[task_name].func
            raise DefinitionError(
                f"{where} is already defined in app {self.name!r} by {other.__module__}.{other.__qualname__}; "
                "pass a different name=..."
            )

        if execution_mode not in EXECUTION_MODES:
            raise DefinitionError(
                f"{where}: unknown execution_mode {execution_mode!r}; "
                f"use one of {', '.join(map(repr, EXECUTION_MODES))}"
            )
        default_pool, default_timeout_ms = EXECUTION_MODES[execution_mode]

        pool = default_pool if pool is None else pool
        if not isinstance(pool, str) or not _NAME_RE.fullmatch(pool):
            raise DefinitionError(f"{where}: the pool name {pool!r} must match [a-z0-9_]+, e.g. pool='a100'")
        pool_mode = self.pools().get(pool)
        if pool_mode is not None and pool_mode != execution_mode and self._asgi is not None and pool == self._asgi.pool:
            raise DefinitionError(
                f"{where}: pool {pool!r} serves the mounted ASGI app, a sync pool; give this {execution_mode} task "
                "another pool=..."
            )
        if pool_mode is not None and pool_mode != execution_mode:
            raise DefinitionError(
                f"{where}: pool {pool!r} already runs {pool_mode} tasks and a pool serves one execution mode; "
                f"give this {execution_mode} task another pool=..."
            )

        timeout = self._timeout_ms(where, execution_mode, timeout_ms, timeout_secs, default_timeout_ms)

        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise DefinitionError(f"{where}: retries must be an int >= 0, got {retries!r}")
        self._check_function(where, func)

        spec = TaskSpec(
            name=task_name,
            func=func,
            execution_mode=execution_mode,
            pool=pool,
            timeout_ms=timeout,
            retries=retries,
            description=inspect.cleandoc(func.__doc__) if func.__doc__ else None,
        )
        self._tasks[task_name] = spec
        return Task(spec)

    @staticmethod
    def _timeout_ms(
        where: str,
        execution_mode: str,
        timeout_ms: Optional[int],
        timeout_secs: Optional[float],
        default_ms: int,
    ) -> int:
        if timeout_ms is not None and timeout_secs is not None:
            raise DefinitionError(f"{where}: give timeout_ms or timeout_secs, not both")
        if timeout_ms is not None:
            if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
                raise DefinitionError(f"{where}: timeout_ms must be an int (milliseconds), got {timeout_ms!r}")
            value = timeout_ms
        elif timeout_secs is not None:
            if (
                isinstance(timeout_secs, bool)
                or not isinstance(timeout_secs, (int, float))
                or not math.isfinite(timeout_secs)
            ):
                raise DefinitionError(f"{where}: timeout_secs must be a number of seconds, got {timeout_secs!r}")
            value = round(timeout_secs * 1000) if timeout_secs > 0 else 0
        else:
            return default_ms
        if value <= 0:
            raise DefinitionError(f"{where}: the timeout must be positive (at least 1 ms)")
        if execution_mode == "sync" and value > SYNC_TIMEOUT_LIMIT_MS:
            raise DefinitionError(
                f"{where}: a sync task must finish within {SYNC_TIMEOUT_LIMIT_MS} ms (it answers inside the HTTP "
                f"request), got {value} ms; use execution_mode='async' for longer work"
            )
        return value

    @staticmethod
    def _check_function(where: str, func: Callable[..., Any]) -> None:
        if inspect.isasyncgenfunction(func):
            raise DefinitionError(
                f"{where}: async generator functions cannot return JSON (results are not streamed); "
                "return a list instead"
            )
        if inspect.isgeneratorfunction(func):
            raise DefinitionError(f"{where}: generator functions cannot return JSON; return a list instead")
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise DefinitionError(
                f"{where}: cannot read the function's signature ({exc}); decorate a plain def"
            ) from None
        for param in signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                star = "*" if param.kind is param.VAR_POSITIONAL else "**"
                raise DefinitionError(
                    f"{where}: {star}{param.name} is not supported (arguments arrive as one JSON object); "
                    "declare each argument as a named parameter"
                )
            if param.kind is param.POSITIONAL_ONLY:
                raise DefinitionError(
                    f"{where}: positional-only parameter {param.name!r} is not supported (arguments arrive by "
                    "name); remove the '/' from the signature"
                )
        builder = SchemaBuilder()
        try:
            builder.args_schema(func)
            builder.result_schema(func)
        except UnresolvedTypeHint:
            # A forward reference to a class defined further down the module: checked again when the
            # manifest is built, once the whole module has run.
            pass
        except DefinitionError as exc:
            raise DefinitionError(f"{where}: {exc}") from None
