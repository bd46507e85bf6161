#!/usr/bin/env bash
# The demo: axon-agent on its embedded default (no Kubernetes) load-balances
# a ClusterIP service with socket-LB, in a lab of network namespaces that this
# script builds and always tears down.
#
#   axd-client (10.244.0.2, no default route)
#        │ veth
#   axd-lab (router: 10.244.0.1, 10.244.1.1, 10.244.2.1, 10.244.3.1)
#        │ veth            │ veth            │ veth
#   axd-be1 10.244.1.2   axd-be2 10.244.2.2   axd-be3 10.244.3.2   (each answers with its name on :8080)
#
# Part 1, ClusterIP: the client runs inside axd-client AND the child cgroup the
# agent attached socket-LB to, so its connect() to 10.96.0.10:80 is sent to a
# backend. The VIP is routed nowhere: without the translation the connect fails
# at once.
#
# Part 2, NodePort: a second agent runs inside axd-lab (the "node") with its
# tc programs on c0, the device facing the client. A plain client process (no
# cgroup, no socket-LB) connects to the node's address 10.244.0.1:30080; the
# node's datapath translates the packets, and each backend reports the client
# address it saw (the client's own: local backends need no SNAT).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-30}
VIP=10.96.0.10
VPORT=80
BACKEND_PORT=8080
LAB=axd-lab
CLIENT=axd-client
BACKENDS=(axd-be1 axd-be2 axd-be3)
BPFFS=/sys/fs/bpf/axon-demo
RUNDIR=/run/axon-demo
SOCK=$RUNDIR/agent.sock
CGROUP=""
STATE=""
AGENT_LOG=""
AGENT_PID=""
NODE_BPFFS=/sys/fs/bpf/axon-demo-node
NODE_SOCK=$RUNDIR/node.sock
NODE_CGROUP=""
NODE_PID=""
NODE_LOG=""
NODEPORT=30080

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces, cgroups and BPF need it)"

# ---------------------------------------------------------------- teardown
teardown() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ] && [ -s "$AGENT_LOG" ]; then
    echo "--- last lines of the agent's log ---"
    tail -n 20 "$AGENT_LOG"
  fi
  step "Tearing the lab down"
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill -TERM "$AGENT_PID"
    for _ in $(seq 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$AGENT_PID" 2>/dev/null
    wait "$AGENT_PID" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ] && [ -s "$NODE_LOG" ]; then
    echo "--- last lines of the node agent's log ---"
    tail -n 20 "$NODE_LOG"
  fi
  if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then
    kill -TERM "$NODE_PID"
    for _ in $(seq 50); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NODE_PID" 2>/dev/null
    wait "$NODE_PID" 2>/dev/null
  fi
  local root
  for root in "$BPFFS" "$NODE_BPFFS"; do
    if [ -n "${AGENT:-}" ] && [ -e "$root" ]; then
      "$AGENT" --cleanup --bpffs-root "$root" >/dev/null 2>&1 || echo "axon-agent --cleanup failed for $root"
    fi
    # Whatever --cleanup left (or an agent that never started) goes too.
    [ -e "$root" ] && rm -rf "$root"
  done
  local ns pids
  for ns in "$CLIENT" "${BACKENDS[@]}" "$LAB"; do
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" || continue
    pids=$(ip netns pids "$ns" 2>/dev/null)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
    ip netns del "$ns"
  done
  local cg
  for cg in "$CGROUP" "$NODE_CGROUP"; do
    if [ -n "$cg" ] && [ -d "$cg" ]; then
      for _ in $(seq 20); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
      [ -d "$cg" ] && echo "could not remove cgroup $cg"
    fi
  done
  rm -rf "$RUNDIR"
  [ -n "$STATE" ] && rm -rf "$STATE"
  [ "$rc" -eq 0 ] && echo "done: nothing left behind" || echo "demo failed (exit $rc)"
  exit "$rc"
}

# A previous run killed before its trap ran leaves the same names behind.
leftovers() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -e "$CLIENT" -e "$LAB" -e "${BACKENDS[0]}" -e "${BACKENDS[1]}" -e "${BACKENDS[2]}" \
    || [ -e "$BPFFS" ] || [ -e "$NODE_BPFFS" ] || [ -e "$RUNDIR" ]
}

