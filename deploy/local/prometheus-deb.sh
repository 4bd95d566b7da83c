# Sourced by promtool.sh and prometheus.sh (not run on its own): binaries taken out of
# Debian's `prometheus` package without installing it, so no service is registered or started.

# deb_extract BIN_DIR NAME...: download the package, unpack it in a temporary folder and
# install /usr/bin/NAME of each NAME into BIN_DIR. Fails (status 1) if the first is missing.
deb_extract() {
  local bin_dir="$1"; shift
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || return 1
  local tmp; tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  if ! (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1); then
    # No package lists yet: refresh them (root, or sudo), then try once more.
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q >/dev/null 2>&1 || return 1
    (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) || return 1
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root" || return 1
  [ -x "$tmp/root/usr/bin/$1" ] || return 1
  mkdir -p "$bin_dir"
  local name
  for name in "$@"; do
    if [ -x "$tmp/root/usr/bin/$name" ]; then
      install -m 0755 "$tmp/root/usr/bin/$name" "$bin_dir/$name"
    fi
  done
}
