# scoregate — the two commands README promises: `make demo` and `make test`.
# Both work on a fresh machine with only Python >= 3.11 and make.

PYTHON ?= python3
# Installed before the extras so that `torch>=2.13` is already met: a bare range would
# pull a multi-GB CUDA build where a CPU one does.
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# checkov lives in a venv of its own: it pins releases (packaging < 24) that clash with
# the dev tools. One exact version, so a new release's new checks never fail CI unasked.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV    := .venv-checkov
CHECKOV_STAMP   := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

# sslyze (the TLS scanner of tests/security/test_tls_scan.py) pins cryptography<47, below
# what the gateway runs on; it gets a virtual environment of its own rather than
# downgrading ours.
SSLYZE       ?= sslyze>=6.3.1,<7
SSLYZE_VENV  := .venv-sslyze
SSLYZE_STAMP := $(SSLYZE_VENV)/.installed

# The Open Inference Protocol's standard clients, as their users install them, for
# tests/e2e/test_standard_clients.py: Triton's HTTP client and KServe's SDK (which pulls
# gRPC, FastAPI and the Kubernetes client: far more than the suite needs, so a venv of its
# own). Exact versions, so a client release never changes CI unasked.
TRITONCLIENT_VERSION := 2.73.0
KSERVE_VERSION       := 0.21.0
CLIENTS_VENV  := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed-$(TRITONCLIENT_VERSION)-$(KSERVE_VERSION)

# Azurite, Microsoft's Blob Storage emulator (npm), for the audit store's tests: one
# exact version in a folder of its own, like the venvs above.
AZURITE_VERSION := 3.37.0
AZURITE_DIR     := .azurite
AZURITE_STAMP   := $(AZURITE_DIR)/.installed-$(AZURITE_VERSION)

.PHONY: install checkov clients sslyze azurite bench-audit-store demo test lint format typecheck unit k8s lock bench bench-hotpath bench-batching bench-profile clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "scoregate needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[dev,torch]'
	@touch $(STAMP)

$(SSLYZE_STAMP):
	$(PYTHON) -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SSLYZE_VENV)/bin/python -m pip install --quiet '$(SSLYZE)'
	@touch $(SSLYZE_STAMP)

install: $(STAMP) $(SSLYZE_STAMP)

## make sslyze: only the scanner's own environment (.venv-sslyze).
sslyze: $(SSLYZE_STAMP)

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	@touch $(CHECKOV_STAMP)

checkov: $(CHECKOV_STAMP)

$(CLIENTS_STAMP):
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLIENTS_VENV)/bin/python -m pip install --quiet 'tritonclient[http]==$(TRITONCLIENT_VERSION)' 'kserve==$(KSERVE_VERSION)'
	@touch $(CLIENTS_STAMP)

## make clients: only the standard clients' environment (.venv-clients).
clients: $(CLIENTS_STAMP)

$(AZURITE_STAMP):
	bash .ci/ensure-tools
	mkdir -p $(AZURITE_DIR)
	npm install --prefix $(AZURITE_DIR) --no-audit --no-fund --silent 'azurite@$(AZURITE_VERSION)'
	@touch $(AZURITE_STAMP)

## make azurite: only the Blob Storage emulator (.azurite/).
azurite: $(AZURITE_STAMP)

## make demo [ONCE=1]: the whole stack on this machine, with real scored requests over HTTPS.
demo: $(STAMP)
	$(BIN)/scoregate demo $(if $(ONCE),--once)

## make test: lint (ruff, the import contracts), type checks and the whole test suite
## (starts Redis if none answers).
test: lint typecheck $(CHECKOV_STAMP) $(SSLYZE_STAMP) $(AZURITE_STAMP) $(CLIENTS_STAMP)
	bash .ci/ensure-tools
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	bash .ci/ensure-tools
	$(BIN)/pytest tests/gateway tests/scorer tests/serving tests/certs tests/security -m 'not e2e'

## make lock: the images' hash-pinned locks (k8s/images/requirements/), one per image extra,
## resolved once for every Python the images and the suite run (uv, --universal); the
## GPU image's torch is the release the suite runs (TORCH). Run it after changing the
## dependencies in pyproject.toml: tests/k8s/test_image_locks.py fails until you do.
LOCKS := k8s/images/requirements
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --fork-strategy fewest \
	--python-version 3.11 --generate-hashes --no-header --quiet
lock: $(STAMP)
	echo '$(TORCH)' > $(LOCKS)/constraints.txt
	$(UV_COMPILE) --extra gateway -o $(LOCKS)/gateway.txt
	$(UV_COMPILE) --extra scorer -o $(LOCKS)/scorer.txt
	$(UV_COMPILE) --extra torch -c $(LOCKS)/constraints.txt -o $(LOCKS)/torch.txt

## make k8s: the offline checks of k8s/ only (kustomize, schemas, checkov, hadolint,
## shellcheck, the NetworkPolicy reachability matrix).
k8s: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/pytest tests/k8s

## make bench [BENCH_ARGS="--quick" | "--soak 120"]: B1-B11 (BENCHMARKS.md's B1-B8, fairness, binary tensors) beside HAProxy, MLServer, Flask.
bench: $(STAMP)
	bash bench/ensure-tools
	bash .ci/ensure-tools
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## make bench-profile: py-spy profile of the gateway under wrk load (var/bench/profile/).
bench-profile: $(STAMP)
	bash bench/ensure-tools
	$(BIN)/python -m pip --version >/dev/null && { test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet py-spy; }
	$(BIN)/python bench/profile_gateway.py $(PROFILE_ARGS)

## make bench-hotpath: µs per request of auth, rate limit (memory vs Redis) and audit.
bench-hotpath: $(STAMP)
	bash .ci/ensure-tools
	$(BIN)/python bench/hotpath.py

## make bench-batching: B6, the torch scorer's dynamic batching vs. its ceiling and batch size 1.
## make bench-audit-store [AUDIT_ARGS="--records 200000 --traffic-rps 500"]: what the audit
## store sustains here (Azurite) and what a month of it costs in Blob Storage.
bench-audit-store: $(STAMP) $(AZURITE_STAMP)
	$(BIN)/python bench/audit_store.py $(AUDIT_ARGS)

bench-batching: $(STAMP)
	$(BIN)/python bench/batching.py $(BENCH_ARGS)

## make bench-audit-report [RECORDS=10000000]: `scoregate audit report` on a generated month
## of one busy replica's trail (var/bench/audit-report/): wall time and peak RSS.
RECORDS ?= 1000000
.PHONY: bench-audit-report
bench-audit-report: $(STAMP)
	nice -n 19 $(BIN)/python bench/audit_report.py --records $(RECORDS) --html

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(CLIENTS_VENV) $(SSLYZE_VENV) $(AZURITE_DIR) .venv-extras var .mypy_cache .ruff_cache .pytest_cache .hypothesis
