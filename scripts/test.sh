#!/usr/bin/env bash
# Runs orderflow's whole test suite on a fresh machine: installs what the
# tests need (a real Kafka-protocol broker, tansu; Prometheus and promtool),
# then checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

step() { printf '\n==> %s\n' "$*"; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  step "installing prometheus (Debian package) for the dashboard test"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus >/dev/null
fi
# The Debian package starts a service we do not want; the tests run their own.
$SUDO systemctl stop prometheus >/dev/null 2>&1 || true

TANSU="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
if ! "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  step "installing tansu $TANSU_VERSION (a Kafka-compatible broker; about 15 minutes once)"
  cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql
fi
export TANSU_BIN="$TANSU"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
# (no harness flags here: criterion benches, run once in test mode, reject them)
cargo test --all-targets --locked
