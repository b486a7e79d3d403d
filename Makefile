# hubcast: `make run` starts a development server, `make test` runs every test.

CARGO ?= cargo
JS_DIR := tests/js

.PHONY: all build run test test-rust test-js helm-check bench lint fmt clean rabbitmq fuzz

all: build

build:
	$(CARGO) build --release

## Start `hubcast serve` on the embedded bus; with no secret configured it prints a development one.
run:
	$(CARGO) run --release -- serve

## Every test: Rust unit and integration tests, the official SignalR JS clients against the server, and the
## Helm chart and Kubernetes manifests validated offline.
test: test-rust test-js helm-check

test-rust:
	$(CARGO) test --all-targets

# npm ci again only when the lock file changed.
$(JS_DIR)/node_modules/.package-lock.json: $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund

## Start (or install) the RabbitMQ broker the pipeline tests use.
rabbitmq:
	./scripts/ensure-rabbitmq.sh

# The hub-level tests that run again on each fallback transport (MessagePack cases use Long Polling under SSE).
TRANSPORT_TESTS := test/connect.test.js test/groups.test.js test/errors.test.js test/hubs.test.js \
	test/isolation.test.js test/notifications.test.js test/spend.test.js test/webhooks.test.js test/admin.test.js

# The JS suite runs the build with OpenTelemetry compiled in (and off unless configured), so the tracing
# test can turn it on.
test-js: $(JS_DIR)/node_modules/.package-lock.json rabbitmq
	$(CARGO) build --features otel
	cd $(JS_DIR) && SERVER_BIN=$(CURDIR)/target/debug/hubcast npm test
	cd $(JS_DIR) && for transport in sse longpolling; do \
		echo "== the hub tests over $$transport"; \
		TEST_TRANSPORT=$$transport SERVER_BIN=$(CURDIR)/target/debug/hubcast \
			node --test --test-concurrency=1 $(TRANSPORT_TESTS) || exit 1; \
	done

## Lint the chart, render it (default and production-like values), validate every object and k8s/ strictly.
helm-check:
	./scripts/helm-check.sh

## Benchmarks: a short version of every scenario (about 4 minutes); writes bench/results/latest.md.
## `./target/release/hubcast-bench run --help` for longer runs, other sizes and single scenarios.
bench: rabbitmq
	$(CARGO) build --release -p hubcast -p hubcast-bench
	./target/release/hubcast-bench all

lint:
	python3 scripts/check-layers.py
	$(CARGO) fmt --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --all-features -- -D warnings

## Fuzz the parsers (fuzz/fuzz_targets) with cargo-fuzz, FUZZ_SECONDS each; not part of `make test`. The
## committed seeds in fuzz/corpus/<target> are only read: new inputs go to fuzz/target/corpus/<target>,
## crashes to fuzz/artifacts/<target>. Without a nightly toolchain it builds on stable, without ASan.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := protocol_json protocol_msgpack ws_frame handshake negotiate events

fuzz:
	$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@if rustup toolchain list 2>/dev/null | grep -q "^nightly"; then fuzz="$(CARGO) +nightly fuzz run"; \
	else fuzz="env RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer none"; fi; \
	failed=; for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/target/corpus/$$target; echo "== $$fuzz $$target"; \
		$$fuzz $$target fuzz/target/corpus/$$target fuzz/corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || failed="$$failed $$target"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in$$failed (see fuzz/artifacts)" >&2; exit 1; fi

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
	rm -rf $(JS_DIR)/node_modules
