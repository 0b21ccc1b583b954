# netprobe developer entry points. `make demo` and `make test` set themselves up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest

.PHONY: setup generate demo test test-agent test-cluster e2e e2e-node bench controlplane image cluster-up cluster-down lint clean vm-test

setup:
	@bash hack/setup.sh

## Files derived from the agent's program catalogue: the CRD and the options table of docs/agent-config.md.
generate: setup
	$(PY) -m netprobe_operator.crdgen

## The local demo: network namespaces as pods, the agent, traffic, a live summary.
demo: setup
	$(PY) -m netprobe_testbed.demo

## The whole suite (kernel, control plane, operator, end to end, the real node).
test: setup controlplane image
	$(PYTEST) tests

test-agent: setup
	$(PYTEST) tests/agent

e2e: setup controlplane
	$(PYTEST) tests/e2e

## The product as users install it: the image on a real node (containerd + kubelet).
e2e-node: setup controlplane image
	$(PYTEST) tests/e2e_node

## The kernel-level tests again on a second kernel: Debian 12's 6.1 LTS (with
## kprobes) in QEMU/TCG, image built from Debian packages and cached (hack/vm/).
vm-test: setup
	@bash hack/vm/run.sh

bench: setup
	$(PY) -m bench

## kube-apiserver, etcd, kube-controller-manager, kube-scheduler from Go modules.
controlplane:
	@bash hack/controlplane/build.sh

## The operator + agent image: Docker/Podman from the Dockerfile, else mmdebstrap and an
## OCI archive (bin/netprobe-image.tar). IMAGE=ref IMAGE_BUILDER=docker|podman|mmdebstrap
image:
	@bash hack/image/build.sh

cluster-up: setup controlplane
	$(PY) -m netprobe_testbed.cluster up

cluster-down: setup
	$(PY) -m netprobe_testbed.cluster down

clean:
	rm -rf $(VENV) bin .pytest_cache
