#!/usr/bin/env bash
# DNS answers side by side: beacon, NSD and Knot serving the same 100 services x 10 instances,
# each with one worker, loaded by dnsperf in the same run. Prints a Markdown table.
#
#   bash bench/dns.sh            # SECS=5 per run; WORK=/tmp/beacon-bench
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
threads=${THREADS:-1}
mkdir -p "$work"

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
python3 - <<'PY'
import json, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for n in range(100):
    for i in range(10):
        req = {"op": "register", "service": f"s{n}", "id": f"i{i}", "port": 8000 + i,
               "address": f"10.{(n >> 8) & 255}.{n & 255}.{i + 1}", "ttl_ms": 3600000}
        s.sendto(json.dumps(req).encode(), ("127.0.0.1", 5304))
        reply = json.loads(s.recv(65535))
        assert reply["ok"], reply
PY
for check in "s7.service.local A" "_s7._tcp.service.local SRV"; do
  a=$(dig +short @127.0.0.1 -p 5301 $check | sort | tr '\n' ' ')
  b=$(dig +short @127.0.0.1 -p 5303 $check | sort | tr '\n' ' ')
  [[ $a == "$b" ]] || { echo "beacon and NSD disagree on $check: '$b' vs '$a'" >&2; exit 1; }
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "command: bash bench/dns.sh (SECS=$secs, one worker each: NSD server-count 1, Knot udp/tcp-workers 1, beacon --threads $threads)"
echo
echo "| queries | transport | server | qps | avg latency ms | lost | CPU µs/query | qps vs NSD | qps vs Knot | CPU vs NSD | CPU vs Knot |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for file in a srv mix; do
  for mode in udp tcp; do
    declare -A qps cpu line
    for server in nsd:5301:nsd knot:5302:knotd beacon:5303:beacon; do
      IFS=: read -r name port proc <<<"$server"
      out=$(bash "$peers" perf "$port" "$work/data/queries-$file.txt" "$secs" "$mode" "$proc")
      qps[$name]=$(sed -E 's/.*qps=([0-9]+).*/\1/' <<<"$out")
      cpu[$name]=$(sed -E 's/.*cpu_us_per_query=([0-9.]+).*/\1/' <<<"$out")
      line[$name]=$(awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]}} END {printf "%s | %s | %s | %s", v["qps"], v["avg_ms"], v["lost"], v["cpu_us_per_query"]}' <<<"$out")
    done
    for name in nsd knot beacon; do
      ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
      echo "| $file | $mode | $name | ${line[$name]} | $(ratio "${qps[$name]}" "${qps[nsd]}") | $(ratio "${qps[$name]}" "${qps[knot]}") | $(ratio "${cpu[$name]}" "${cpu[nsd]}") | $(ratio "${cpu[$name]}" "${cpu[knot]}") |"
    done
  done
done
