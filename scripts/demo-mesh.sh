#!/usr/bin/env bash
# The mesh part of the demo (called by scripts/demo.sh, or alone after a
# build): two pods, each a network namespace with its own cgroup, an app and a
# real Envoy sidecar (uid 1337, Istio-like listeners 15001/15006 with
# original_dst). axon-agent --mesh-mode istio captures the apps' traffic
# without iptables and short-circuits the local socket pairs; the toggle
# turns it on and off while the app's requests keep answering.
#
#   axd-mesh-a (10.245.0.1) ── veth ── axd-mesh-b (10.245.0.2, app on :8080)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${TARGET_DIR:-$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}
AGENT=$TARGET_DIR/debug/axon-agent
AGENTCTL=$TARGET_DIR/debug/agentctl
APP=$TARGET_DIR/debug/mesh-app
ENVOY=${ENVOY:-/usr/local/lib/axon/envoy}
NS_A=axd-mesh-a
NS_B=axd-mesh-b
BPFFS=/sys/fs/bpf/axon-demo-mesh
RUNDIR=/run/axon-demo-mesh
SOCK=$RUNDIR/agent.sock
CG2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
CG=$CG2/axon-demo-mesh
PIDS=()

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
die() { printf 'demo-mesh: error: %s\n' "$*" >&2; exit 1; }
ctl() { "$AGENTCTL" --socket "$SOCK" --bpffs-root "$BPFFS" "$@"; }
show() { printf '\n$ agentctl %s\n' "$*"; ctl "$@"; }

[ "$(id -u)" -eq 0 ] || die "run as root"
for bin in "$AGENT" "$AGENTCTL" "$APP" "$ENVOY"; do [ -x "$bin" ] || die "$bin missing (make build; make deps)"; done

teardown() {
  set +e
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  [ -e "$BPFFS" ] && "$AGENT" --cleanup --bpffs-root "$BPFFS" >/dev/null 2>&1
  rm -rf "$BPFFS" "$RUNDIR"
  for pod in pod-a pod-b; do
    [ -d "$CG/$pod" ] && { echo 1 >"$CG/$pod/cgroup.kill" 2>/dev/null; sleep 0.1; rmdir "$CG/$pod"; }
  done
  [ -d "$CG" ] && { echo 1 >"$CG/cgroup.kill" 2>/dev/null; sleep 0.1; rmdir "$CG"; }
  ip netns del "$NS_A" 2>/dev/null
  ip netns del "$NS_B" 2>/dev/null
}
trap teardown EXIT
teardown 2>/dev/null

# Runs "$@" in pod $1 (a|b): its cgroup, then its network namespace.
in_pod() {
  local pod=$1; shift
  sh -c 'ns=$1; shift; echo $$ > "$0/cgroup.procs" && exec nsenter --net=/run/netns/"$ns" "$@"' "$CG/pod-$pod" "axd-mesh-$pod" "$@"
}

envoy_config() {
  local l
  printf 'admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}\nstatic_resources:\n  listeners:\n'
  for l in outbound:15001 inbound:15006; do
    cat <<YAML
  - name: ${l%%:*}
    address: {socket_address: {address: 0.0.0.0, port_value: ${l##*:}}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: ${l%%:*}
          cluster: passthrough
YAML
  done
  printf '  clusters:\n  - name: passthrough\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 2s\n'
}

requests() {
  printf '\n$ mesh-app probe 10.245.0.2:8080 3 100   # in pod a: the app names who answered and who it saw\n'
  in_pod a "$APP" probe 10.245.0.2:8080 3 100 | python3 -c '
import json, sys
for line in sys.stdin:
    a = json.loads(line)
    print("  ok={} answer={} app saw {} (client socket peer {})".format(a.get("ok"), a.get("answer"), a.get("seen_from"), a.get("peer")))'
}

step "Mesh lab: $NS_A and $NS_B, each with its own cgroup under $CG"
ip netns add "$NS_A"
ip netns add "$NS_B"
ip -n "$NS_A" link add eth0 type veth peer name eth0 netns "$NS_B"
ip -n "$NS_A" addr add 10.245.0.1/24 dev eth0
ip -n "$NS_B" addr add 10.245.0.2/24 dev eth0
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; done
mkdir -p "$CG/pod-a" "$CG/pod-b" "$RUNDIR"
chmod 0777 "$RUNDIR"

step "Starting axon-agent --mesh-mode istio on $CG"
"$AGENT" --bpffs-root "$BPFFS" --cgroup-root "$CG" --api-socket "$SOCK" --state-dir "$RUNDIR/state" \
  --devices none --mesh-mode istio >"$RUNDIR/agent.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do ctl mesh status >/dev/null 2>&1 && break; sleep 0.1; done
ctl mesh status >/dev/null || { cat "$RUNDIR/agent.log" >&2; die "the agent did not start"; }

step "Pod b's app on :8080, and an Envoy sidecar (uid 1337) in each pod"
in_pod b "$APP" serve pod-b 8080 >/dev/null &
PIDS+=($!)
envoy_config >"$RUNDIR/envoy.yaml"
for pod in a b; do
  in_pod "$pod" setpriv --reuid 1337 --regid 1337 --clear-groups "$ENVOY" -c "$RUNDIR/envoy.yaml" \
    --disable-hot-restart --concurrency 1 -l error >"$RUNDIR/envoy-$pod.log" 2>&1 &
  PIDS+=($!)
done
for port in 15001 15006; do
  for ns in "$NS_A" "$NS_B"; do
    for _ in $(seq 100); do nsenter --net=/run/netns/"$ns" bash -c "echo > /dev/tcp/127.0.0.1/$port" 2>/dev/null && break; sleep 0.1; done
  done
done

step "Before: plain path (the app in pod b sees pod a's own address)"
requests

step "Enabling mesh acceleration for both pods (registered with their cgroup and addresses)"
show mesh enable --pod demo/pod-a --cgroup "$CG/pod-a" --ip 10.245.0.1
show mesh enable --pod demo/pod-b --cgroup "$CG/pod-b" --ip 10.245.0.2
requests
echo "(the client's connect() went to 127.0.0.1:15001; pod b's app sees 10.245.0.2, its own Envoy: app → Envoy → Envoy → app)"
show mesh status

step "Disabling: back to the plain path"
show mesh disable --pod demo/pod-a
show mesh disable --pod demo/pod-b
requests
