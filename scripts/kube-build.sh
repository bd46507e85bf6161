#!/usr/bin/env bash
# Builds a real kube-apiserver, kube-controller-manager, kube-proxy and kubectl from Debian bookworm's own
# `kubernetes` source package (1.20.2) and caches them, so the Kubernetes tests and benchmark run against the
# real thing. No prebuilt Kubernetes binary is reachable from these machines; Debian's source and Go are.
#
#   scripts/kube-build.sh            # prints the cache dir holding the binaries (builds once, ~6 min cold)
#
# The system's apt sources are left alone: `apt-get source` runs with a private sources list and state dir.
set -euo pipefail

CACHE="${AXON_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/axon/kubernetes-1.20.2}"
BINS=(kube-apiserver kube-controller-manager kube-proxy kubectl)

have_all() { for b in "${BINS[@]}"; do [[ -x "$CACHE/bin/$b" ]] || return 1; done; }
if have_all; then echo "$CACHE/bin"; exit 0; fi

log() { echo "kube-build: $*" >&2; }
export DEBIAN_FRONTEND=noninteractive
need=()
for p in golang-go rsync dpkg-dev golang-github-modern-go-reflect2-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get install -y -q "${need[@]}" >&2 || { apt-get update -q >&2 && apt-get install -y -q "${need[@]}" >&2; }
fi

work="$CACHE.build"
rm -rf "$work" && mkdir -p "$work/apt/lists/partial" "$work/apt/archives/partial" "$work/src"
cat >"$work/apt/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
SRC
apt_private=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache::Archives=$work/apt/archives" -o "APT::Sandbox::User=root")
log "fetching Debian's kubernetes source"
apt-get "${apt_private[@]}" update -q >&2
(cd "$work/src" && apt-get "${apt_private[@]}" source --download-only kubernetes >&2 &&
  dpkg-source --no-check -x ./kubernetes_*.dsc kubernetes >&2)

src="$work/src/kubernetes"
# The vendored reflect2 1.0.1 faults under Go >= 1.18 (`fatal error: fault` once a CRD exists); Debian's
# packaged 1.0.2 is the fixed release.
r2="$src/vendor/github.com/modern-go/reflect2"
rm -rf "$r2" && mkdir -p "$r2"
cp -a /usr/share/gocode/src/github.com/modern-go/reflect2/. "$r2/"

log "building ${BINS[*]} (GOPATH mode)"
gopath="$work/gopath"
mkdir -p "$gopath/src/k8s.io"
ln -sfn "$src" "$gopath/src/k8s.io/kubernetes"
what=$(printf 'cmd/%s ' "${BINS[@]}")
(cd "$gopath/src/k8s.io/kubernetes" &&
  GOPATH="$gopath" GO111MODULE=off GOFLAGS=-mod=vendor GOCACHE="$work/gocache" \
    KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean \
    make WHAT="$what" >&2)

mkdir -p "$CACHE/bin"
for b in "${BINS[@]}"; do
  cp "$src/_output/bin/$b" "$CACHE/bin/$b" 2>/dev/null || cp "$src/_output/local/bin/linux/amd64/$b" "$CACHE/bin/$b"
done
rm -rf "$work"
have_all
echo "$CACHE/bin"
