# `make test` runs everything CI runs. `make deps` installs, only when missing, what the build
# and the tests need from Debian: etcd (the real consensus member every node runs), protoc
# (etcd-client's build script needs it; our own protos are compiled by protox) and PostgreSQL
# (BMDB tests).

CARGO ?= cargo
DEBIAN_PACKAGES := etcd-server protobuf-compiler postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps test lint unit clean

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
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) nextest run --workspace

test: deps lint unit

clean:
	$(CARGO) clean
