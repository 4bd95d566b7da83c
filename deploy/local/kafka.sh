#!/usr/bin/env bash
# Fetches Apache Kafka from Maven Central (pom.xml beside this file) and runs a single-node
# KRaft broker+controller on 127.0.0.1. No Docker, no tarball.
#
#   kafka.sh start | stop | status | fetch | wipe
#
# Environment (all optional):
#   STREAMREC_KAFKA_PORT   broker port              (default 9092; controller = port + 1)
#   STREAMREC_HOME         cache + data root        (default ~/.cache/streamrec)
#   STREAMREC_KAFKA_HEAP   JVM heap                 (default 512m)
#   STREAMREC_KAFKA_SECURITY  plaintext (default) | sasl_ssl
#
# sasl_ssl (docs/security.md): the broker port is a SASL_SSL listener (TLS, SCRAM-SHA-512
# logins) and the only client listener; the controller listener stays PLAINTEXT on
# 127.0.0.1:port+1 (one node, loopback only). Two SCRAM users are created when the data
# directory is formatted: the broker's own (inter-broker) user and the application's.
# Certificates: deploy/local/certs.sh DIR makes throwaway ones. Required in this mode:
#   STREAMREC_KAFKA_SSL_KEYSTORE                PKCS#12 keystore: the broker's key + chain
#   STREAMREC_KAFKA_SSL_KEYSTORE_PASSWORD_FILE  file holding the keystore's password
#   STREAMREC_KAFKA_SSL_CAFILE                  CA certificate (PEM) the broker trusts
#   STREAMREC_KAFKA_ADMIN_PASSWORD_FILE         inter-broker user's password (user:
#                                               STREAMREC_KAFKA_ADMIN_USERNAME, default admin)
#   STREAMREC_KAFKA_USERNAME + STREAMREC_KAFKA_PASSWORD_FILE (or STREAMREC_KAFKA_PASSWORD)
#                                               the application's user (the same variables
#                                               the worker reads)
# Passwords are read from files (or the environment), never from arguments; they end up in
# $run/server.properties (mode 600) and briefly on the format command line. A data directory
# formatted in one mode refuses to start in the other: `kafka.sh wipe` first.
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
security="$(echo "${STREAMREC_KAFKA_SECURITY:-plaintext}" | tr '[:upper:]' '[:lower:]')"
case "$security" in
  plaintext|sasl_ssl) ;;
  *) echo "kafka.sh: STREAMREC_KAFKA_SECURITY must be plaintext or sasl_ssl (got $security)" >&2
     exit 2 ;;
esac

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
# least one broker: the broker serves metadata, not merely accepts TCP connections. In
# sasl_ssl mode the probe first makes a verified TLS connection and logs in as the admin user
# (SaslHandshake v1 + SaslAuthenticate v0, SCRAM-SHA-512), so it also proves the login works.
answers() {
  if [ "$security" = sasl_ssl ]; then
    PROBE_CAFILE="$STREAMREC_KAFKA_SSL_CAFILE" PROBE_USER="$admin_user" \
      PROBE_PASSWORD="$(secret STREAMREC_KAFKA_ADMIN_PASSWORD)" probe
  else
    probe
  fi
}

