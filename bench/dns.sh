#!/usr/bin/env bash
# DNS answers side by side: beacon, NSD and Knot serving the same 100 services x 10 instances,
# each with one worker, loaded by dnsperf in the same run. Prints a Markdown table.
#
#   bash bench/dns.sh            # SECS=5 per run, ROUNDS=3 runs per server; WORK=/tmp/beacon-bench
#                                # QUERIES="a srv mix" and TRANSPORTS="udp tcp" choose the rows
#   BEACON_BASELINE=/path/to/older/beacon bash bench/dns.sh
#                                # also an older beacon binary (:5305, registry :5306), a fourth
#                                # server in every round, as `beacon-base`, and a last table of
#                                # this beacon against it: did a change move the DNS figures?
#
# beacon is built with cargo (CARGO_TARGET_DIR is honoured) and run from a copy named
# `beacon-head` (the baseline from one named `beacon-base`): CPU time is summed by process name,
# so another `beacon` running on the machine (a test suite, a second worktree) is not counted.
# It installs dnsperf, nsd and knot with apt-get if they are missing (through the peers'
# script), builds beacon in release mode, generates the data set with
# ../shared/bench/gen-zone.py, serves it from NSD (127.0.0.1:5301) and Knot (:5302) with
# ../shared/bench/peers.sh, and registers the same instances in beacon (:5303, registry :5304)
# through its own protocol. Only loopback is ever used.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$repo/../shared/bench/peers.sh}
work=${WORK:-/tmp/beacon-bench}
secs=${SECS:-5}
rounds=${ROUNDS:-3}
threads=${THREADS:-1}
mkdir -p "$work"
[[ -f $peers ]] || { echo "bench/dns.sh: $peers not found: the peers' scripts sit in ../shared/bench next to the repository; set PEERS=/path/to/peers.sh" >&2; exit 1; }

baseline=${BEACON_BASELINE:-}
[[ -z $baseline || -x $baseline ]] || { echo "bench/dns.sh: BEACON_BASELINE=$baseline is not an executable" >&2; exit 1; }

beacon_pids=()
cleanup() {
  for pid in "${beacon_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  bash "$peers" stop "$work/data" >/dev/null 2>&1 || true
}
trap cleanup EXIT

(cd "$repo" && cargo build --release --quiet)
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$repo/$target
cp "$target/release/beacon" "$work/beacon-head"
bash "$peers" start "$work/data" >/dev/null

# start_beacon NAME DNS_PORT REGISTRY_PORT: serves and registers the zone's data through the
# protocol: service sN, id iI, 10.(N>>8).(N&255).(I+1), port 8000+I, weight 1 -- the same names
# and records gen-zone.py wrote for NSD and Knot.
start_beacon() {
  local name=$1 dns=$2 registry=$3
  "$work/$name" serve --dns "127.0.0.1:$dns" --listen "127.0.0.1:$registry" \
    --threads "$threads" --resolv-conf /dev/null --log-level warn >"$work/$name.out" 2>"$work/$name.err" &
  beacon_pids+=($!)
  for _ in $(seq 50); do grep -q listening "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  python3 "$repo/bench/register.py" "$registry"
  for check in "s7.service.local A" "_s7._tcp.service.local SRV"; do
    a=$(dig +short @127.0.0.1 -p 5301 $check | sort | tr '\n' ' ')
    b=$(dig +short @127.0.0.1 -p "$dns" $check | sort | tr '\n' ' ')
    [[ $a == "$b" ]] || { echo "$name and NSD disagree on $check: '$b' vs '$a'" >&2; exit 1; }
  done
}
start_beacon beacon-head 5303 5304
servers=(nsd:5301:nsd knot:5302:knotd beacon:5303:beacon-head)
if [[ -n $baseline ]]; then
  cp "$baseline" "$work/beacon-base"
  start_beacon beacon-base 5305 5306
  servers+=(beacon-base:5305:beacon-base)
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "command: ${baseline:+BEACON_BASELINE=$baseline }bash bench/dns.sh (SECS=$secs ROUNDS=$rounds, one worker each: NSD server-count 1, Knot udp/tcp-workers 1, beacon --threads $threads)"
echo "beacon: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)${baseline:+; beacon-base: $baseline}"
echo "each figure is the median of $rounds runs per server; the ${#servers[@]} servers take turns within each round, in a rotating order, so drift on a shared machine falls on all of them"
echo
echo "| queries | transport | server | qps | avg latency ms | lost | CPU µs/query | qps vs NSD | qps vs Knot | CPU vs NSD | CPU vs Knot |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
median() { # median FORMAT <<<"values...": the middle value (the mean of the two middle ones)
  tr ' ' '\n' | grep -v '^$' | sort -g | awk -v f="$1\n" '{v[NR] = $1}
    END {printf f, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
names=()
for server in "${servers[@]}"; do names+=("${server%%:*}"); done
comparison=()
for file in ${QUERIES:-a srv mix}; do
  for mode in ${TRANSPORTS:-udp tcp}; do
    declare -A qps=() cpu=() avg=() lost=()
    for ((round = 0; round < rounds; round++)); do
      for ((k = 0; k < ${#servers[@]}; k++)); do
        IFS=: read -r name port proc <<<"${servers[(round + k) % ${#servers[@]}]}"
        out=$(bash "$peers" perf "$port" "$work/data/queries-$file.txt" "$secs" "$mode" "$proc")
        field() { sed -nE "s/.*[[:space:]]$1=([0-9.]+).*/\1/p" <<<" $out"; }
        qps[$name]+=" $(field qps)"
        cpu[$name]+=" $(field cpu_us_per_query)"
        avg[$name]+=" $(field avg_ms)"
        lost[$name]+=" $(field lost)"
      done
    done
    declare -A q=() c=()
    for name in "${names[@]}"; do
      q[$name]=$(median %.0f <<<"${qps[$name]}")
      c[$name]=$(median %.2f <<<"${cpu[$name]}")
    done
    for name in "${names[@]}"; do
      echo "| $file | $mode | $name | ${q[$name]} | $(median %.3f <<<"${avg[$name]}") | $(median %.0f <<<"${lost[$name]}") | ${c[$name]} | $(ratio "${q[$name]}" "${q[nsd]}") | $(ratio "${q[$name]}" "${q[knot]}") | $(ratio "${c[$name]}" "${c[nsd]}") | $(ratio "${c[$name]}" "${c[knot]}") |"
    done
    if [[ -n $baseline ]]; then
      comparison+=("| $file | $mode | ${q[beacon]} | ${q[beacon-base]} | $(ratio "${q[beacon]}" "${q[beacon-base]}") | ${c[beacon]} | ${c[beacon-base]} | $(ratio "${c[beacon]}" "${c[beacon-base]}") | ${qps[beacon]# } | ${qps[beacon-base]# } | ${cpu[beacon]# } | ${cpu[beacon-base]# } |")
    fi
  done
done
if [[ -n $baseline ]]; then
  echo
  echo "this beacon against the baseline (medians above; then each round's figure):"
  echo
  echo "| queries | transport | qps | qps base | qps ratio | CPU µs/query | CPU base | CPU ratio | rounds qps | rounds qps base | rounds CPU | rounds CPU base |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${comparison[@]}"
fi
