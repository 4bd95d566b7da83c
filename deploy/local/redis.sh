#!/usr/bin/env bash
# Runs a local redis-server on 127.0.0.1 (installed from Debian's package when absent).
#
#   redis.sh start | stop | status | install
#
# Environment (all optional):
#   STREAMREC_REDIS_PORT      port                          (default 6379)
#   STREAMREC_HOME            data root                     (default ~/.cache/streamrec)
#   STREAMREC_REDIS_MAXMEMORY memory cap                    (default 1gb)
#   STREAMREC_REDIS_SECURITY  plaintext (default) | tls
#
# tls (docs/security.md): the port speaks TLS only (--port 0 --tls-port PORT) and the only
# user that can log in is the application's, limited to keys sr:* and to data commands
# (read, write, keyspace, scripting, transactions; nothing of @dangerous: no CONFIG, KEYS,
# FLUSHALL, SHUTDOWN...); the default user is off. Certificates: deploy/local/certs.sh DIR.
#   STREAMREC_REDIS_TLS_CERT_FILE   server certificate (PEM)
#   STREAMREC_REDIS_TLS_KEY_FILE    its private key (PEM)
#   STREAMREC_REDIS_SSL_CAFILE      CA certificate (PEM); also what the worker trusts
#   STREAMREC_REDIS_USERNAME        the application's user (default streamrec)
#   STREAMREC_REDIS_PASSWORD_FILE (or STREAMREC_REDIS_PASSWORD)  its password
# The ACL file ($run/users.acl, mode 600) holds the password's SHA-256, not the password.
# Clients need no certificate of their own (--tls-auth-clients optional).
set -euo pipefail

home="${STREAMREC_HOME:-$HOME/.cache/streamrec}"
port="${STREAMREC_REDIS_PORT:-6379}"
run="$home/redis-run-$port"
pidfile="$run/redis.pid"
security="$(echo "${STREAMREC_REDIS_SECURITY:-plaintext}" | tr '[:upper:]' '[:lower:]')"
user="${STREAMREC_REDIS_USERNAME:-streamrec}"
case "$security" in
  plaintext|tls) ;;
  *) echo "redis.sh: STREAMREC_REDIS_SECURITY must be plaintext or tls (got $security)" >&2
     exit 2 ;;
esac

# The application user's password: the file STREAMREC_REDIS_PASSWORD_FILE, else the variable.
password() {
  if [ -n "${STREAMREC_REDIS_PASSWORD_FILE:-}" ]; then
    tr -d '\r\n' < "$STREAMREC_REDIS_PASSWORD_FILE"
  else
    printf '%s' "${STREAMREC_REDIS_PASSWORD:-}"
  fi
}

check_secure() {
  local name
  for name in STREAMREC_REDIS_TLS_CERT_FILE STREAMREC_REDIS_TLS_KEY_FILE STREAMREC_REDIS_SSL_CAFILE; do
    if [ -z "${!name:-}" ] || [ ! -r "${!name}" ]; then
      echo "redis.sh: tls needs $name (a readable file)" >&2; exit 2
    fi
  done
  if [ -z "$(password)" ]; then
    echo "redis.sh: tls needs STREAMREC_REDIS_PASSWORD_FILE (or STREAMREC_REDIS_PASSWORD)" >&2
    exit 2
  fi
}

install() {
  command -v redis-server >/dev/null && return 0
  echo "redis.sh: installing redis-server (Debian package)" >&2
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q redis-server >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q redis-server >/dev/null
  }
  command -v redis-server >/dev/null || { echo "redis.sh: redis-server install failed" >&2; exit 1; }
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

ping() {
  if [ "$security" = tls ]; then
    REDISCLI_AUTH="$(password)" redis-cli --tls --cacert "$STREAMREC_REDIS_SSL_CAFILE" \
      -h 127.0.0.1 -p "$port" --user "$user" ping 2>/dev/null | grep -q PONG
  else
    redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG
  fi
}

# TLS-only listener and an ACL file: the default user off, the application's user on keys
# sr:* with data commands only.
secure_args() {
  local digest
  digest="$(password | sha256sum | cut -d' ' -f1)"
  (
    umask 077
    printf '%s\n' "user default off" \
      "user $user on #$digest resetkeys ~sr:* resetchannels -@all +@read +@write +@keyspace +@scripting +@connection +@transaction -@dangerous" \
      > "$run/users.acl"
  )
  printf '%s\n' --port 0 --tls-port "$port" --tls-cert-file "$STREAMREC_REDIS_TLS_CERT_FILE" \
    --tls-key-file "$STREAMREC_REDIS_TLS_KEY_FILE" --tls-ca-cert-file "$STREAMREC_REDIS_SSL_CAFILE" \
    --tls-auth-clients optional --aclfile "$run/users.acl"
}

start() {
  if running; then echo "redis.sh: already running on 127.0.0.1:$port" >&2; return 0; fi
  install
  if ping; then echo "redis.sh: port $port is answered by another redis; set REDIS_URL to use it" >&2; exit 1; fi
  mkdir -p "$run"
  local listen=(--port "$port")
  if [ "$security" = tls ]; then
    check_secure
    mapfile -t listen < <(secure_args)
  fi
  redis-server --bind 127.0.0.1 "${listen[@]}" --daemonize yes --pidfile "$pidfile" \
    --dir "$run" --logfile "$run/redis.log" --save "" --appendonly no \
    --maxmemory "${STREAMREC_REDIS_MAXMEMORY:-1gb}" --maxmemory-policy volatile-lru >/dev/null
  for _ in $(seq 1 100); do
    if ping; then echo "redis.sh: redis up on 127.0.0.1:$port" >&2; return 0; fi
    sleep 0.1
  done
  echo "redis.sh: redis did not answer; see $run/redis.log" >&2; exit 1
}

stop() {
  if running && [ "$security" = tls ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true  # SIGTERM: a clean shutdown (no user may SHUTDOWN)
    for _ in $(seq 1 50); do running || break; sleep 0.1; done
    echo "redis.sh: stopped" >&2
  elif running; then
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 1 50); do running || break; sleep 0.1; done
    echo "redis.sh: stopped" >&2
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if ping; then echo "running on 127.0.0.1:$port"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: redis.sh start|stop|status|install" >&2; exit 2 ;;
esac
