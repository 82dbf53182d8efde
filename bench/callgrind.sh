#!/usr/bin/env bash
# Instructions per DNS query in beacon's own code, counted by valgrind's callgrind: unlike CPU
# time on a shared machine, the count repeats from run to run, so a change of a few percent in
# the answer path shows (bench/dns.sh's figures drift by about that much between runs).
#
#   bash bench/callgrind.sh            # QUERIES=3000 of each file a, srv, mix
#   BEACON=/path/to/beacon bash bench/callgrind.sh
#                                      # another binary (an older commit's), to compare
#
# It builds the release binary, runs it under callgrind (one worker, loopback ports 5323/5324),
# registers the same 100 services x 10 instances as bench/dns.sh, sends each query file of
# ../shared/bench/gen-zone.py's data set once with dnsperf (one outstanding query at a time),
# and prints the instructions of the UDP answer loop and of `Responder::respond` per query.
# The kernel's share (most of the real cost, see docs/PERFORMANCE.md) is not counted.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
gen=${GEN:-$repo/../shared/bench/gen-zone.py}
work=${WORK:-/tmp/beacon-bench}
count=${QUERIES:-3000}
for tool in valgrind dnsperf; do
  command -v $tool >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind dnsperf >/dev/null
  }
done
[[ -f $work/data/queries-a.txt ]] || python3 "$gen" "$work/data" >/dev/null
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$repo/$target
if [[ -z ${BEACON:-} ]]; then
  (cd "$repo" && cargo build --release --quiet)
fi
beacon=${BEACON:-$target/release/beacon}
echo "binary: $beacon"
echo

# A failure (set -e) must not leave the server running under valgrind on the ports.
trap '[[ -n ${pid:-} ]] && kill "$pid" 2>/dev/null || true' EXIT

echo "| queries | answer loop, instructions/query | respond, instructions/query |"
echo "| --- | --- | --- |"
for file in a srv mix; do
  head -n "$count" "$work/data/queries-$file.txt" >"$work/callgrind-queries.txt"
  out=$work/callgrind.out
  rm -f "$out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$beacon" serve \
    --dns 127.0.0.1:5323 --listen 127.0.0.1:5324 --threads 1 --resolv-conf /dev/null \
    --log-level warn >"$work/callgrind-serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 150); do grep -q listening "$work/callgrind-serve.log" && break; sleep 0.2; done
  python3 "$repo/bench/register.py" 5324 # the data set of bench/dns.sh
  answered=$(dnsperf -s 127.0.0.1 -p 5323 -d "$work/callgrind-queries.txt" -n 1 -c 1 -q 10 -t 5 |
    awk '/Queries completed/ {print $3}')
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  per() { callgrind_annotate --auto=no --inclusive=yes "$out" 2>/dev/null |
    awk -v f="$1" -v n="$answered" '$0 ~ f {gsub(",", "", $1); printf "%.0f", $1 / n; exit}'; }
  echo "| $file ($answered answered) | $(per 'dns::server::serve_udp_blocking') | $(per 'Responder::respond') |"
done
