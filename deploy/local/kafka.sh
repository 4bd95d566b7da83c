#!/usr/bin/env bash
# Fetches Apache Kafka from Maven Central (pom.xml beside this file) and runs a single-node
# KRaft broker+controller on 127.0.0.1. No Docker, no tarball.
#
#   kafka.sh start | stop | status | fetch
#
# Environment (all optional):
#   STREAMREC_KAFKA_PORT   broker port              (default 9092; controller = port + 1)
#   STREAMREC_HOME         cache + data root        (default ~/.cache/streamrec)
#   STREAMREC_KAFKA_HEAP   JVM heap                 (default 512m)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${STREAMREC_HOME:-$HOME/.cache/streamrec}"
port="${STREAMREC_KAFKA_PORT:-9092}"
cport=$((port + 1))
heap="${STREAMREC_KAFKA_HEAP:-512m}"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
libs="$home/kafka-$version/libs"
run="$home/kafka-run-$port"
pidfile="$run/kafka.pid"
log="$run/kafka.log"

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is required to fetch Kafka" >&2; exit 1; }
  command -v java >/dev/null || { echo "kafka.sh: Java 17+ is required to run Kafka" >&2; exit 1; }
  echo "kafka.sh: resolving Apache Kafka $version from Maven Central into $libs" >&2
  mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs" >&2
  touch "$libs/.complete"
}

java_cp() { echo "$libs/*"; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sends a Metadata request (API key 3, v4: all topics) and checks that the reply names at
# least one broker: the broker serves metadata, not merely accepts TCP connections.
answers() {
  python3 - "$port" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    client = b"probe"
    body = struct.pack(">hhih", 3, 4, 7, len(client)) + client
    body += struct.pack(">i?", -1, False)  # topics = null (all), allow_auto_topic_creation
    s.sendall(struct.pack(">i", len(body)) + body)
    size = struct.unpack(">i", s.recv(4))[0]
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    corr, _throttle, brokers = struct.unpack(">iii", data[:12])
    sys.exit(0 if corr == 7 and brokers >= 1 else 1)
except Exception:
    sys.exit(1)
PY
}

write_config() {
  mkdir -p "$run/data"
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$run/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
PROPS
}

start() {
  if running; then echo "kafka.sh: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))" >&2; return 0; fi
  if port_open "$port"; then echo "kafka.sh: port $port is taken by another process" >&2; exit 1; fi
  fetch
  write_config
  if [ ! -f "$run/data/meta.properties" ]; then
    cluster="$(java -cp "$(java_cp)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    java -cp "$(java_cp)" kafka.tools.StorageTool format --standalone \
      -t "$cluster" -c "$run/server.properties" >"$run/format.log" 2>&1 \
      || { cat "$run/format.log" >&2; exit 1; }
  fi
  local t0=$SECONDS
  nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "$(java_cp)" kafka.Kafka "$run/server.properties" >"$log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 240); do
    if answers; then
      echo "kafka.sh: broker up on 127.0.0.1:$port in $((SECONDS - t0))s (pid $(cat "$pidfile"))" >&2
      return 0
    fi
    if ! running; then echo "kafka.sh: broker exited; last log lines:" >&2; tail -n 30 "$log" >&2; exit 1; fi
    sleep 0.5
  done
  echo "kafka.sh: broker did not answer within 120s; see $log" >&2
  exit 1
}

stop() {
  if ! running; then rm -f "$pidfile"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "kafka.sh: stopped" >&2
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running && answers; then echo "running on 127.0.0.1:$port"; else echo "stopped"; exit 1; fi ;;
  wipe) stop; rm -rf "$run" ;;
  *) echo "usage: kafka.sh start|stop|status|fetch|wipe" >&2; exit 2 ;;
esac
