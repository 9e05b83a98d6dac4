# Arrowsmith developer commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export VIRTUAL_ENV := $(abspath $(VENV))
INSTALLED := $(VENV)/.installed
MODEL ?= examples/wine/model

.PHONY: help venv build dev example-model serve-example test test-rust test-python lint lint-deploy image fmt protos loadgen perf-analyzer postgres bench-floors bench-micro bench-batching bench-compare bench-swap bench-env bench-routing bench-observability bench-startup bench-profile bench-soak fuzz

help: ## list the commands
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(INSTALLED): requirements-dev.txt
	@echo "venv: creating $(VENV)"
	@python3 -m venv $(VENV)
	@echo "venv: installing the pinned packages of requirements-dev.txt (a few minutes the first time)"
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

venv: $(INSTALLED) ## create .venv with the pinned development packages

# The native extension is built again only when what it is built from changes (a release
# build takes minutes on 2 cores). The package is installed into .venv once; later builds
# only replace the module, with no pip run. `make dev` leaves a debug module, which the next
# `make build` replaces.
NATIVE_SO := python/arrowsmith/_native.abi3.so
NATIVE_BUILT := $(VENV)/.native-release
NATIVE_SOURCES := $(shell find rust/src -name '*.rs') rust/build.rs rust/Cargo.toml \
	rust/Cargo.lock protos/grpc_service.proto pyproject.toml

$(NATIVE_BUILT): $(INSTALLED) $(NATIVE_SOURCES)
	@echo "build: the native extension, release (minutes on 2 cores; again only after changes)"
	@if $(PY) -c "import importlib.metadata as m; m.distribution('arrowsmith')" 2>/dev/null; \
	then $(VENV)/bin/maturin develop --release -q --skip-install >/dev/null; \
	else $(VENV)/bin/maturin develop --release -q >/dev/null; fi
	@touch $@

build: $(INSTALLED) ## build the native extension in release mode into .venv (when its sources changed)
	@test -f $(NATIVE_SO) || rm -f $(NATIVE_BUILT)
	@if $(MAKE) --no-print-directory -q $(NATIVE_BUILT); \
	then echo "build: the native extension is up to date"; \
	else $(MAKE) --no-print-directory $(NATIVE_BUILT); fi

dev: $(INSTALLED) ## fast debug build of the native extension (warns at import)
	@rm -f $(NATIVE_BUILT)
	$(VENV)/bin/maturin develop -q

$(MODEL)/MLmodel: $(INSTALLED)
	$(PY) examples/wine/train.py --output $(MODEL)

example-model: $(MODEL)/MLmodel ## train the red-wine example model if it is missing

serve-example: build example-model ## serve the example model: gRPC 127.0.0.1:8081, HTTP :8080, metrics :8082, Flight :8083
	$(PY) -m arrowsmith serve $(MODEL) --name wine

test-rust: ## Rust tests of the pure core and the load generator (no Python)
	cd rust && cargo test --workspace --no-default-features --quiet

test-python: build loadgen perf-analyzer postgres ## Python tests, against real server processes
	# A fixed hash seed keeps the derandomized hypothesis cases the same run to run.
	PYTHONHASHSEED=0 $(PY) -m pytest

test: test-rust test-python ## every test

lint: $(INSTALLED) lint-deploy ## formatters in check mode, linters, type checks
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(VENV)/bin/ruff format --check python tests benchmarks examples
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest arrowsmith._native
	cd rust && cargo fmt --all --check \
		&& cargo clippy --workspace --all-targets --no-default-features -- -D warnings \
		&& cargo clippy --all-targets -- -D warnings

lint-deploy: $(INSTALLED) ## deploy/ against the Kubernetes and KServe schemas and the CLI; hadolint
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_manifests.py
	$(VENV)/bin/hadolint Dockerfile deploy/image/Dockerfile.model

IMAGE ?= arrowsmith:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image: ## the container image arrowsmith:VERSION, with docker or else podman (fails without either)
	@tool=$$(command -v docker || command -v podman) \
		|| { echo "make image: neither docker nor podman is installed" >&2; exit 1; }; \
		echo "$$tool build -t $(IMAGE) ."; "$$tool" build -t $(IMAGE) .

fmt: $(INSTALLED) ## format Python and Rust
	$(VENV)/bin/ruff format python tests benchmarks examples
	$(VENV)/bin/ruff check --fix python tests benchmarks examples
	cd rust && cargo fmt --all

protos: $(INSTALLED) ## regenerate the Python messages from protos/
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=python/arrowsmith/_proto \
		--pyi_out=python/arrowsmith/_proto protos/grpc_service.proto

loadgen: ## build arrowsmith-bench (the load generator) and arrowsmith-floor (the native floor) into rust/target/release
	cd rust && cargo build --release -p arrowsmith-bench -p arrowsmith-floor

# Triton's perf_analyzer as tritonclient 2.51.0's wheel ships it, the newest one built for
# glibc <= 2.34 (later tritonclient wheels and the perf-analyzer wheels need glibc 2.38;
# Debian 12 has 2.36). It links libb64 (Debian's libb64-0d) and libcudart.so.12 (PyPI's CUDA
# runtime, installed beside it; loaded, never used without a GPU).
PERF_ANALYZER_HOME := $(VENV)/perf-analyzer
PERF_ANALYZER := $(PERF_ANALYZER_HOME)/bin/perf_analyzer

