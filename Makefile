# tailroute: the README's commands are these targets.
#   make demo   two pods on a tailroute-bridge network in throwaway namespaces
#   make test   every test tier (installs what it needs; needs root)
#   make bench  tailroute-bridge vs the reference bridge + host-local, side by side

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
BENCH_N ?= 200
BENCH_CONCURRENCY ?= 8

.PHONY: all build demo test test-unit lint bench clean

all: build

build:
	$(CARGO) build --release --workspace

demo: build
	scripts/demo.sh target/release/tailroute-bridge

# Unit tests run anywhere; the namespace, cnitool, crash and bad-input tiers
# need root and fail (never skip) without it.
test:
	@cnitool=$$(scripts/install-test-deps.sh); \
	$(CARGO) fmt --all -- --check; \
	$(CARGO) clippy --workspace --all-targets -- -D warnings; \
	TAILROUTE_CNITOOL=$$cnitool $(CARGO) test --workspace --release

test-unit:
	$(CARGO) test --workspace --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	@scripts/install-test-deps.sh >/dev/null
	$(CARGO) build --release --workspace
	target/release/cni-bench --plugin target/release/tailroute-bridge -n $(BENCH_N) --concurrency $(BENCH_CONCURRENCY)

clean:
	$(CARGO) clean
