"""Property-based fuzzing of the gateway from its own `/openapi.json` (schemathesis), against a real gateway, a real
fast worker of examples/app.py, a real nats-server (queued tasks are published) and a real SQLite task log.

Per operation a bounded number of examples ($NEUTRINO_FUZZ_EXAMPLES, default 25), valid and invalid: every answer
must be documented for its operation (status code, content type, the body's schema where the manifest gives one),
valid arguments must be accepted and invalid ones rejected with 4xx, a wrong method is 405, and a 5xx must be one the
operation documents (the task raised: 500; no capacity: 503; timed out: 504) with the JSON error shape.

The manifest types integers without bounds; the gateway documents 64-bit integers (README "Input semantics and
limits"), so the fuzzer is given that bound. Runs from `make fuzz-test` (NEUTRINO_FUZZ=1); skipped otherwise, so the
e2e runs do not repeat it."""
from __future__ import annotations

import json
import os

import pytest

from conftest import (
    EXAMPLE_APP,
    GATEWAY_BIN,
    Launcher,
    NatsServer,
    _server_env,
    http_request,
    queued_pools,
    wait_for,
)

if os.environ.get("NEUTRINO_FUZZ") != "1":
    pytest.skip("fuzzing runs from `make fuzz-test` (NEUTRINO_FUZZ=1)", allow_module_level=True)

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in python[test] (make venv)")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402  (after the skip: hypothesis comes with schemathesis)
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = int(os.environ.get("NEUTRINO_FUZZ_EXAMPLES", "25"))
INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}
DOCUMENTED: dict[tuple[str, str], set[str]] = {}


def _bound_integers(node):
    """Adds the gateway's documented 64-bit bounds to every `integer` schema."""
    if isinstance(node, dict):
        types = node.get("type")
        if types == "integer" or (isinstance(types, list) and "integer" in types):
            for k, v in INT64.items():
                node.setdefault(k, v)
        for v in node.values():
            _bound_integers(v)
    elif isinstance(node, list):
        for v in node:
            _bound_integers(v)


class FuzzGateway:
    def __init__(self, launcher: Launcher, manifest):
        self.dir = launcher.new_dir("fuzz")
        self.nats = NatsServer(launcher, self.dir).start()
        db = self.dir / "tasks.sqlite"
        self.worker = launcher.worker(EXAMPLE_APP, db, log_dir=self.dir, worker_id="fuzz-w1", concurrency=4,
                                      task_log="sqlite")
        argv = [str(GATEWAY_BIN), "--manifest", str(manifest), "--http-pool", f"fast={self.worker.url}",
                "--task-log", f"sqlite:{db}", "--nats", self.nats.url, "--host", "127.0.0.1", "--port", "0"]
        self.gateway = launcher.spawn("gateway-fuzz", argv, env=_server_env(), log_dir=self.dir)
        self.url = self.gateway.wait_listening()
        wanted = {f"pool_{p}" for p in queued_pools(manifest)}
        wait_for(lambda: wanted <= {c.get("name") for c in (self.nats.stream("NEUTRINO_TASKS") or {}).get("consumer_detail") or []},
                 timeout=60, message="the gateway to provision the pool consumers")

    def stop(self):
        self.gateway.stop()
        self.worker.stop()
        self.nats.stop()


@pytest.fixture(scope="module")
def fuzz_gateway(launcher: Launcher, example_manifest):
    g = FuzzGateway(launcher, example_manifest)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_gateway: FuzzGateway):
    document = http_request("GET", f"{fuzz_gateway.url}/openapi.json").json()
    _bound_integers(document)
    for path, item in document["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                DOCUMENTED[(method.upper(), path)] = set(op["responses"])
    return schemathesis.openapi.from_dict(document)


@schemathesis.check
def server_errors_are_documented(ctx, response, case):
    """A 5xx must be one the operation documents, with a JSON body that says what happened."""
    if response.status_code < 500:
        return None
    documented = DOCUMENTED.get((case.operation.method.upper(), case.operation.path), set())
    assert str(response.status_code) in documented, (
        f"{response.status_code} is not documented for {case.operation.label} ({sorted(documented)}): {response.text[:300]}")
    body = json.loads(response.text)
    error = body.get("error")
    assert isinstance(error, dict) and error.get("type") and isinstance(error.get("message"), str), body
    return None


def _fuzz(schema, url: str, mode) -> dict[str, int]:
    """Runs every operation's strategy for `mode` (schemathesis' own pytest plugin does not load on this pytest, so
    hypothesis drives it directly); returns the examples run per operation. Fails on the first failing example of an
    operation (hypothesis shrinks it first)."""
    from hypothesis import given

    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        counts[operation.label] = 0

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case):
            counts[operation.label] += 1
            response = case.call(base_url=url, timeout=120)
            case.validate_response(response, excluded_checks=[not_a_server_error],
                                   additional_checks=[server_errors_are_documented])

        run()
    return counts


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_gateway_answers_as_documented(fuzz_gateway: FuzzGateway, fuzz_schema, mode: str, capsys):
    counts = _fuzz(fuzz_schema, fuzz_gateway.url, schemathesis.GenerationMode(mode))
    with capsys.disabled():
        print(f"\nfuzz ({mode}): {sum(counts.values())} examples over {len(counts)} operations")
    assert counts and all(n > 0 for n in counts.values()), counts


def test_gateway_survived(fuzz_gateway: FuzzGateway):
    assert fuzz_gateway.gateway.alive() and fuzz_gateway.worker.alive()
    assert http_request("GET", f"{fuzz_gateway.url}/readyz").status == 200
