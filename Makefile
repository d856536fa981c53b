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
	@$(PGO_REBUILD_IF_CHANGED)
	@$(if $(strip $(ORDER_FLAGS)),$(ORDER_FROM_PROFILE))
	swift build -c release $(SWIFT_BUILD_FLAGS) $(PGO_USE_FLAGS) $(ORDER_FLAGS)

# Profile-guided optimisation of the release build (LLVM's IR-level kind; bench/README.md, twenty-first round): the
# compiler lays out and inlines by the branch and call counts in pgo/neutrino.profdata, a profile of the benchmark's
# Neutrino rows. Used when the toolchain's llvm-profdata can read it (a toolchain whose LLVM is older than the one that
# wrote it builds without); PGO=0 builds without it. Functions changed since the profile was taken are compiled as
# without a profile. Function names are recorded without their object's folder (-static-func-full-module-prefix=false)
# so the profile holds for a checkout at any path.
PGO ?= 1
PGO_PROFILE := pgo/neutrino.profdata
# Both are worked out on first use only (the targets that build release), and once: `$(eval X := …)$(X)`.
LLVM_PROFDATA = $(eval LLVM_PROFDATA := $(shell d=$$(dirname "$$(readlink -f "$$(command -v swift)")" 2>/dev/null); \
	if [ -x "$$d/llvm-profdata" ]; then echo "$$d/llvm-profdata"; else command -v llvm-profdata; fi))$(LLVM_PROFDATA)
PGO_NAMES := -Xswiftc -Xllvm -Xswiftc -static-func-full-module-prefix=false
PGO_USE_FLAGS = $(eval PGO_USE_FLAGS := $(if $(filter 1,$(PGO)),$(shell [ -f $(PGO_PROFILE) ] && \
	[ -n "$(LLVM_PROFDATA)" ] && "$(LLVM_PROFDATA)" show $(PGO_PROFILE) >/dev/null 2>&1 && \
	echo "-Xswiftc -Xfrontend -Xswiftc -ir-profile-use=$(abspath $(PGO_PROFILE)) $(PGO_NAMES) \
	-Xswiftc -Xllvm -Xswiftc -no-pgo-warn-mismatch")))$(PGO_USE_FLAGS)
# The link orders functions by the same profile (bench/README.md, twenty-third round): lld puts the ones the training
# runs saw, hottest first, side by side, so start-up and the hot paths touch fewer pages of code (the idle gateway
# about 1 MB less). With the profile, when the toolchain has lld beside swift; the order file is made from the profile.
LLD = $(eval LLD := $(shell d=$$(dirname "$$(readlink -f "$$(command -v swift)")" 2>/dev/null); \
	[ -x "$$d/ld.lld" ] && echo "$$d/ld.lld"))$(LLD)
ORDER_FILE := .build/release-order.txt
ORDER_FLAGS = $(eval ORDER_FLAGS := $(if $(and $(strip $(PGO_USE_FLAGS)),$(LLD)),-Xswiftc -use-ld=lld $(RELR_FLAGS) \
	-Xlinker --symbol-ordering-file=$(abspath $(ORDER_FILE)) -Xlinker --no-warn-symbol-ordering))$(ORDER_FLAGS)
# The same lld link packs the relative relocations (DT_RELR, `-z pack-relative-relocs`) where the C library loads them
# (glibc 2.36 or newer, which the binaries then require by a version tag, so an older one refuses them by name): the
# loader reads 7 kB of .relr.dyn instead of 620 kB of .rela.dyn, and the idle gateway is about 0.7 MB smaller
# (bench/README.md, twenty-fourth round).
RELR_FLAGS = $(eval RELR_FLAGS := $(shell v=$$(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2); \
	[ -n "$$v" ] && printf '2.36\n%s\n' "$$v" | sort -V -C && echo "-Xlinker -z -Xlinker pack-relative-relocs"))$(RELR_FLAGS)
