#!/usr/bin/env bash
# Where axon-agent's memory goes with N services (default 100000): RSS idle,
# after one bulk apply, after glibc's malloc_trim(0) (what is live versus what
# the allocator merely kept), after a restart that restores the same services
# from the store, and, with --heaptrack, the heap's top consumers at the
# apply's peak and at steady state. Root only; everything it creates is named
# axbp-<pid> and removed at exit.
#
#   bench/scripts/profile-agent-memory.sh [--heaptrack] [N]
#
# Needs: curl; gdb for the malloc_trim step; heaptrack and python3 for
# --heaptrack. Binaries from $TARGET_DIR/release (default: target/release).
set -euo pipefail

HEAPTRACK=0
if [ "${1:-}" = "--heaptrack" ]; then HEAPTRACK=1; shift; fi
N=${1:-100000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${TARGET_DIR:-$ROOT/target}/release
AGENT=$BIN/axon-agent
BENCH=$BIN/axon-bench
NAME=axbp-$$
WORK=$(mktemp -d "/tmp/$NAME.XXXX")
CG=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)/$NAME
BPFFS=/sys/fs/bpf/$NAME
SOCK=$WORK/agent.sock
FLAGS=(--bpffs-root "$BPFFS" --cgroup-root "$CG" --api-socket "$SOCK" --state-dir "$WORK/state"
  --lb-service-map-max 400000 --lb-backend-map-max 262144 --lb-revnat-map-max 131072 --devices none)
PID=

cleanup() {
  set +e # every step runs, whatever the one before it returned
  if [ -n "$PID" ]; then
    kill -KILL "$PID" 2>/dev/null
    while kill -0 "$PID" 2>/dev/null; do sleep 0.1; done
  fi
  "$AGENT" --cleanup --bpffs-root "$BPFFS" >/dev/null 2>&1 || true
  rm -rf "$BPFFS" "$WORK"
  rmdir "$CG" 2>/dev/null || true
}
trap cleanup EXIT

[ -x "$AGENT" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release -p axon-agent -p axon-bench" >&2; exit 1; }
mkdir -p "$CG"
"$BENCH" rules axon --size "$N" >"$WORK/apply.json"

# Starts the agent (under heaptrack when $1 names an output) and waits for healthz.
start() {
  if [ -n "${1:-}" ]; then
    heaptrack -o "$1" "$AGENT" "${FLAGS[@]}" >>"$WORK/agent.log" 2>&1 &
  else
    "$AGENT" "${FLAGS[@]}" >>"$WORK/agent.log" 2>&1 &
  fi
  for _ in $(seq 600); do
    curl -sf --unix-socket "$SOCK" http://axon/v1/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
  PID=
  for p in $(pgrep -x axon-agent || true); do
    if grep -qa -- "$NAME" "/proc/$p/cmdline" 2>/dev/null; then PID=$p; break; fi
  done
  [ -n "$PID" ] || { echo "agent did not start; log:" >&2; tail "$WORK/agent.log" >&2; exit 1; }
}

stop() {
  kill -TERM "$PID"
  while kill -0 "$PID" 2>/dev/null; do sleep 0.1; done
  PID=
}

rss() { awk '/^(VmRSS|VmHWM|RssAnon):/ { printf "%s %.1f MiB  ", $1, $2 / 1024 }' "/proc/$PID/status"; echo; }

trim() {
  if command -v gdb >/dev/null; then
    gdb -p "$PID" -batch -ex 'call (int)malloc_trim(0)' >/dev/null 2>&1
    echo "  + malloc_trim(0):  $(rss)"
  fi
}

apply() {
  curl -s -o /dev/null -w "  POST /v1/services/apply ($N services): HTTP %{http_code} in %{time_total} s\n" \
    --unix-socket "$SOCK" -X POST -H 'content-type: application/json' --data-binary "@$WORK/apply.json" \
    http://axon/v1/services/apply
}

echo "axon-agent memory with $N services ($(stat -c %s "$WORK/apply.json") bytes of apply JSON)"
start
echo "  idle:               $(rss)"
apply
echo "  after apply:        $(rss)"
trim
stop
start
echo "  after restart:      $(rss)"
trim
stop

if [ "$HEAPTRACK" = 1 ]; then
  command -v heaptrack >/dev/null && command -v python3 >/dev/null || { echo "--heaptrack needs heaptrack and python3" >&2; exit 1; }
  "$AGENT" --cleanup --bpffs-root "$BPFFS" >/dev/null 2>&1 || true
  rm -rf "$WORK/state"
  start "$WORK/ht-apply"
  apply
  stop
  start "$WORK/ht-steady"
  sleep 1
  kill -KILL "$PID"; wait "$PID" 2>/dev/null || true; PID=
  sleep 2
  heaptrack_print -f "$WORK"/ht-apply.*zst --flamegraph-cost-type peak -F "$WORK/peak.txt" >/dev/null 2>&1
  heaptrack_print -f "$WORK"/ht-steady.*zst --flamegraph-cost-type leaked -F "$WORK/live.txt" >/dev/null 2>&1
  python3 - "$WORK/peak.txt" "$WORK/live.txt" <<'EOF'
import collections, re, sys
def demangle(f):
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$u7b$", "{"), ("$u7d$", "}"), ("$RF$", "&"), ("..", "::")):
        f = f.replace(a, b)
    return re.sub(r"::h[0-9a-f]{16}", "", f)

titles = ["heap at the apply's peak", "live heap at steady state (after restart)"]
for title, path in zip(titles, sys.argv[1:]):
    agg, total = collections.Counter(), 0
    for line in open(path):
        stack, _, cost = line.rstrip().rpartition(" ")
        cost = int(cost)
        total += cost
        frames = [demangle(f) for f in stack.split(";")]
        ours = [f for f in frames if re.search(r"axon_agent|axon_api", f)]
        inner = next((f for f in reversed(frames) if re.search(r"axon_|serde_json::value|http_body_util|redb", f)), frames[-1])
        agg[" <- ".join(f[:70] for f in ([inner] if inner not in ours[-2:] else []) + ours[-2:][::-1])] += cost
    print(f"\n{title}: {total / 1e6:.1f} MB")
    for key, cost in agg.most_common(8):
        print(f"  {cost / 1e6:7.1f} MB  {key}")
EOF
fi
