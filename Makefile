# nixos-k3s developer entry points. `make plan` and `make test` work on a fresh Debian machine
# with Python 3.11: they create .venv, install the pinned requirements and (as root) the
# Debian packages the tests use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := nix-bin openssh-server shellcheck iproute2 libcap2-bin systemd-container
STACK ?= dev

.PHONY: node-deps venv plan plan-prod test lint format bench system-deps schema dev-up dev-destroy clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

## plan: render the dev stack offline (no credentials): build/dev/plan.json + hosts/*.json
plan: $(STAMP)
	$(PY) -m tooling plan --stack $(STACK)

plan-prod: $(STAMP)
	$(PY) -m tooling plan --stack prod

## system-deps: Debian packages the tests need (nix-instantiate, sshd, shellcheck, ip/tc, capsh, nspawn); root only
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "not root: missing$$missing; tests that need them are skipped"; fi

## node-deps: Mermaid's own parser for the PR diagram tests (npm registry), when npm is here
MERMAID := tests/ci/mermaid
node-deps:
	@if command -v npm >/dev/null; then \
	  [ -d $(MERMAID)/node_modules ] || npm ci --prefix $(MERMAID) --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the Mermaid parser checks are skipped"; fi

## test: everything (unit, plan, nix parse, real sshd, fake colima, workflows)
test: $(STAMP) system-deps node-deps
	$(PY) -m pytest

## lint: ruff (format + check), pyright, shellcheck
lint: $(STAMP) system-deps
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyright
	shellcheck --external-sources components/scripts/*.sh nixos/modules/*.sh .ci/run .ci/*.sh

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## bench: offline plan at 3/30/100/300 nodes against a bare-SDK baseline, and the modelled
## first-deploy time (bench/deploy_steps.yaml) -> build/bench.json
bench: $(STAMP)
	$(PY) -m bench

## schema: regenerate nixos/host.schema.json after changing components/hosts/hostspec.py
schema: $(STAMP)
	$(PY) -m components.hosts.hostspec --write

## dev-up / dev-destroy: the Colima dev cluster on a Mac (needs the Pulumi CLI, colima, nix)
dev-up:
	pulumi up --stack dev

dev-destroy:
	pulumi destroy --stack dev

clean:
	rm -rf build .pytest_cache .ruff_cache
