#!/bin/bash
# usage: run_bench.sh BINFEATURE STORE N DURABILITY TAG
set -u
F=$1; S=$2; N=$3; D=$4; T=$5
cd "$(dirname "$0")"
B=$PWD/target-$F/release/storebench
L=$PWD/logs/bench-$S-$N-$D-$T.log
{ echo "cmd: ${EXTRA_ENV:-} nice -n 10 $B bench $S ${STOREBENCH_DATA:-/tmp/storebench-data}/$S-$N-$D-$T $N $D"; echo "uptime before: $(uptime)"; } > $L
nice -n 10 env ${EXTRA_ENV:-X=1} $B bench $S ${STOREBENCH_DATA:-/tmp/storebench-data}/$S-$N-$D-$T $N $D >> $L 2>&1
echo "rc=$?" >> $L
echo "uptime after: $(uptime)" >> $L
du -sb ${STOREBENCH_DATA:-/tmp/storebench-data}/$S-$N-$D-$T/* >> $L 2>&1
