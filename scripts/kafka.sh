#!/usr/bin/env bash
# Apache Kafka for orderflow's tests and benchmarks: one combined
# broker+controller in KRaft mode on loopback, from the jars Maven Central
# serves (the release tarball is not reachable from our machines).
#
#   scripts/kafka.sh fetch
#       Copies the pinned broker's jars into the cache (once; a second call
#       finds them). Prints the libs directory.
#   scripts/kafka.sh format --dir DIR --port PORT --controller-port CPORT
#                           [--config-extra FILE] [--format-arg ARG]...
#       Writes DIR/server.properties for one node on 127.0.0.1 and formats
#       a fresh log dir DIR/data (skipped if already formatted, so a broker
#       restarted on the same DIR keeps its data). --config-extra appends
#       properties (a later key wins: listeners, SASL, ACLs); --format-arg
#       passes an argument to StorageTool format (SCRAM users: --add-scram).
#   scripts/kafka.sh run --dir DIR [--owner PID]
#       Runs the formatted broker in the foreground (exec: the caller's
#       child is the JVM, so SIGKILL/SIGTERM reach it). Logs: DIR/logs.
#       With --owner, a watchdog kills the broker and removes DIR once
#       process PID is gone (a test run killed before it could clean up).
#   scripts/kafka.sh start [--dir DIR]
#       For a human: fetch, pick free ports, format, run in the background,
#       wait until the port answers; prints "bootstrap=127.0.0.1:PORT dir=DIR".
#   scripts/kafka.sh stop --dir DIR
#       Stops a broker started with `start` and removes DIR.
#   scripts/kafka.sh tool CLASS ARGS...
#       Runs a Kafka tool class on the same classpath (for example
#       org.apache.kafka.tools.ProducerPerformance).
#
# Environment: ORDERFLOW_KAFKA_CACHE (default ~/.cache/orderflow), KAFKA_HEAP
# (default 1g), JAVA (default java on PATH).
set -euo pipefail

KAFKA_VERSION=4.1.1
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${ORDERFLOW_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orderflow}"
libs="$cache_root/kafka-$KAFKA_VERSION/libs"
java="${JAVA:-java}"
heap="${KAFKA_HEAP:-1g}"

die() { echo "kafka.sh: $*" >&2; exit 2; }

