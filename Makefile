# tailroute: the README's commands are these targets.
#   make lab    the one-machine lab: real tailscaled, Headscale, Kubernetes (needs root)
#   make test   every test tier (installs and builds what it needs; needs root)
#   make demo   two pods on a tailroute-bridge network in throwaway namespaces
#   make bench  tailroute-bridge vs the reference bridge + host-local, then the agent in the lab (lab-bench);
#               then the node agent's figures on a lab of its own (needs root)
#   make image  the agent image from deploy/Containerfile (podman or docker)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
# The plugin is exec'd per pod start and stop: a static binary starts in
# 1.0 ms instead of 1.6 ms (no dynamic loader), and it runs on any node.
HOST_TRIPLE := $(shell rustc -vV | sed -n 's/^host: //p')
PLUGIN := target/$(HOST_TRIPLE)/release/tailroute-bridge
BENCH_N ?= 200
BENCH_CONCURRENCY ?= 8

.PHONY: all build plugin lab demo test test-unit lint bench image clean

all: build

build: plugin
	$(CARGO) build --release --workspace

plugin:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p tailroute-bridge --target $(HOST_TRIPLE)

# Installs the apt packages, builds the real peers from the Go module proxy
# (about 16 minutes the first time, cached afterwards), then brings the lab up.
lab:
	@scripts/install-test-deps.sh >/dev/null
	scripts/build-peers.sh >/dev/null
	$(CARGO) build --release --workspace
	scripts/lab-demo.sh

demo: plugin
	@scripts/install-test-deps.sh >/dev/null
	scripts/demo.sh $(PLUGIN)

# Unit tests run anywhere; the namespace, cnitool, crash and bad-input tiers
# need root and fail (never skip) without it.
test:
	@cnitool=$$(scripts/install-test-deps.sh); \
	python_tools=$$(scripts/install-python-tools.sh); export TAILROUTE_PYTHON_TOOLS=$$python_tools; \
	scripts/build-peers.sh; \
	$(CARGO) fmt --all -- --check; \
	$(CARGO) clippy --workspace --all-targets -- -D warnings; \
	rm -f target/tmp/lab-figures.txt; \
	TAILROUTE_CNITOOL=$$cnitool $(CARGO) test --workspace --release 2>&1 | tee target/test.log; \
	if [ -f target/tmp/lab-figures.txt ]; then echo "lab figures:"; cat target/tmp/lab-figures.txt; fi; \
	awk '/^test result:/ { passed += $$4; failed += $$6 } \
	     END { printf "tests: %d passed, %d failed\n", passed, failed; exit (passed == 0 || failed > 0) }' target/test.log

test-unit:
	$(CARGO) test --workspace --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: build
	@scripts/install-test-deps.sh >/dev/null
	target/release/cni-bench --plugin $(PLUGIN) -n $(BENCH_N) --concurrency $(BENCH_CONCURRENCY)
	scripts/build-peers.sh >/dev/null
	target/release/lab-bench --out target/tmp/agent-bench.txt

# The agent image (deploy/Containerfile) with podman, else docker. Nothing is
# published: push it where your nodes pull from and set the image in the
# manifest (docs/install-manifest.md).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' node-agent/Cargo.toml | head -n1)
IMAGE ?= ghcr.io/tailroute/tailroute:$(VERSION)
image:
	@if command -v podman >/dev/null 2>&1; then engine=podman; \
	elif command -v docker >/dev/null 2>&1; then \
	  docker info >/dev/null 2>&1 || { echo "make image: docker is installed but its daemon does not answer (docker info failed); start it or install podman" >&2; exit 1; }; \
	  engine=docker; \
	else echo "make image: neither podman nor docker is installed; install one (Debian: apt-get install podman) to build $(IMAGE) from deploy/Containerfile" >&2; exit 1; fi; \
	echo "make image: $$engine build -f deploy/Containerfile -t $(IMAGE) ."; \
	$$engine build -f deploy/Containerfile -t $(IMAGE) .

clean:
	$(CARGO) clean
