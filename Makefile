# Axon: the two commands a user needs are `make demo` and `make test`; both
# install what is missing first. Everything here runs as root (BPF, netns).

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all deps build release test kube demo bench clean-lab fmt clippy

all: build

## deps: install missing tools (apt), mount bpffs, check the Rust toolchain
deps:
	@bash scripts/deps.sh

## build: debug build of every binary (axon-agent, agentctl, the lab's helpers)
build:
	$(CARGO) build --workspace --bins

## release: optimized build, for benchmarks
release:
	$(CARGO) build --workspace --bins --release

## test: the whole suite: unit tests and the network-namespace lab (needs root)
# The lab's tests run axon-agent, agentctl and lab-client from the target dir,
# so the binaries are built before the tests start.
test: deps build kube
	@[ "$$(id -u)" -eq 0 ] || { echo "make test: the lab tests need root (network namespaces, cgroups, BPF)" >&2; exit 1; }
	$(CARGO) test --workspace

## kube: build kube-apiserver/kube-controller-manager/kube-proxy/kubectl 1.20.2 from Debian's source, once
## (cached in ~/.cache/axon; the Kubernetes tests and benchmark run against them)
kube:
	@bash scripts/kube-build.sh >/dev/null

## demo: a ClusterIP service served by socket-LB in a lab of namespaces
demo: deps build
	@bash scripts/demo.sh

## bench: socket-LB vs iptables vs nftables (issue #2), then NodePort through iptables, tc and XDP (issue #3);
## then sidecar mesh capture (issue #5); BENCH_ARGS / NODEPORT_BENCH_ARGS / MESH_BENCH_ARGS pass options (e.g. --quick)
bench: deps release
	$(CARGO) run --release -p axon-bench --bin axon-bench -- $(BENCH_ARGS)
	@if [ -f bench/src/bin/axon-bench-nodeport.rs ]; then \
		$(CARGO) run --release -p axon-bench --bin axon-bench-nodeport -- $(NODEPORT_BENCH_ARGS); \
	fi
	@if [ -f bench/src/bin/axon-bench-mesh.rs ]; then \
		$(CARGO) run --release -p axon-bench --bin axon-bench-mesh -- $(MESH_BENCH_ARGS); \
	fi
	bash scripts/kube-build.sh >/dev/null
	$(CARGO) run --release -p axon-bench --bin axon-bench -- k8s $(K8S_BENCH_ARGS)

## clean-lab: remove leftovers of interrupted tests/demos (axt-*, axd-*, axon-demo)
clean-lab:
	@bash scripts/clean-lab.sh

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
