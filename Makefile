# Neutrino: `make up` runs the example app end to end, `make test` runs every test, `make bench` the benchmarks.
# Both install what they need on a fresh Debian machine (apt-get for system packages, pip into .venv).

SHELL := /bin/bash
DEBIAN_PACKAGES := nats-server libnats-dev libpython3-dev libsqlite3-dev libssl-dev python3-venv sqlite3
BROWSER_PACKAGES := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VENV := .venv
PY := $(VENV)/bin/python
APP ?= examples/app.py
PORT ?= 8080
SWIFT_BUILD_FLAGS ?=

.PHONY: up test bench deps debs browser-deps venv build build-release swift-test python-test e2e-test fuzz-test soak lint format clean

debs:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Headless Chromium + chromedriver for the dashboard's browser tests (tests/e2e/test_dashboard.py).
browser-deps:
	@missing=$$(for p in $(BROWSER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# kubectl renders the kustomizations in tests/k8s (`kubectl kustomize`). Debian 12 ships it as kubernetes-client
# (kubectl 1.20, kustomize v2.0.3, which k8s/ is written for); any newer kubectl already on PATH is used as is.
K8S_PACKAGES := kubernetes-client
.PHONY: k8s-deps k8s-test

k8s-deps:
	@if ! command -v kubectl >/dev/null 2>&1; then \
		echo "installing Debian packages: $(K8S_PACKAGES)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(K8S_PACKAGES); \
	fi

# The manifest tests: render k8s/ and its overlays, validate every object, run the rendered command lines on the
# real binaries (.build/debug; that part is skipped when they are not built).
k8s-test: k8s-deps venv
	NEUTRINO_BIN_DIR=$(CURDIR)/.build/debug $(PY) -m pytest -q tests/k8s

$(VENV)/.installed: python/pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e 'python[test]'
	@touch $@

venv: $(VENV)/.installed

deps: debs venv

build: deps
	swift build $(SWIFT_BUILD_FLAGS)

build-release: deps
	swift build -c release $(SWIFT_BUILD_FLAGS)

up: build-release
	$(VENV)/bin/neutrino up $(APP) --port $(PORT) --bin-dir .build/release

# Swift formatting: the toolchain's `swift format` with the checked-in .swift-format; `make lint` fails on any file
# that `make format` would change.
SWIFT_FORMAT_PATHS := Package.swift Sources Tests

lint:
	swift format lint --strict --recursive --parallel $(SWIFT_FORMAT_PATHS)

format:
	swift format format --in-place --recursive --parallel $(SWIFT_FORMAT_PATHS)

swift-test:
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	swift test --skip-build

python-test:
	$(PY) -m pytest -q python/tests

# The end-to-end suite twice: with the direct SQLite task log (workers write the gateway's file), then with the task
# log over NATS (NEUTRINO_E2E_TASK_LOG=nats: workers `--task-log nats`, gateways `--events-via-nats`). The second run
# leaves out what does not depend on the task-log mode: test_dashboard.py and test_autoscaler.py (their own stacks,
# always the direct task log), test_venv.py (a worker's interpreter only), test_events_via_nats.py and
# test_nats_cluster.py (they set up NATS-mode stacks themselves, so the first run already covered them).
E2E_NATS_IGNORE := test_dashboard.py test_autoscaler.py test_venv.py test_events_via_nats.py test_nats_cluster.py

e2e-test:
	NEUTRINO_BIN_DIR=$(CURDIR)/.build/debug $(PY) -m pytest -q tests/e2e
	NEUTRINO_E2E_TASK_LOG=nats NEUTRINO_BIN_DIR=$(CURDIR)/.build/debug $(PY) -m pytest -q tests/e2e \
		$(foreach f,$(E2E_NATS_IGNORE),--ignore=tests/e2e/$(f))

# Property-based fuzzing of a real gateway from its own /openapi.json (schemathesis, FUZZ_EXAMPLES per operation and
# generation mode); the wire-level hostile suite (tests/e2e/test_hostile_wire.py) runs in e2e-test.
FUZZ_EXAMPLES ?= 25

fuzz-test:
	NEUTRINO_FUZZ=1 NEUTRINO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) NEUTRINO_BIN_DIR=$(CURDIR)/.build/debug \
		$(PY) -m pytest -q tests/e2e/test_fuzz_schemathesis.py

test: deps browser-deps k8s-deps
	$(MAKE) lint
	$(MAKE) swift-test
	$(MAKE) python-test
	$(MAKE) e2e-test
	$(MAKE) fuzz-test
	$(MAKE) k8s-test

# Not part of `make test`: SOAK_MINUTES of mixed load while workers are SIGKILLed and nats-server and the gateway
# restarted, then an exact account (tests/e2e/soak.py).
SOAK_MINUTES ?= 10

soak: build venv
	SOAK_MINUTES=$(SOAK_MINUTES) NEUTRINO_BIN_DIR=$(CURDIR)/.build/debug PYTHONPATH=$(CURDIR)/python \
		$(PY) tests/e2e/soak.py

bench: build-release
	PYTHON=$(CURDIR)/$(PY) BENCH_SKIP_BUILD=1 bash bench/run.sh

# The task log at scale (bench/tasklog, see bench/README.md): builds a log of TASKLOG_BENCH_TASKS tasks (1000000;
# 10000000 for the full figure) under TASKLOG_BENCH_DIR (/tmp/neutrino-tasklog-bench) and times every query, ingest
# and pruning on it.
.PHONY: bench-tasklog
bench-tasklog: debs
	swift build -c release --product NeutrinoTaskLogBench $(SWIFT_BUILD_FLAGS)
	TASKLOG_BENCH_COMMIT=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
		"$$(swift build -c release --show-bin-path $(SWIFT_BUILD_FLAGS))/NeutrinoTaskLogBench"

clean:
	rm -rf .build .neutrino $(VENV)
