#!/usr/bin/env bash
# Runs orderflow's whole test suite on a fresh machine: installs what the
# tests need (OpenSSL headers for librdkafka's TLS and SCRAM; Java and
# Maven for Apache Kafka, whose jars scripts/kafka.sh fetches once into a
# cache outside the checkout; Prometheus and promtool), then checks
# formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

step() { printf '\n==> %s\n' "$*"; }

# Debian packages not on the machine yet, from "command-or-check package" pairs.
missing=()
need() { eval "$1" >/dev/null 2>&1 || missing+=("$2"); }
need "command -v prometheus && command -v promtool" prometheus
need "command -v java" openjdk-17-jre-headless
need "command -v mvn" maven
need "command -v openssl" openssl
need "command -v pkg-config" pkg-config
need "pkg-config --exists openssl" libssl-dev
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]} (Debian packages)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian package starts a service we do not want; the tests run their own.
$SUDO systemctl stop prometheus >/dev/null 2>&1 || true

step "fetching Apache Kafka (once; cached outside the checkout)"
bash scripts/kafka.sh fetch

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --release (tests/broker_memory.rs measures the release binary)"
cargo build --release --locked --bin orderflow

step "cargo test"
# (no harness flags here: criterion benches, run once in test mode, reject them)
cargo test --workspace --all-targets --locked
