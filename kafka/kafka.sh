#!/usr/bin/env bash
# Starts or stops the project's single-node Kafka broker (KRaft mode) from the jars that
# `make kafka-libs` resolved from Maven Central. Data, logs and the pid file stay under var/kafka.
#   kafka/kafka.sh up     start it, or do nothing if it already runs; waits until it accepts clients
#   kafka/kafka.sh down   stop it (and any broker started from this folder), leaving no process
#   kafka/kafka.sh serve CONFIG   run a broker with CONFIG (a server.properties with @DATA_DIR@) in
#                         the foreground, logging to the console: a container's main process
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
libs="$root/build/kafka-libs"
state="$root/var/kafka"
config="$state/server.properties"
pid_file="$state/broker.pid"
port=19092

running() {
  [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

accepting() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

up() {
  if running && accepting; then
    echo "kafka: already running (pid $(cat "$pid_file")) on 127.0.0.1:$port"
    return 0
  fi
  prepare conf/kafka/server.properties
  nohup java -Xms256m -Xmx768m -Dkafka.logs.dir="$state/logs" \
    -Dlog4j2.configurationFile="$root/conf/kafka/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$config" > "$state/logs/broker.out" 2>&1 &
  echo $! > "$pid_file"
  for _ in $(seq 1 120); do
    if ! running; then
      rm -f "$pid_file"
      if accepting; then  # our broker could not bind the port: another one already serves it
        echo "kafka: another broker already listens on 127.0.0.1:$port; using it (this one exited)" >&2
        return 0
      fi
      echo "kafka: the broker exited; see $state/logs/broker.out" >&2
      tail -20 "$state/logs/broker.out" >&2
      exit 1
    fi
    if accepting; then
      echo "kafka: running (pid $(cat "$pid_file")) on 127.0.0.1:$port"
      return 0
    fi
    sleep 0.5
  done
  echo "kafka: not accepting clients after 60 s; see $state/logs/broker.out" >&2
  exit 1
}

# Writes the broker's configuration from a template and formats its data folder the first time.
prepare() {
  [ -d "$libs" ] || { echo "kafka: $libs is missing; run 'make kafka-libs'" >&2; exit 1; }
  [ -f "$1" ] || { echo "kafka: no broker configuration $1" >&2; exit 2; }
  mkdir -p "$state/data" "$state/logs"
  sed "s#@DATA_DIR@#$state/data#" "$1" > "$config"
  if [ ! -f "$state/data/meta.properties" ]; then
    # Formatting is once per data folder; the cluster id is fixed for it.
    java -cp "$libs/*" kafka.tools.StorageTool format --config "$config" \
      --cluster-id "$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid)" --ignore-formatted \
      > "$state/logs/format.log" 2>&1
  fi
}

serve() {
  prepare "$1"
  exec java -Xms256m -Xmx768m -Dkafka.logs.dir="$state/logs" \
    -Dlog4j2.configurationFile="$root/conf/kafka/log4j2-console.properties" \
    -cp "$libs/*" kafka.Kafka "$config"
}

down() {
  local pids
  pids=$(pgrep -f "kafka.Kafka $config" || true)
  [ -f "$pid_file" ] && pids="$pids $(cat "$pid_file")"
  for pid in $pids; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 60); do
    pgrep -f "kafka.Kafka $config" > /dev/null || break
    sleep 0.5
  done
  pkill -9 -f "kafka.Kafka $config" 2>/dev/null || true
  rm -f "$pid_file"
  echo "kafka: stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  serve) serve "${2:?usage: $0 serve CONFIG}" ;;
  *) echo "usage: $0 up|down|serve CONFIG" >&2; exit 2 ;;
esac