# Every function the profile counted, by its largest block count, without the object-file prefix of file-private ones.
ORDER_FROM_PROFILE = mkdir -p .build && "$(LLVM_PROFDATA)" show --all-functions --counts $(PGO_PROFILE) | awk \
	'/^  [^ ].*:$$/ { name = substr($$0, 3, length($$0) - 3); sub(/^.*;/, "", name); next } \
	/Block counts:/ { gsub(/[][,]/, " "); m = 0; for (i = 3; i <= NF; i++) if ($$i + 0 > m) m = $$i + 0; \
	if (m > 0) print m, name }' | sort -k1,1nr -s | awk '!seen[$$2]++ { print $$2 }' > $(ORDER_FILE)
# SwiftPM keeps a module's objects when only flags or the profile's contents change, so a release folder built with
# other PGO or link flags or another profile is removed first (the next build is a whole one), remembered in a stamp.
PGO_STAMP := .build/release-pgo.stamp
PGO_REBUILD_IF_CHANGED = want="$(strip $(PGO_USE_FLAGS) $(ORDER_FLAGS)) $$(cksum < $(PGO_PROFILE) 2>/dev/null)"; \
	if [ -e .build/release ] && [ "$$(cat $(PGO_STAMP) 2>/dev/null)" != "$$want" ]; then \
		echo "the release build's profile changed: rebuilding it whole"; \
		rm -rf "$$(readlink -f .build/release)"; \
	fi; mkdir -p .build && echo "$$want" > $(PGO_STAMP)
PGO_SCRATCH := .build-pgo
PGO_RUNTIME = $(subst builtins,profile,$(shell "$$(dirname "$(LLVM_PROFDATA)")/clang" -print-libgcc-file-name \
	--rtlib=compiler-rt 2>/dev/null))

# `make pgo-profile` takes a new profile: an instrumented release build in .build-pgo, the benchmark's Neutrino rows
# (sync and API-key calls, async def calls, queued tasks) run on it, every process's counts merged.
.PHONY: pgo-profile
pgo-profile: deps
	swift build -c release --scratch-path $(PGO_SCRATCH) $(SWIFT_BUILD_FLAGS) \
		-Xswiftc -Xfrontend -Xswiftc -ir-profile-generate $(PGO_NAMES) \
		-Xlinker "$(PGO_RUNTIME)" -Xlinker -u__llvm_profile_runtime
	rm -rf $(PGO_SCRATCH)/profiles
	LLVM_PROFILE_FILE=$(CURDIR)/$(PGO_SCRATCH)/profiles/%p-%m.profraw \
		BENCH_NEUTRINO_BIN_DIR=$(CURDIR)/$(PGO_SCRATCH)/release BENCH_SKIP_BUILD=1 PYTHON=$(CURDIR)/$(PY) \
		BENCH_ONLY=neutrino,neutrino-auth BENCH_PAIRS=0 BENCH_SECONDS=5 BENCH_CORO_ONLY=neutrino,neutrino-asgi \
		BENCH_ASYNC_ONLY=neutrino BENCH_CLUSTER=0 BENCH_FAULTS=0 BENCH_NO_RAY=1 bash bench/run.sh
	mkdir -p $(dir $(PGO_PROFILE))
	"$(LLVM_PROFDATA)" merge -sparse -o $(PGO_PROFILE) $(PGO_SCRATCH)/profiles/*.profraw
	"$(LLVM_PROFDATA)" show $(PGO_PROFILE)

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

# The release build's own checks: the profile it optimises with is readable and holds for any checkout path, and
# `make build-release` passes it (or leaves it out with PGO=0 or without a readable profile).
.PHONY: build-test
build-test: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/build

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
	$(MAKE) build-test

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
	@$(PGO_REBUILD_IF_CHANGED)
	swift build -c release --product NeutrinoTaskLogBench $(SWIFT_BUILD_FLAGS) $(PGO_USE_FLAGS)
	TASKLOG_BENCH_COMMIT=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
		"$$(swift build -c release --show-bin-path $(SWIFT_BUILD_FLAGS))/NeutrinoTaskLogBench"

clean:
	rm -rf .build .build-pgo .neutrino $(VENV)
