#!/usr/bin/env bash
# Installs promtool (Prometheus' rule and config checker) for the alert-rule tests
# (tests/unit/test_alert_rules.py, tests/unit/test_dashboard.py); no Prometheus server.
#
#   promtool.sh install | path
#
# install: nothing when promtool is on PATH or already in $STREAMREC_HOME/bin. Otherwise the
#   binary is taken out of Debian's `prometheus` package (apt-get download + dpkg-deb -x, so no
#   server is installed or started and nothing outside $STREAMREC_HOME is written), and where
#   that is impossible it is built with `go install` through the Go module proxy.
# path: prints the promtool that the tests use (exit 1 when there is none).
#
# Environment (all optional):
#   STREAMREC_HOME      where bin/promtool goes         (default ~/.cache/streamrec)
#   PROMTOOL_GO_VERSION module version for the go fallback (default v0.305.0 = Prometheus 3.5.0,
#                       the version of the compose file's prom/prometheus image)
#   PROMTOOL_SOURCE     auto (Debian package, else go), deb or go  (default auto)
set -euo pipefail
# shellcheck source=deploy/local/prometheus-deb.sh
source "$(dirname "${BASH_SOURCE[0]}")/prometheus-deb.sh"

home="${STREAMREC_HOME:-$HOME/.cache/streamrec}"
bin="$home/bin"
go_version="${PROMTOOL_GO_VERSION:-v0.305.0}"
source="${PROMTOOL_SOURCE:-auto}"

found() {
  if command -v promtool >/dev/null 2>&1; then command -v promtool; return 0; fi
  if [ -x "$bin/promtool" ]; then echo "$bin/promtool"; return 0; fi
  return 1
}

from_deb() {
  deb_extract "$bin" promtool
}

from_go() {
  # Not `go install ...@version`: Prometheus' go.mod has replace/exclude directives, which
  # go install refuses outside the main module. So: its module source (through the Go module
  # proxy) is copied and built as the main module.
  command -v go >/dev/null 2>&1 || return 1
  local src tmp
  src="$(go mod download -json "github.com/prometheus/prometheus@$go_version" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -n "$src" ] && [ -d "$src" ] || return 1
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  cp -r "$src" "$tmp/prometheus" && chmod -R u+w "$tmp/prometheus"
  mkdir -p "$bin"
  (cd "$tmp/prometheus" && go build -trimpath \
    -ldflags "-X github.com/prometheus/common/version.Version=$go_version" \
    -o "$bin/promtool" ./cmd/promtool) >&2
}

install_promtool() {
  found >/dev/null && return 0
  echo "promtool.sh: installing promtool into $bin" >&2
  case "$source" in
    deb) from_deb || true ;;
    go) from_go || true ;;
    *)
      from_deb || {
        echo "promtool.sh: no Debian package; building promtool $go_version with go" >&2
        from_go
      } || true
      ;;
  esac
  found >/dev/null || { echo "promtool.sh: promtool install failed" >&2; exit 1; }
  echo "promtool.sh: $("$(found)" --version 2>&1 | head -n 1)" >&2
}

case "${1:-}" in
  install) install_promtool ;;
  path) found ;;
  *) echo "usage: promtool.sh install|path" >&2; exit 2 ;;
esac
