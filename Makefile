# tripmesh: `make run` starts the whole mesh from a fresh clone; `make test` is what CI runs (.ci/run).
#
#   make venv      .venv with the package (editable) and the dev tools; redone only when pyproject.toml
#                  or setup.py change
#   make protos    the tripmesh.v1 stubs (git-ignored), regenerated when a .proto changes
#   make run       venv + protos, then `tripmesh up` (ARGS="--json-logs" to pass options; ARGS=--tls
#                  for mutual TLS between every process)
#   make demo      venv + protos, then `tripmesh demo`: a fault-injected mix of trips on a mesh of its
#                  own (ARGS="--trips 100 --seed 1" to pass options)
#   make test      lint, typecheck, buf-lint, then pytest (PYTEST_WORKERS=2 by default; 0 for one process)
#   make fmt       ruff format + ruff's safe fixes
#   make clean     removes var/ and the generated stubs (not .venv)
#   make bench     the benchmark (not part of make test; ~15 min; ARGS=--quick for a 2-minute smoke run)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.tripmesh-installed
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: most tests wait on real processes and I/O, so two workers on two
# cores take the suite from ~10 to ~6 minutes. --dist loadscope keeps each module (and its module-scoped
# mesh and after-all checks) on one worker. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
ARGS ?=

PROTO_DIR := protos/tripmesh/v1
PROTOS := $(wildcard $(PROTO_DIR)/*.proto)
STUBS := $(foreach p,$(PROTOS:.proto=),$(p)_pb2.py $(p)_pb2.pyi $(p)_pb2_grpc.py $(p)_pb2_grpc.pyi)
MISSING_STUBS := $(filter-out $(wildcard $(STUBS)),$(STUBS))
PROTOS_STAMP := $(VENV)/.tripmesh-protos

.PHONY: help venv protos run demo test lint fmt typecheck buf-lint clean FORCE

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

protos: $(PROTOS_STAMP)

# One protoc run writes every stub; it runs again when a .proto, the generator or the tools change,
# or when any stub is missing.
$(PROTOS_STAMP): $(PROTOS) protos/generate.py $(VENV_STAMP) $(if $(MISSING_STUBS),FORCE)
	$(BIN)/python protos/generate.py
	@touch $@

run: venv protos
	$(BIN)/tripmesh up $(ARGS)

demo: venv protos
	$(BIN)/tripmesh demo $(ARGS)

test: venv protos
	$(MAKE) --no-print-directory lint typecheck buf-lint
	$(BIN)/pytest -q $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadscope) $(PYTEST_ARGS)

lint: venv protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: venv protos
	$(BIN)/mypy

buf-lint: venv
	$(BIN)/buf lint

clean:
	rm -rf var build dist
	rm -f $(PROTO_DIR)/*_pb2.py $(PROTO_DIR)/*_pb2.pyi $(PROTO_DIR)/*_pb2_grpc.py $(PROTO_DIR)/*_pb2_grpc.pyi $(PROTOS_STAMP)

# The benchmark's own tools (psutil, tqdm, matplotlib, dbos, py-spy): the `bench` extra, installed
# only for `make bench`, so `make test` never needs them.
BENCH_STAMP := $(VENV)/.tripmesh-bench-installed

$(BENCH_STAMP): pyproject.toml setup.py $(VENV_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@

bench: venv protos $(BENCH_STAMP)
	$(BIN)/python -m bench $(ARGS)
