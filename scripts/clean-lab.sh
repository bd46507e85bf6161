#!/usr/bin/env bash
# Removes what interrupted tests and demos may have left behind, and only
# that: network namespaces, cgroups, bpffs pins, links and run dirs whose
# names carry a lab prefix (tests: axt-, demo: axd- and axon-demo). Processes
# are stopped only when they belong to such a lab (inside its namespace or
# cgroup, or an axon-agent serving a lab bpffs dir).
set -uo pipefail

read -r -a prefixes <<<"${AXON_LAB_PREFIXES:-axt- axd- axon-demo}"

log() { printf 'clean-lab: %s\n' "$*"; }

has_prefix() {
  local name=$1 p
  for p in "${prefixes[@]}"; do
    [[ $name == "$p"* ]] && return 0
  done
  return 1
}

mount_of() { awk -v t="$1" '$9 == t { print $5; exit }' /proc/self/mountinfo; }

# 1. Agents serving a lab's bpffs dir: stop them first, so nothing re-pins.
agents=()
for cmdline in /proc/[0-9]*/cmdline; do
  pid=${cmdline#/proc/}; pid=${pid%/cmdline}
  [ "$pid" = "$$" ] && continue
  # The process may be gone by now: that is no error.
  args=$(tr '\0' '\n' 2>/dev/null <"$cmdline") || continue
  [[ $(head -n1 <<<"$args") == *axon-agent ]] || continue
  root=$(grep -A1 -x -- '--bpffs-root' <<<"$args" | tail -n +2 | head -n1)
  if [ -n "$root" ] && has_prefix "$(basename "$root")"; then
    log "stopping axon-agent $pid (--bpffs-root $root)"
    kill -TERM "$pid" 2>/dev/null && agents+=("$pid")
  fi
done
for pid in "${agents[@]}"; do
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
done

# 2. Network namespaces, with whatever still runs inside them.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
  has_prefix "$ns" || continue
  pids=$(ip netns pids "$ns" 2>/dev/null)
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
  log "deleting netns $ns"
  ip netns del "$ns" 2>/dev/null || log "could not delete netns $ns"
done

# 3. Links a test may have left in the root namespace before moving them.
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  has_prefix "$link" || continue
  ip link show "$link" >/dev/null 2>&1 || continue # gone with its veth peer
  log "deleting link $link"
  ip link del "$link" 2>/dev/null
done

# 4. cgroups under the cgroup2 mount: kill their processes, remove deepest first.
cg2=$(mount_of cgroup2)
if [ -n "$cg2" ]; then
  for dir in $(find "$cg2" -mindepth 1 -maxdepth 2 -type d 2>/dev/null); do
    has_prefix "$(basename "$dir")" || continue
    log "removing cgroup $dir"
    if [ -w "$dir/cgroup.kill" ]; then
      echo 1 >"$dir/cgroup.kill" 2>/dev/null
    else
      for pid in $(cat "$dir"/cgroup.procs "$dir"/*/cgroup.procs 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    fi
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
      [ -d "$dir" ] || break
      sleep 0.2
    done
    [ -d "$dir" ] && log "could not remove cgroup $dir"
  done
fi

# 5. bpffs pins (maps and links: removing a link pin detaches its program
#    once no process holds it).
bpffs=$(mount_of bpf)
if [ -n "$bpffs" ]; then
  for dir in "$bpffs"/*; do
    [ -e "$dir" ] && has_prefix "$(basename "$dir")" || continue
    log "removing pins $dir"
    rm -rf "$dir"
  done
fi

# 6. Run dirs (API sockets).
for dir in /run/*; do
  [ -e "$dir" ] && has_prefix "$(basename "$dir")" || continue
  log "removing $dir"
  rm -rf "$dir"
done
exit 0
