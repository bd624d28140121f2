#!/usr/bin/env bash
# Kafka's own ceiling on this machine: Apache Kafka's ProducerPerformance
# and ConsumerPerformance (org.apache.kafka.tools, in kafka-tools-4.1.1.jar)
# on one topic, with orderflow's producer settings (linger.ms 5, lz4,
# idempotent, acks=all).
#
#   scripts/kafka-perf.sh [--bootstrap HOST:PORT] [--records N]
#                         [--record-size BYTES | --payload-file FILE]
#                         [--topic NAME] [--partitions P]
#
# Without --bootstrap it starts a broker of its own (scripts/kafka.sh
# start) and stops it at the end. --payload-file: one record per line,
# picked at random per record (benches/e2e writes orderflow's output mix
# there, E2E_PAYLOAD_FILE); --record-size repeats one random payload of
# that size, which lz4 compresses better than real records.
# Prints both tools' summaries; the producer's last line is
# "N records sent, R records/sec (M MB/sec), ...", the consumer's a CSV row
# whose MB.sec and nMsg.sec columns are the rates.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
kafka="$here/kafka.sh"
bootstrap="" records=500000 size="" payload="" topic="perf" partitions=4
while [ $# -gt 0 ]; do
  case $1 in
    --bootstrap) bootstrap=$2; shift 2 ;;
    --records) records=$2; shift 2 ;;
    --record-size) size=$2; shift 2 ;;
    --payload-file) payload=$2; shift 2 ;;
    --topic) topic=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    *) echo "kafka-perf.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$size" ] || [ -n "$payload" ] || size=793

dir=""
if [ -z "$bootstrap" ]; then
  started=$(bash "$kafka" start)
  bootstrap=$(sed -n 's/^bootstrap=\([^ ]*\) .*/\1/p' <<<"$started")
  dir=$(sed -n 's/.* dir=\(.*\)$/\1/p' <<<"$started")
  trap 'bash "$kafka" stop --dir "$dir"' EXIT
fi

bash "$kafka" tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" \
  --create --if-not-exists --topic "$topic" --partitions "$partitions" --replication-factor 1

if [ -n "$payload" ]; then
  what=(--payload-file "$payload")
else
  what=(--record-size "$size")
fi
echo "== ProducerPerformance: $records records (${what[*]}), linger.ms=5 lz4 idempotent acks=all"
bash "$kafka" tool org.apache.kafka.tools.ProducerPerformance --topic "$topic" \
  --num-records "$records" "${what[@]}" --throughput -1 \
  --producer-props bootstrap.servers="$bootstrap" linger.ms=5 compression.type=lz4 \
  enable.idempotence=true acks=all
echo "== ConsumerPerformance: $records records"
bash "$kafka" tool org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$bootstrap" \
  --topic "$topic" --messages "$records" --timeout 60000
