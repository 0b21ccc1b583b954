# netprobe developer entry points. `make demo` and `make test` set themselves up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest

.PHONY: setup generate demo test test-agent test-cluster e2e bench controlplane cluster-up cluster-down lint clean

setup:
	@bash hack/setup.sh

## Files derived from the agent's program catalogue: the CRD and the options table of docs/agent-config.md.
generate: setup
	$(PY) -m netprobe_operator.crdgen

## The local demo: network namespaces as pods, the agent, traffic, a live summary.
demo: setup
	$(PY) -m netprobe_testbed.demo

## The whole suite (kernel, control plane, operator, end to end).
test: setup controlplane
	$(PYTEST) tests

test-agent: setup
	$(PYTEST) tests/agent

e2e: setup controlplane
	$(PYTEST) tests/e2e

bench: setup
	$(PY) -m bench

## kube-apiserver, etcd, kube-controller-manager, kube-scheduler from Go modules.
controlplane:
	@bash hack/controlplane/build.sh

cluster-up: setup controlplane
	$(PY) -m netprobe_testbed.cluster up

cluster-down: setup
	$(PY) -m netprobe_testbed.cluster down

clean:
	rm -rf $(VENV) bin .pytest_cache
