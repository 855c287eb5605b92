#!/usr/bin/env bash
# Proves that the system packages the build and the tests need are really usable, not merely
# installed: each check names the Debian package that provides what it found missing.
# Run by `make deps` after installing; exits non-zero on the first missing piece.
set -u
fail() { echo "deps probe: $1 (install the Debian package '$2': apt-get install $2)" >&2; exit 1; }

command -v protoc >/dev/null 2>&1 || fail "protoc not found" protobuf-compiler
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
# etcd-client's build script compiles etcd's protos, which import the well-known types.
cat >"$probe_dir/probe.proto" <<'PROTO'
syntax = "proto3";
import "google/protobuf/descriptor.proto";
import "google/protobuf/struct.proto";
message Probe { google.protobuf.Struct s = 1; }
PROTO
protoc -I"$probe_dir" --descriptor_set_out=/dev/null "$probe_dir/probe.proto" 2>"$probe_dir/err" ||
  fail "protoc cannot find google/protobuf/descriptor.proto ($(head -c 200 "$probe_dir/err"))" libprotobuf-dev

command -v etcd >/dev/null 2>&1 || fail "etcd not found on PATH" etcd-server
etcd --version >/dev/null 2>&1 || fail "etcd --version failed" etcd-server

initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
[ -n "$initdb" ] && [ -x "$initdb" ] || command -v initdb >/dev/null 2>&1 ||
  fail "PostgreSQL's initdb not found (looked in /usr/lib/postgresql/*/bin and PATH)" postgresql

# The chaos campaign's test hosts: network namespaces, veths on a bridge, tc, nftables.
command -v ip >/dev/null 2>&1 || fail "ip not found" iproute2
ip netns list >/dev/null 2>&1 || fail "ip netns does not work" iproute2
command -v tc >/dev/null 2>&1 || fail "tc not found" iproute2
tc -V >/dev/null 2>&1 || fail "tc -V failed" iproute2
command -v nft >/dev/null 2>&1 || fail "nft not found" nftables

# The units in deploy/systemd are checked with systemd-analyze verify.
command -v systemd-analyze >/dev/null 2>&1 || fail "systemd-analyze not found" systemd
# The dashboard's end-to-end test drives a headless Chromium.
command -v chromium >/dev/null 2>&1 || fail "chromium not found" chromium
chromium --headless --version >/dev/null 2>&1 || fail "chromium --headless --version failed" chromium

# The metrics tests: a real Prometheus scraping a cluster, promtool checking every exporter.
command -v prometheus >/dev/null 2>&1 || fail "prometheus not found" prometheus
command -v promtool >/dev/null 2>&1 || fail "promtool not found" prometheus
promtool --version >/dev/null 2>&1 || fail "promtool --version failed" prometheus

echo "deps probe: protoc + well-known types, etcd, initdb, ip netns, tc, nft, systemd-analyze, chromium, prometheus all present"
