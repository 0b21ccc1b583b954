# netprobe developer entry points. `make demo` and `make test` set themselves up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest

.PHONY: setup demo test test-agent test-cluster e2e bench controlplane cluster-up cluster-down lint clean vm-test

setup:
	@bash hack/setup.sh

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

## The kernel-level tests again on a second kernel: Debian 12's 6.1 LTS (with
## kprobes) in QEMU/TCG, image built from Debian packages and cached (hack/vm/).
vm-test: setup
	@bash hack/vm/run.sh

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
