#!/bin/bash
# usage: build_timed.sh FEATURE  -- clean release build in its own target dir
set -u
F=$1
cd "$(dirname "$0")"
export CARGO_BUILD_JOBS=1
export CARGO_TARGET_DIR=$PWD/target-$F
rm -rf "$CARGO_TARGET_DIR"
{ echo "uptime before: $(uptime)"; } > logs/build-$F.log
( time nice -n 10 cargo build --release --features $F ) >> logs/build-$F.log 2>&1
echo "rc=$?" >> logs/build-$F.log
echo "uptime after: $(uptime)" >> logs/build-$F.log