$(PERF_ANALYZER): | $(INSTALLED)
	dpkg-query -W -f='$${Status}' libb64-0d 2>/dev/null | grep -q 'install ok installed' \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d; }
	rm -rf $(PERF_ANALYZER_HOME)
	$(PY) -m pip install -q --no-deps --no-compile --target $(PERF_ANALYZER_HOME) \
		tritonclient==2.51.0 nvidia-cuda-runtime-cu12==12.6.77
	touch $@

perf-analyzer: $(PERF_ANALYZER) ## Triton's perf_analyzer 2.51.0 into .venv/perf-analyzer (apt-get: run as root)

# The registry tests run a throwaway PostgreSQL cluster (tests/support/registry_stack.py) with
# the server's initdb and pg_ctl, which Debian keeps in /usr/lib/postgresql/<version>/bin.
postgres: ## Debian's PostgreSQL server binaries for the registry tests (apt-get: run as root)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

bench-floors: $(INSTALLED) ## grpcio sync vs aio canned-answer floors (needs h2load: apt-get install nghttp2-client)
	$(PY) benchmarks/floors.py

bench-micro: build ## decode and signature-enforcement micro-benchmarks (pytest-benchmark)
	$(PY) -m pytest benchmarks/test_decode_micro.py benchmarks/test_enforcement_micro.py \
		--benchmark-only --benchmark-columns=min,median,mean,ops -q

bench-batching: build example-model loadgen ## W1 with batching off/on, 1 and 2 workers
	$(PY) benchmarks/batching.py

bench-compare: build example-model loadgen ## Arrowsmith vs the native and grpcio floors, control, MLServer (own venv), mlflow serve
	PROJECT_PYTHON=$(PY) bash benchmarks/peers/setup.sh
	$(PY) benchmarks/compare.py

SWAP_DIR ?= benchmarks/results/swap
bench-swap: build loadgen postgres ## the swap timeline: 20 alias moves under load, by poll and by webhook (PNG + table)
	ARROWSMITH_SWAP_TIMELINE_DIR=$(SWAP_DIR) PYTHONHASHSEED=0 $(PY) -m pytest -q tests/e2e/test_swaps_under_load.py
	$(PY) benchmarks/swap_timeline.py $(SWAP_DIR) --png benchmarks/swap-timeline.png

bench-env: build example-model ## model environments: cold uv build vs mlflow's virtualenv, warm start vs local
	$(PY) benchmarks/environments.py

bench-routing: build example-model loadgen ## W1 to a model in an environment of its own behind the ports vs served directly
	$(PY) benchmarks/routing.py

bench-observability: build example-model loadgen ## W1 with the access log and with tracing at 10% and 100% vs neither
	$(PY) benchmarks/observability.py

bench-startup: build example-model ## process start to ready, first start and from a snapshot, beside import mlflow.pyfunc
	$(PY) benchmarks/startup.py

bench-profile: build example-model loadgen ## where each microsecond of a W1 and a W2 request goes (py-spy and perf)
	$(PY) benchmarks/profiles.py

SOAK_ARGS ?=
bench-soak: build example-model loadgen ## soak and chaos: 30 min, 2 workers, hostile requests, SIGKILL every 5 min (SOAK_ARGS="--duration 120")
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

# Fuzzing: cargo-fuzz (libFuzzer, nightly Rust) for the Rust parsers, atheris (libFuzzer for
# Python) for the V2 REST codec. Each target starts from its committed seed corpus and grows a
# scratch copy (corpus-run/, ignored by git); a crash stops the run and lands in
# rust/fuzz/artifacts/<target>/ or tests/fuzz/artifacts/. `-a` keeps overflow checks in the
# optimized build, so an arithmetic overflow is a crash, not a silently wrapped size.
FUZZ_RUNS ?= 10000000
FUZZ_SANITIZER ?= address
FUZZ_TARGETS := decode_request grpc_wire batch_assembly flight_exchange

fuzz: $(INSTALLED) ## fuzz every parser of client bytes, FUZZ_RUNS (10M) executions per target (hours; not in test)
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd rust/fuzz && for target in $(FUZZ_TARGETS); do \
		mkdir -p corpus-run/$$target && \
		cargo +nightly fuzz run -O -a -s $(FUZZ_SANITIZER) $$target corpus-run/$$target corpus/$$target -- \
			-runs=$(FUZZ_RUNS) -print_final_stats=1 \
			$$(test -f dicts/$$target.dict && echo -dict=dicts/$$target.dict) || exit 1; \
	done
	mkdir -p tests/fuzz/corpus-run/v2_codec tests/fuzz/artifacts
	$(PY) tests/fuzz/fuzz_v2_codec.py -runs=$(FUZZ_RUNS) -print_final_stats=1 \
		-artifact_prefix=tests/fuzz/artifacts/ tests/fuzz/corpus-run/v2_codec tests/fuzz/corpus/v2_codec
