# `make test` runs everything CI runs. `make deps` installs, only when missing, what the build
# and the tests need from Debian: etcd (the real consensus member every node runs), protoc and
# the protobuf well-known types (etcd-client's build script compiles etcd's protos, which import
# google/protobuf/descriptor.proto; Debian's protobuf-compiler only *recommends* libprotobuf-dev,
# which ships them; our own protos are compiled by protox), PostgreSQL (BMDB tests), systemd
# (`systemd-analyze verify` of the units in deploy/systemd) and Chromium (the headless browser
# of the dashboard's end-to-end test).
# scripts/probe-deps.sh then proves each piece works and names the package that is missing.
# The cargo tools (cargo-nextest, and cargo-deny for `make lint`) are installed with
# `cargo install --locked` when missing; cargo-deny takes several minutes to build once.

CARGO ?= cargo
DEBIAN_PACKAGES := etcd-server protobuf-compiler libprotobuf-dev postgresql iproute2 nftables systemd chromium prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps test lint unit cluster bench fuzz chaos clean bundle

NODES ?= 3
BENCH ?= all
BENCH_ARGS ?=

deps:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi
	@scripts/probe-deps.sh
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest
	@$(CARGO) deny --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny

# Licences and banned crates (deny.toml): only permissive licences, no OpenSSL or aws-lc.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) deny check --hide-inclusion-graph licenses bans

# End-to-end tests run the real binaries (metropolis-node, metroctl), which nextest does not
# build for other crates' tests: build them first. Both steps build with the failpoints of the
# crash-consistency tests (the node arms them from FAILPOINTS); the same features in both keep
# nextest from rebuilding the node binary without them. Release builds never have them.
TEST_FEATURES := --features node/failpoints
unit:
	$(CARGO) build --workspace --bins $(TEST_FEATURES)
	$(CARGO) nextest run --workspace $(TEST_FEATURES)

# A local multi-node cluster on 127.77.0.x; Ctrl-C stops it. Only the production packages are
# built: bench enables curator's test harness (feature `testing`), and one cargo invocation
# unifies features, so building it alongside would compile the harness into the node.
cluster: deps
	$(CARGO) build --release -p node -p metroctl -p launch
	target/release/launch-cluster --nodes $(NODES)

# An update bundle of the current build for NodeManagement.UpdateNode: target/bundle.tar
# (manifest.json and metropolis-node; the manifest names the version the binary reports).
# BUNDLE_VERSION=0.2.0 re-stamps the binary with another version first.
BUNDLE ?= target/bundle.tar
BUNDLE_VERSION ?=
bundle:
	$(CARGO) build --release -p node --bins
	target/release/metropolis-bundle --binary target/release/metropolis-node --output $(BUNDLE) \
	  $(if $(BUNDLE_VERSION),--stamp-version $(BUNDLE_VERSION))

# Benchmarks against raw etcd/PostgreSQL (release build, ~5 min); rewrites BENCHMARKS.md.
# One scenario: `make bench BENCH=heartbeat`; smoke run: `make bench BENCH_ARGS=--quick`.
# The node and bench are built by separate invocations so the node is built as released,
# without the curator test harness bench enables (see `cluster`).
bench: deps
	$(CARGO) build --release -p node
	$(CARGO) run --release -p bench -- $(BENCH) $(BENCH_ARGS)

# Fuzzing (nightly, libFuzzer through cargo-fuzz, installed when missing): every target in turn
# (or those in FUZZ_TARGETS) for FUZZ_RUNS executions or FUZZ_TIME seconds each, then the corpus
# is minimized; FUZZING.md records a campaign. `make test` replays the corpora on stable.
FUZZ_RUNS ?= 1000000
FUZZ_TIME ?= 600
FUZZ_TARGETS ?=
fuzz:
	FUZZ_RUNS=$(FUZZ_RUNS) FUZZ_TIME=$(FUZZ_TIME) scripts/fuzz.sh $(FUZZ_TARGETS)

# The fault campaign (needs root): every scenario on clusters of test hosts (a network
# namespace each), under 30 minutes on 2 cores; rewrites CHAOS.md. One scenario:
# `make chaos CHAOS=1`; fewer runs: `make chaos CHAOS_ARGS=--runs=1`. `make test` runs its
# smoke scenario (a follower partition and heal) among the tests.
CHAOS ?=
CHAOS_ARGS ?=
chaos: deps
	$(CARGO) build --workspace --bins $(TEST_FEATURES)
	target/debug/chaos $(CHAOS) $(CHAOS_ARGS)

test: deps lint unit

clean:
	$(CARGO) clean