probe() {
  python3 - "$port" <<'PY'
import base64, hashlib, hmac, os, secrets, socket, ssl, struct, sys

port = int(sys.argv[1])
client = b"probe"


def call(s, api, version, corr, body):
    head = struct.pack(">hhih", api, version, corr, len(client)) + client
    s.sendall(struct.pack(">i", len(head) + len(body)) + head + body)
    size = struct.unpack(">i", recv(s, 4))[0]
    data = recv(s, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise RuntimeError("correlation id mismatch")
    return data[4:]


def recv(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
    return data


def authenticate(s, user, password):
    """SCRAM-SHA-512 (RFC 5802) over Kafka's SaslAuthenticate."""
    mech = b"SCRAM-SHA-512"
    reply = call(s, 17, 1, 1, struct.pack(">h", len(mech)) + mech)
    if struct.unpack(">h", reply[:2])[0] != 0:
        raise RuntimeError("SCRAM-SHA-512 not enabled")

    def step(corr, payload):
        reply = call(s, 36, 0, corr, struct.pack(">i", len(payload)) + payload)
        error, mlen = struct.unpack(">hh", reply[:4])
        if error:
            raise RuntimeError("authentication failed")
        rest = reply[4 + max(mlen, 0):]
        return rest[4 : 4 + struct.unpack(">i", rest[:4])[0]].decode()

    name = user.replace("=", "=3D").replace(",", "=2C")
    nonce = secrets.token_urlsafe(18)
    first = f"n={name},r={nonce}"
    server_first = step(2, f"n,,{first}".encode())
    fields = dict(kv.split("=", 1) for kv in server_first.split(","))
    if not fields["r"].startswith(nonce):
        raise RuntimeError("bad server nonce")
    salted = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    bare = f"c=biws,r={fields['r']}"
    message = f"{first},{server_first},{bare}".encode()
    signature = hmac.new(hashlib.sha512(client_key).digest(), message, "sha512").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    server_final = step(3, f"{bare},p={proof}".encode())
    server_key = hmac.new(salted, b"Server Key", "sha512").digest()
    expected = base64.b64encode(hmac.new(server_key, message, "sha512").digest()).decode()
    if server_final != f"v={expected}":
        raise RuntimeError("server signature mismatch")


try:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    cafile = os.environ.get("PROBE_CAFILE")
    if cafile:
        s = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname="127.0.0.1")
        authenticate(s, os.environ["PROBE_USER"], os.environ["PROBE_PASSWORD"])
    body = struct.pack(">i?", -1, False)  # topics = null (all), allow_auto_topic_creation
    data = call(s, 3, 4, 7, body)
    _throttle, brokers = struct.unpack(">ii", data[:8])
    sys.exit(0 if brokers >= 1 else 1)
except Exception:
    sys.exit(1)
PY
}

# The value of secret NAME: the file named by NAME_FILE, else the variable NAME itself.
secret() {
  local file_var="${1}_FILE"
  if [ -n "${!file_var:-}" ]; then
    tr -d '\r\n' < "${!file_var}"
  else
    printf '%s' "${!1:-}"
  fi
}

admin_user="${STREAMREC_KAFKA_ADMIN_USERNAME:-admin}"

# Refuses to go on without what sasl_ssl needs, naming the missing variable.
check_secure() {
  local name
  for name in STREAMREC_KAFKA_SSL_KEYSTORE STREAMREC_KAFKA_SSL_KEYSTORE_PASSWORD_FILE \
      STREAMREC_KAFKA_SSL_CAFILE STREAMREC_KAFKA_ADMIN_PASSWORD_FILE; do
    if [ -z "${!name:-}" ] || [ ! -r "${!name}" ]; then
      echo "kafka.sh: sasl_ssl needs $name (a readable file)" >&2; exit 2
    fi
  done
  if [ -z "${STREAMREC_KAFKA_USERNAME:-}" ] || [ -z "$(secret STREAMREC_KAFKA_PASSWORD)" ]; then
    echo "kafka.sh: sasl_ssl needs STREAMREC_KAFKA_USERNAME and STREAMREC_KAFKA_PASSWORD_FILE" \
      "(or STREAMREC_KAFKA_PASSWORD)" >&2
    exit 2
  fi
  local value
  for value in "$admin_user" "$STREAMREC_KAFKA_USERNAME" "$(secret STREAMREC_KAFKA_ADMIN_PASSWORD)" \
      "$(secret STREAMREC_KAFKA_PASSWORD)"; do
    case "$value" in
      *'"'*|*'\'*) echo "kafka.sh: SCRAM user names and passwords must not contain \" or \\" >&2
             exit 2 ;;
    esac
  done
}

write_config() {
  mkdir -p "$run/data"
  if [ "$security" = sasl_ssl ]; then write_secure_config; return; fi
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
PROPS
  common_config >> "$run/server.properties"
}

common_config() {
  cat <<PROPS
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

# One SASL_SSL listener for clients and the broker itself (its SCRAM user from the JAAS line),
# certificates from a PKCS#12 keystore, the CA as a PEM truststore. The file holds secrets.
write_secure_config() {
  check_secure
  local admin_password; admin_password="$(secret STREAMREC_KAFKA_ADMIN_PASSWORD)"
  (
    umask 077
    cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=SASL_SSL://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=SASL_SSL://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$admin_user" password="$admin_password";
ssl.keystore.type=PKCS12
ssl.keystore.location=$STREAMREC_KAFKA_SSL_KEYSTORE
ssl.keystore.password=$(tr -d '\r\n' < "$STREAMREC_KAFKA_SSL_KEYSTORE_PASSWORD_FILE")
ssl.truststore.type=PEM
ssl.truststore.location=$STREAMREC_KAFKA_SSL_CAFILE
ssl.client.auth=none
ssl.enabled.protocols=TLSv1.3,TLSv1.2
PROPS
    common_config >> "$run/server.properties"
  )
}

# Formats the data directory once; in sasl_ssl mode with both SCRAM users. The mode is
# recorded so that a directory formatted without users is not started as sasl_ssl.
format() {
  if [ -f "$run/data/meta.properties" ]; then
    local was; was="$(cat "$run/security" 2>/dev/null || echo plaintext)"
    if [ "$was" != "$security" ]; then
      echo "kafka.sh: $run was formatted for $was, not $security; run kafka.sh wipe first" >&2
      exit 2
    fi
    return 0
  fi
  local scram=()
  if [ "$security" = sasl_ssl ]; then
    scram=(--add-scram "SCRAM-SHA-512=[name=\"$admin_user\",password=\"$(secret STREAMREC_KAFKA_ADMIN_PASSWORD)\"]"
           --add-scram "SCRAM-SHA-512=[name=\"$STREAMREC_KAFKA_USERNAME\",password=\"$(secret STREAMREC_KAFKA_PASSWORD)\"]")
  fi
  cluster="$(java -cp "$(java_cp)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
  java -cp "$(java_cp)" kafka.tools.StorageTool format --standalone \
    -t "$cluster" -c "$run/server.properties" "${scram[@]}" >"$run/format.log" 2>&1 \
    || { cat "$run/format.log" >&2; exit 1; }
  echo "$security" > "$run/security"
}

start() {
  if running; then echo "kafka.sh: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))" >&2; return 0; fi
  if port_open "$port"; then echo "kafka.sh: port $port is taken by another process" >&2; exit 1; fi
  fetch
  write_config
  format
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