# ------------------------------------------------------------------- build
step "Building axon-agent and agentctl"
cd "$ROOT"
cargo build --workspace --bins --quiet
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
AGENT=$TARGET_DIR/debug/axon-agent
AGENTCTL=$TARGET_DIR/debug/agentctl
[ -x "$AGENT" ] && [ -x "$AGENTCTL" ] || die "built binaries not found in $TARGET_DIR/debug"
ctl() { "$AGENTCTL" --socket "$SOCK" --bpffs-root "$BPFFS" "$@"; }
show() { printf '\n$ agentctl %s\n' "$*"; ctl "$@"; }

if leftovers; then
  echo "removing leftovers of an earlier demo"
  AXON_LAB_PREFIXES="axd- axon-demo" bash "$ROOT/scripts/clean-lab.sh"
fi
trap teardown EXIT
trap 'exit 130' INT TERM

# -------------------------------------------------------------------- lab
step "Building the lab: $CLIENT, $LAB (router) and ${BACKENDS[*]}"
awk '$5 == "/sys/fs/bpf" && $9 == "bpf" { f = 1 } END { exit !f }' /proc/self/mountinfo \
  || { mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf; }
ip netns add "$LAB"
ip -n "$LAB" link set lo up
ip netns exec "$LAB" sysctl -qw net.ipv4.ip_forward=1

ip netns add "$CLIENT"
ip -n "$CLIENT" link set lo up
ip -n "$LAB" link add c0 type veth peer name eth0 netns "$CLIENT"
ip -n "$LAB" addr add 10.244.0.1/24 dev c0
ip -n "$LAB" link set c0 up
ip -n "$CLIENT" addr add 10.244.0.2/24 dev eth0
ip -n "$CLIENT" link set eth0 up
# Only the lab is routed: a VIP that socket-LB did not translate is unreachable.
ip -n "$CLIENT" route add 10.244.0.0/16 via 10.244.0.1

i=0
for be in "${BACKENDS[@]}"; do
  i=$((i + 1))
  ip netns add "$be"
  ip -n "$be" link set lo up
  ip -n "$LAB" link add "b$i" type veth peer name eth0 netns "$be"
  ip -n "$LAB" addr add "10.244.$i.1/24" dev "b$i"
  ip -n "$LAB" link set "b$i" up
  ip -n "$be" addr add "10.244.$i.2/24" dev eth0
  ip -n "$be" link set eth0 up
  ip -n "$be" route add default via "10.244.$i.1"
done

step "Starting a server in each backend namespace (answers with its name and the client it saw)"
SERVER_PY='
import socket, sys
name = sys.argv[1]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(128)
while True:
    c, peer = s.accept()
    c.sendall(("%s saw %s:%d\n" % (name, peer[0], peer[1])).encode())
    c.close()
'
i=0
for be in "${BACKENDS[@]}"; do
  i=$((i + 1))
  ip netns exec "$be" python3 -c "$SERVER_PY" "$be" "$BACKEND_PORT" &
  disown # killed with its namespace at teardown; no job notice wanted
  echo "$be: 10.244.$i.2:$BACKEND_PORT"
done
for i in 1 2 3; do
  for _ in $(seq 50); do
    ip netns exec "$CLIENT" python3 -c "import socket; socket.create_connection(('10.244.$i.2', $BACKEND_PORT), 1).close()" 2>/dev/null && break
    sleep 0.1
  done
done

# ------------------------------------------------------------------ agent
CG2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$CG2" ] || die "no cgroup2 mount in /proc/self/mountinfo"
CGROUP=$CG2/axon-demo
mkdir -p "$CGROUP" "$RUNDIR"
STATE=$(mktemp -d /tmp/axon-demo-state.XXXXXX)
AGENT_LOG=$STATE/agent.log

step "Starting axon-agent (socket-LB attached to $CGROUP only)"
echo "axon-agent --bpffs-root $BPFFS --cgroup-root $CGROUP --api-socket $SOCK --state-dir $STATE --devices none"
NO_COLOR=1 "$AGENT" --bpffs-root "$BPFFS" --cgroup-root "$CGROUP" --api-socket "$SOCK" --state-dir "$STATE" --devices none >"$AGENT_LOG" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do
  ctl status >/dev/null 2>&1 && break
  kill -0 "$AGENT_PID" 2>/dev/null || { cat "$AGENT_LOG" >&2; die "axon-agent exited"; }
  sleep 0.1
done
ctl status >/dev/null || { cat "$AGENT_LOG" >&2; die "axon-agent did not answer on $SOCK"; }
echo "agent is up (pid $AGENT_PID)"

step "Declaring the ClusterIP service"
show service update --id 1 --frontend "$VIP:$VPORT" \
  --backends "10.244.1.2:$BACKEND_PORT,10.244.2.2:$BACKEND_PORT,10.244.3.2:$BACKEND_PORT" --type ClusterIP

