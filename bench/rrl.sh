#!/usr/bin/env bash
# Response rate limiting (issue 15 point 9), both questions in one command:
#
#   bash bench/rrl.sh        # SECS=5 per dnsperf run, ROUNDS=5, WORK=/tmp/beacon-bench-rrl
#
# 1. A forged-source flood (cargo bench --bench rrl): SRV queries from 64 sources in one /24 of
#    loopback, at several rates, with rate limiting off and on; bytes in, bytes out, and a
#    legitimate client on another /24.
# 2. What the limiter costs normal traffic: bench/dns.sh's data set and dnsperf load (100
#    services x 10 instances, 4 clients x 64 outstanding, A, SRV and the mix, over UDP) against
#    two beacons of the same build, one worker each, taking turns in rotating rounds: `off`
#    (responses_per_second = 0) and `on` (loopback not exempt, and a rate dnsperf never
#    reaches, so every response pays for the accounting and none is limited). CPU per query is
#    the server's user+system time over the answered queries (../shared/bench/peers.sh perf),
#    the median of the rounds. TCP is never limited, so it is not measured here.
#
# Each beacon runs from a copy named beacon-rrl-off / beacon-rrl-on: peers.sh sums CPU time by
# process name, so no other beacon on the machine is counted. Ports 5311-5316, loopback only.
# Needs dnsperf (peers.sh installs it with nsd and knot if missing), dig and python3.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_BENCH:-$repo/../shared/bench}
work=${WORK:-/tmp/beacon-bench-rrl}
secs=${SECS:-5}
rounds=${ROUNDS:-5}
mkdir -p "$work"
[[ -f $shared/peers.sh ]] || { echo "bench/rrl.sh: $shared/peers.sh not found; set SHARED_BENCH" >&2; exit 1; }
command -v dnsperf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf >/dev/null; }

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

echo "## 1. A forged-source flood (cargo bench --bench rrl)"
echo
(cd "$repo" && cargo bench --quiet --bench rrl 2>/dev/null)
echo

target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$repo/$target
[[ -f $work/data/queries-a.txt ]] || python3 "$shared/gen-zone.py" "$work/data" >/dev/null

cat >"$work/off.toml" <<'TOML'
[dns.rate_limit]
responses_per_second = 0
TOML
cat >"$work/on.toml" <<'TOML'
[dns.rate_limit]
responses_per_second = 10000000
exempt = []
TOML
start() { # start NAME DNS_PORT REGISTRY_PORT CONFIG METRICS_PORT
  cp "$target/release/beacon" "$work/$1"
  "$work/$1" serve --config "$4" --dns "127.0.0.1:$2" --listen "127.0.0.1:$3" --metrics "127.0.0.1:$5" \
    --threads 1 --resolv-conf /dev/null --log-level error >"$work/$1.out" 2>"$work/$1.err" &
  pids+=($!)
  for _ in $(seq 50); do grep -q listening "$work/$1.out" 2>/dev/null && break; sleep 0.1; done
  python3 "$repo/bench/register.py" "$3"
  [[ -n $(dig +short @127.0.0.1 -p "$2" _s7._tcp.service.local SRV) ]] || { echo "$1 does not answer" >&2; exit 1; }
}
start beacon-rrl-off 5311 5312 "$work/off.toml" 5315
start beacon-rrl-on 5313 5314 "$work/on.toml" 5316

echo "## 2. CPU per query of normal traffic, rate limiting off and on (bash bench/rrl.sh)"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "SECS=$secs ROUNDS=$rounds, beacon --threads 1 each, dnsperf -c 4 -q 64 over UDP; medians of the rounds (all rounds listed)"
echo
echo "| queries | limiter | qps | CPU µs/query | CPU on / off | CPU µs/query of each round |"
echo "| --- | --- | --- | --- | --- | --- |"
median() {
  tr ' ' '\n' | grep -v '^$' | sort -g | awk -v f="$1\n" '{v[NR] = $1}
    END {printf f, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
servers=(off:5311:beacon-rrl-off on:5313:beacon-rrl-on)
for file in ${QUERIES:-a srv mix}; do
  declare -A qps=() cpu=()
  for ((round = 0; round < rounds; round++)); do
    for ((k = 0; k < 2; k++)); do
      IFS=: read -r name port proc <<<"${servers[(round + k) % 2]}"
      out=$(bash "$shared/peers.sh" perf "$port" "$work/data/queries-$file.txt" "$secs" udp "$proc")
      field() { sed -nE "s/.*[[:space:]]$1=([0-9.]+).*/\1/p" <<<" $out"; }
      qps[$name]+=" $(field qps)"
      cpu[$name]+=" $(field cpu_us_per_query)"
    done
  done
  off=$(median %.2f <<<"${cpu[off]}")
  on=$(median %.2f <<<"${cpu[on]}")
  for name in off on; do
    c=$(median %.2f <<<"${cpu[$name]}")
    echo "| $file | $name | $(median %.0f <<<"${qps[$name]}") | $c | $(awk -v a="$c" -v b="$off" 'BEGIN {printf "%.3f", a / b}') |${cpu[$name]} |"
  done
done
echo
limited=$(python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:5316/metrics").read().decode())' | awk '$1 == "beacon_dns_rate_limited_total" {print $2}')
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg); responses beacon-rrl-on withheld: ${limited:-?} (beacon_dns_rate_limited_total)"
