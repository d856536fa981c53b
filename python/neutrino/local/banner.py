"""The banner ``neutrino up`` prints once everything runs: where each piece listens and what to try."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional

from ..app import App, TaskSpec
from ..errors import NeutrinoError
from ..schema import SchemaBuilder
from .autoscale import ScaleSpec
from .nats import NatsServer

__all__ = ["banner"]


def banner(
    app: App,
    gateway_url: str,
    pool_urls: Dict[str, List[str]],
    queued_pools: Dict[str, str],
    queue_counts: Dict[str, int],
    nats: Optional[NatsServer],
    state_dir: str,
    policies: Optional[Dict[str, ScaleSpec]] = None,
    dashboard: Optional[str] = None,
) -> str:
    address = re.sub(r"^http://(127\.0\.0\.1|0\.0\.0\.0|\[::\]|\[::1\])(?=:)", "localhost", gateway_url)
    address = address[len("http://") :] if address.startswith("http://") else address
    lines = [
        "",
        f"Neutrino app {app.name!r} is up",
        f"  gateway     {gateway_url}   (manifest at /openapi.json, tasks at /tasks)",
        f"  dashboard   {gateway_url}/{'_neutrino/' if app.asgi is not None else ''}"
        + ("" if dashboard else "   (no dashboard/ folder found; set NEUTRINO_DASHBOARD_DIR)"),
        f"  pools       {gateway_url}/pools   (queue depth, workers, scaling)",
        f"  metrics     {gateway_url}/metrics   (Prometheus)",
    ]
    if app.asgi is not None:
        cls = type(app.asgi.app)
        lines.append(
            f"  asgi app    {cls.__module__}.{cls.__qualname__} on pool {app.asgi.pool}: every request no Neutrino "
            f"route answers ({gateway_url}/...)"
        )
    for pool, urls in pool_urls.items():
        line = f"  pool {pool:<6} {len(urls)} HTTP worker{'s' if len(urls) != 1 else ''}: {', '.join(urls)}"
        policy = (policies or {}).get(pool)
        if policy is not None:
            line += (
                f"; autoscaled {policy.min}..{policy.max} (target {policy.target:g} busy-thread utilisation, "
                f"scale-down window {policy.window:g} s)"
            )
        lines.append(line)
    for pool, mode in queued_pools.items():
        count = queue_counts.get(pool, 0)
        line = f"  pool {pool:<6} {count} NATS worker{'s' if count != 1 else ''} ({mode}), consumer pool_{pool}"
        policy = (policies or {}).get(pool)
        if policy is not None:
            line += (
                f", autoscaled {policy.min}..{policy.max} (target {policy.target:g} tasks/replica, "
                f"scale-down window {policy.window:g} s)"
            )
        lines.append(line)
    if queued_pools or policies:
        lines.append(
            "  autoscaler  "
            + (
                "follows /pools' desired replicas of every pool, once a second"
                if policies is not None
                else "off (--no-autoscale)"
            )
        )
    if nats is not None:
        if nats.size > 1:
            lines.append(
                f"  nats        {nats.size}-node JetStream cluster, streams at R{nats.stream_replicas}: {nats.url}"
                f"   (stores in {nats.store_dir})"
            )
            lines.append(f"  monitoring  {'/jsz, '.join(nats.monitor_urls)}/jsz   (streams, consumers, queue depth)")
        else:
            lines.append(f"  nats        {nats.url}   (JetStream store in {nats.store_dir})")
            lines.append(f"  monitoring  {nats.monitor_url}/jsz   (streams, consumers, queue depth)")
    nats_dir = f", {os.path.basename(nats.store_dir)}/" if nats is not None else ""
    lines.append(f"  state       {state_dir} (openapi.json, tasks.db{nats_dir})")

    specs = list(app.tasks.values())
    sync_specs = [spec for spec in specs if spec.execution_mode == "sync"]
    queued_specs = [spec for spec in specs if spec.execution_mode != "sync"]
    if sync_specs or queued_specs:
        lines += ["", "Try:"]
    if sync_specs:
        example = sync_specs[0]
        lines += [
            f"  curl -s -H 'Content-Type: application/json' {address}/api/{example.name} -d '{_example_body(example)}'",
            f"  curl -s {address}/tasks/<task_id>",
            f"  curl -s '{address}/tasks?status=failed&function={example.name}'",
        ]
    if queued_specs:
        example = queued_specs[0]
        commands = [
            (f"curl -s -H 'Content-Type: application/json' {address}/api/{example.name} -d '{_example_body(example)}'", "202: queued, with its task_id"),
            (f"curl -s '{address}/tasks/<task_id>?wait=30'", "waits up to 30 s for the result"),
            (f"curl -s -X DELETE {address}/tasks/<task_id>", "cancels it while queued or running"),
        ]
        width = max(len(command) for command, _ in commands)
        lines += [f"  {command:<{width}}   # {comment}" for command, comment in commands]
    lines += ["", "Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


def _example_body(spec: TaskSpec) -> str:
    return json.dumps({"args": _example_args(spec)}, separators=(",", ":"))


def _example_args(spec: TaskSpec) -> Dict[str, Any]:
    """Placeholder values for a task's required arguments, for the banner's curl example."""
    try:
        schema = SchemaBuilder().args_schema(spec.func)
    except NeutrinoError:
        return {}
    return {name: _sample(schema["properties"][name]) for name in schema["required"]}


def _sample(schema: Dict[str, Any]) -> Any:
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            return _sample(option)
    if "$ref" in schema:
        return {}
    samples: Dict[str, Any] = {
        "integer": 3,
        "number": 1.5,
        "string": "hello",
        "boolean": True,
        "array": [],
        "object": {},
    }
    return samples.get(str(schema.get("type")))