# ----------------------------------------------------------------- traffic
step "$N requests to $VIP:$VPORT from $CLIENT, inside cgroup axon-demo"
CLIENT_PY='
import collections, socket, sys
n, vip, port, expected = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
counts, failed = collections.Counter(), 0
for i in range(1, n + 1):
    try:
        with socket.create_connection((vip, port), timeout=2) as s:
            peer = "%s:%d" % s.getpeername()[:2]
            data = b""
            while True:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
        name, _, saw = data.decode().strip().partition(" saw ")
        counts[name] += 1
        print("  request %2d: answered by %-8s (getpeername: %s; the backend saw %s)" % (i, name, peer, saw))
    except OSError as e:
        failed += 1
        print("  request %2d: FAILED: %s" % (i, e))
print("\nanswers per backend:")
for name in expected:
    print("  %-8s %3d  %s" % (name, counts[name], "#" * counts[name]))
if failed:
    sys.exit("%d of %d requests failed" % (failed, n))
silent = [b for b in expected if counts[b] == 0]
if silent:
    sys.exit("no answer from %s in %d requests" % (", ".join(silent), n))
'
# Join the cgroup first (socket-LB is attached there), then the client netns;
# nsenter leaves /sys alone, unlike ip netns exec.
sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' _ "$CGROUP" \
  nsenter --net=/run/netns/"$CLIENT" python3 -c "$CLIENT_PY" "$N" "$VIP" "$VPORT" "$(IFS=,; echo "${BACKENDS[*]}")"

# ------------------------------------------------------------------- state
step "What the agent and the kernel hold"
show service list
show bpf lb list
show status

# ---------------------------------------------------------------- NodePort
NODE_CGROUP=$CG2/axon-demo-node
mkdir -p "$NODE_CGROUP"
NODE_LOG=$STATE/node-agent.log
nctl() { "$AGENTCTL" --socket "$NODE_SOCK" --bpffs-root "$NODE_BPFFS" "$@"; }
nshow() { printf '\n$ agentctl %s\n' "$*"; nctl "$@"; }

step "Starting a second axon-agent inside $LAB, serving NodePorts on c0 (tc; XDP best-effort)"
echo "nsenter --net=/run/netns/$LAB axon-agent --bpffs-root $NODE_BPFFS --api-socket $NODE_SOCK --devices c0 --node-name $LAB ..."
# nsenter, not ip netns exec: the agent needs the real /sys (bpffs, cgroup2).
NO_COLOR=1 nsenter --net=/run/netns/"$LAB" "$AGENT" --bpffs-root "$NODE_BPFFS" --cgroup-root "$NODE_CGROUP" \
  --api-socket "$NODE_SOCK" --state-dir "$STATE/node" --devices c0 --node-name "$LAB" >"$NODE_LOG" 2>&1 &
NODE_PID=$!
for _ in $(seq 100); do
  nctl status >/dev/null 2>&1 && break
  kill -0 "$NODE_PID" 2>/dev/null || { cat "$NODE_LOG" >&2; die "the node's axon-agent exited"; }
  sleep 0.1
done
nctl status >/dev/null || { cat "$NODE_LOG" >&2; die "the node's axon-agent did not answer on $NODE_SOCK"; }

step "Declaring a NodePort service on every node address, port $NODEPORT"
nshow service update --id 10 --name demo/web --frontend "0.0.0.0:$NODEPORT" --type NodePort \
  --backends "10.244.1.2:$BACKEND_PORT@$LAB,10.244.2.2:$BACKEND_PORT@$LAB,10.244.3.2:$BACKEND_PORT@$LAB"

step "$N requests to the node address 10.244.0.1:$NODEPORT from $CLIENT (a plain process: packets, not sockets, are translated)"
nsenter --net=/run/netns/"$CLIENT" python3 -c "$CLIENT_PY" "$N" 10.244.0.1 "$NODEPORT" "$(IFS=,; echo "${BACKENDS[*]}")"
echo "(every backend saw 10.244.0.2, the client itself: backends behind this node need no SNAT)"

step "What the node's datapath holds"
nshow service list
nshow bpf lb list
printf '\n$ agentctl bpf ct list | head -n 6   # two entries per connection: as it arrives, and its reply\n'
nctl bpf ct list | head -n 6

# -------------------------------------------------------------------- mesh
step "Mesh acceleration: Envoy sidecars without iptables, and the per-pod toggle (scripts/demo-mesh.sh)"
TARGET_DIR="$TARGET_DIR" bash "$ROOT/scripts/demo-mesh.sh"
