#!/usr/bin/env bash
# DNS answers side by side: beacon, NSD and Knot serving the same 100 services x 10 instances,
# each with one worker, loaded by dnsperf in the same run. Prints a Markdown table.
#
#   bash bench/dns.sh            # SECS=5 per run, ROUNDS=3 runs per server; WORK=/tmp/beacon-bench
#                                # QUERIES="a srv mix" and TRANSPORTS="udp tcp" choose the rows
#
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

cleanup() {
  [[ -n ${beacon_pid:-} ]] && kill "$beacon_pid" 2>/dev/null || true
  bash "$peers" stop "$work/data" >/dev/null 2>&1 || true
}
trap cleanup EXIT

(cd "$repo" && cargo build --release --quiet)
bash "$peers" start "$work/data" >/dev/null

"$repo/target/release/beacon" serve --dns 127.0.0.1:5303 --listen 127.0.0.1:5304 \
  --threads "$threads" --resolv-conf /dev/null --log-level warn >"$work/beacon.out" 2>"$work/beacon.err" &
beacon_pid=$!
for _ in $(seq 50); do grep -q listening "$work/beacon.out" 2>/dev/null && break; sleep 0.1; done

# The zone's data, registered through the protocol: service sN, id iI, 10.(N>>8).(N&255).(I+1),
# port 8000+I, weight 1 -- the same names and records gen-zone.py wrote for NSD and Knot.
python3 "$repo/bench/register.py" 5304
for check in "s7.service.local A" "_s7._tcp.service.local SRV"; do
  a=$(dig +short @127.0.0.1 -p 5301 $check | sort | tr '\n' ' ')
  b=$(dig +short @127.0.0.1 -p 5303 $check | sort | tr '\n' ' ')
  [[ $a == "$b" ]] || { echo "beacon and NSD disagree on $check: '$b' vs '$a'" >&2; exit 1; }
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "command: bash bench/dns.sh (SECS=$secs ROUNDS=$rounds, one worker each: NSD server-count 1, Knot udp/tcp-workers 1, beacon --threads $threads)"
echo "each figure is the median of $rounds runs per server; the three servers take turns within each round, in a rotating order, so drift on a shared machine falls on all of them"
echo
echo "| queries | transport | server | qps | avg latency ms | lost | CPU µs/query | qps vs NSD | qps vs Knot | CPU vs NSD | CPU vs Knot |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
median() { # median FORMAT <<<"values...": the middle value (the mean of the two middle ones)
  tr ' ' '\n' | grep -v '^$' | sort -g | awk -v f="$1\n" '{v[NR] = $1}
    END {printf f, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
servers=(nsd:5301:nsd knot:5302:knotd beacon:5303:beacon)
for file in ${QUERIES:-a srv mix}; do
  for mode in ${TRANSPORTS:-udp tcp}; do
    declare -A qps=() cpu=() avg=() lost=()
    for ((round = 0; round < rounds; round++)); do
      for ((k = 0; k < 3; k++)); do
        IFS=: read -r name port proc <<<"${servers[(round + k) % 3]}"
        out=$(bash "$peers" perf "$port" "$work/data/queries-$file.txt" "$secs" "$mode" "$proc")
        field() { sed -nE "s/.*[[:space:]]$1=([0-9.]+).*/\1/p" <<<" $out"; }
        qps[$name]+=" $(field qps)"
        cpu[$name]+=" $(field cpu_us_per_query)"
        avg[$name]+=" $(field avg_ms)"
        lost[$name]+=" $(field lost)"
      done
    done
    declare -A q=() c=()
    for name in nsd knot beacon; do
      q[$name]=$(median %.0f <<<"${qps[$name]}")
      c[$name]=$(median %.2f <<<"${cpu[$name]}")
    done
    for name in nsd knot beacon; do
      echo "| $file | $mode | $name | ${q[$name]} | $(median %.3f <<<"${avg[$name]}") | $(median %.0f <<<"${lost[$name]}") | ${c[$name]} | $(ratio "${q[$name]}" "${q[nsd]}") | $(ratio "${q[$name]}" "${q[knot]}") | $(ratio "${c[$name]}" "${c[nsd]}") | $(ratio "${c[$name]}" "${c[knot]}") |"
    done
  done
done
