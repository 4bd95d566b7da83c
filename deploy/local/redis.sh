#!/usr/bin/env bash
# Runs a local redis-server on 127.0.0.1 (installed from Debian's package when absent).
#
#   redis.sh start | stop | status | install
#
# Environment (all optional):
#   STREAMREC_REDIS_PORT      port                          (default 6379)
#   STREAMREC_HOME            data root                     (default ~/.cache/streamrec)
#   STREAMREC_REDIS_MAXMEMORY memory cap                    (default 1gb)
set -euo pipefail

home="${STREAMREC_HOME:-$HOME/.cache/streamrec}"
port="${STREAMREC_REDIS_PORT:-6379}"
run="$home/redis-run-$port"
pidfile="$run/redis.pid"

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

ping() { redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; }

start() {
  if running; then echo "redis.sh: already running on 127.0.0.1:$port" >&2; return 0; fi
  install
  if ping; then echo "redis.sh: port $port is answered by another redis; set REDIS_URL to use it" >&2; exit 1; fi
  mkdir -p "$run"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --pidfile "$pidfile" \
    --dir "$run" --logfile "$run/redis.log" --save "" --appendonly no \
    --maxmemory "${STREAMREC_REDIS_MAXMEMORY:-1gb}" --maxmemory-policy volatile-lru >/dev/null
  for _ in $(seq 1 100); do
    if ping; then echo "redis.sh: redis up on 127.0.0.1:$port" >&2; return 0; fi
    sleep 0.1
  done
  echo "redis.sh: redis did not answer; see $run/redis.log" >&2; exit 1
}

stop() {
  if running; then
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
