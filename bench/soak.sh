#!/usr/bin/env bash
# The soak (issue 17): steady load with crashes, checked for lost registrations and for DNS
# answers past a deadline; figures in docs/RELIABILITY.md, curves in docs/soak.png.
#
#   bash bench/soak.sh                                       # a short run, about 5 minutes
#   SOAK_SECS=1800 SOAK_CLUSTER_SECS=600 bash bench/soak.sh  # the recorded run, about 45 minutes
#
# Knobs (environment; benches/soak.rs's header says what each part does):
#   SOAK_SECS               part 1's load, seconds (default 120; the recorded run: 1800)
#   SOAK_INSTANCES          part 1's instances, heartbeating every lease/3 = 10 s (100000)
#   SOAK_WATCHERS           protocol watchers, in each part (1000)
#   SOAK_KILL_EVERY         seconds between two kill -9 of part 1's server (SOAK_SECS/4,
#                           at least 10, at most 300: every 5 minutes in the recorded run)
#   SOAK_CHURN              registrations + deregistrations (+ instances left to expire) per s (20)
#   SOAK_QPS                DNS queries per second (200)
#   SOAK_CLUSTER            1 runs part 2, three nodes on three etcd members (1)
#   SOAK_CLUSTER_SECS       part 2's load, seconds (150); its six faults are SOAK_CLUSTER_SECS/7
#                           apart, each at least half that after the previous one settled
#   SOAK_CLUSTER_INSTANCES  part 2's instances, spread over the nodes (30000)
#   SOAK_SAMPLE_SECS        RSS, descriptors and latency sampled every N s (5)
#   SOAK_OUT                output directory (/tmp/beacon-soak): proc.csv, load.csv,
#                           faults.csv, summary.md, soak.png
#   SOAK_PLOT               where the plot goes too (docs/soak.png; empty: only SOAK_OUT)
#
# It installs etcd and matplotlib with apt-get if missing, builds the release binary with
# `--features etcd` and runs `cargo bench --features etcd --bench soak`. Loopback only.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${SOAK_OUT:-/tmp/beacon-soak}
plot=${SOAK_PLOT-$repo/docs/soak.png}
mkdir -p "$out"

# Debian's python3-matplotlib is for /usr/bin/python3, which may not be the python3 on PATH.
python=python3
python3 -c 'import matplotlib' 2>/dev/null || python=/usr/bin/python3
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
"$python" -c 'import matplotlib' 2>/dev/null || missing+=(python3-matplotlib)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cd "$repo"
cargo build --release --quiet --features etcd
SOAK_OUT=$out SOAK_STAMP="$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  cargo bench --quiet --features etcd --bench soak 2> "$out/stderr.log" | tee "$out/stdout.log"
"$python" "$repo/bench/soak_plot.py" "$out" "$out/soak.png"
if [[ -n $plot ]]; then cp "$out/soak.png" "$plot"; fi
echo "bench/soak.sh: $out/summary.md, $out/soak.png${plot:+, $plot}"