fetch() {
  if [ -f "$libs/.complete" ]; then
    echo "$libs"
    return
  fi
  command -v mvn >/dev/null || die "mvn not found (install maven; .ci/run does)"
  local work
  work="$(mktemp -d)"
  sed "s|<kafka.version>[^<]*</kafka.version>|<kafka.version>$KAFKA_VERSION</kafka.version>|" \
    "$here/kafka/pom.xml" >"$work/pom.xml"
  rm -rf "$libs"
  mkdir -p "$libs"
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $libs" >&2
  (cd "$work" && mvn -B -q dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$libs") >&2 || die "mvn could not fetch Kafka $KAFKA_VERSION"
  rm -rf "$work"
  # Without the slf4j 1.7 API and its log4j2 binding the broker logs nothing.
  for jar in "kafka_2.13-$KAFKA_VERSION.jar" "kafka-tools-$KAFKA_VERSION.jar" \
    slf4j-api-1.7.36.jar; do
    [ -f "$libs/$jar" ] || die "fetched libs lack $jar"
  done
  ls "$libs"/log4j-slf4j-impl-*.jar >/dev/null 2>&1 || die "fetched libs lack log4j-slf4j-impl"
  touch "$libs/.complete"
  echo "$libs"
}

# JVM settings for these 2-core machines: a fixed 1 GiB heap by default,
# G1 with short pauses and one concurrent GC thread, so the broker leaves
# the cores to the processor and the test.
jvm_opts() {
  echo "-Xms$heap -Xmx$heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20"
  echo "-XX:InitiatingHeapOccupancyPercent=35 -XX:ParallelGCThreads=2 -XX:ConcGCThreads=1"
  echo "-XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true"
}

write_properties() {
  local dir=$1 port=$2 cport=$3
  cat >"$dir/server.properties" <<EOF
# One node, broker and controller in one process (KRaft), on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,SASL_PLAINTEXT:SASL_PLAINTEXT
log.dirs=$dir/data
# A single node: every internal topic with one replica (the defaults are
# for three brokers and leave group and transaction calls failing with
# COORDINATOR_NOT_AVAILABLE), one partition each for a fast first lookup.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.partitions=1
# Two cores: fewer threads than the defaults (3 network, 8 I/O).
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
# Tests make small segments; keep the broker's own footprint small too.
log.segment.bytes=104857600
log.retention.check.interval.ms=60000
# Aborts a dead producer's open transaction soon after its timeout.
transaction.abort.timed.out.transaction.cleanup.interval.ms=2000
EOF
  if [ -n "${extra:-}" ]; then
    printf '\n# --config-extra %s\n' "$extra" >>"$dir/server.properties"
    cat "$extra" >>"$dir/server.properties"
  fi
  cat >"$dir/log4j2.properties" <<EOF
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

format() {
  local dir="" port="" cport=""
  extra=""
  local format_args=()
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) dir=$2; shift 2 ;;
      --port) port=$2; shift 2 ;;
      --controller-port) cport=$2; shift 2 ;;
      --config-extra) extra=$2; shift 2 ;;
      --format-arg) format_args+=("$2"); shift 2 ;;
      *) die "format: unknown argument $1" ;;
    esac
  done
  [ -n "$dir" ] && [ -n "$port" ] && [ -n "$cport" ] ||
    die "format needs --dir, --port and --controller-port"
  fetch >/dev/null
  mkdir -p "$dir/logs"
  write_properties "$dir" "$port" "$cport"
  if [ -f "$dir/data/meta.properties" ]; then
    return # formatted before: a restart keeps its data
  fi
  local id
  id=$("$java" -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null)
  "$java" -Xmx256m -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$libs/*" \
    kafka.tools.StorageTool format --standalone -t "$id" -c "$dir/server.properties" \
    ${format_args[@]+"${format_args[@]}"} >"$dir/logs/format.log" 2>&1 ||
    { cat "$dir/logs/format.log" >&2; die "formatting $dir failed"; }
}

# Until process $1 is gone: then SIGKILL process $2 (the broker) and remove
# directory $3. Returns early once the broker is gone by other means (the
# owner stopped or restarted it).
watchdog() {
  local owner=$1 broker=$2 dir=$3
  while kill -0 "$broker" 2>/dev/null; do
    if ! kill -0 "$owner" 2>/dev/null; then
      kill -9 "$broker" 2>/dev/null || true
      while kill -0 "$broker" 2>/dev/null; do sleep 0.1; done
      rm -rf "$dir"
      return
    fi
    sleep 1
  done
}

run() {
  local dir="" owner=""
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) dir=$2; shift 2 ;;
      --owner) owner=$2; shift 2 ;;
      *) die "run: unknown argument $1" ;;
    esac
  done
  [ -f "$dir/server.properties" ] || die "run: $dir is not formatted (run format first)"
  fetch >/dev/null
  if [ -n "$owner" ]; then
    # $$ is this shell, which exec turns into the JVM below.
    watchdog "$owner" $$ "$dir" </dev/null >/dev/null 2>&1 &
  fi
  # shellcheck disable=SC2046
  exec "$java" $(jvm_opts) -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -Dkafka.logs.dir="$dir/logs" -cp "$libs/*" kafka.Kafka "$dir/server.properties"
}

# Two distinct free loopback ports (both held until both are picked).
free_ports() {
  python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))'
}

start() {
  local dir=""
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) dir=$2; shift 2 ;;
      *) die "start: unknown argument $1" ;;
    esac
  done
  [ -n "$dir" ] || dir="$(mktemp -d -t orderflow-kafka-XXXXXX)"
  local port cport
  read -r port cport < <(free_ports)
  format --dir "$dir" --port "$port" --controller-port "$cport"
  nohup "$0" run --dir "$dir" >"$dir/logs/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "bootstrap=127.0.0.1:$port dir=$dir"
      return
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { tail -20 "$dir/logs/server.log" >&2; die "broker exited"; }
    sleep 0.1
  done
  die "broker did not accept connections within 60 s (see $dir/logs)"
}

stop() {
  local dir=""
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) dir=$2; shift 2 ;;
      *) die "stop: unknown argument $1" ;;
    esac
  done
  [ -f "$dir/pid" ] || die "stop: no broker started in $dir"
  kill "$(cat "$dir/pid")" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$(cat "$dir/pid")" 2>/dev/null || true
  rm -rf "$dir"
}

tool() {
  [ $# -ge 1 ] || die "tool needs a class name"
  fetch >/dev/null
  local class=$1
  shift
  exec "$java" -Xmx512m -cp "$libs/*" "$class" "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  fetch) fetch ;;
  format) format "$@" ;;
  run) run "$@" ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  tool) tool "$@" ;;
  libs) echo "$libs" ;;
  *) die "usage: kafka.sh fetch|format|run|start|stop|tool (see the top of this file)" ;;
esac
