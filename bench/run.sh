#!/usr/bin/env bash
# Issue 4's measurements in one command, each side by side with its peers in the same run:
#
#   bash bench/run.sh
#
# 1. DNS answers (bench/dns.sh): beacon, NSD and Knot serving the same 100 services x 10
#    instances, one worker each, loaded by dnsperf: A, SRV and the mix, over UDP and TCP.
# 2. The registry (cargo bench --bench registry): heartbeats over UDP and TCP with DNS answers
#    checked during the load, memory per instance at 100 000 and 1 000 000 instances,
#    register -> answerable and deadline -> removal at 1 000 000, and etcd measured on the same
#    sizes (../shared/bench/registry-peer's regbench).
#
# It installs what is missing with apt-get (dnsutils, dnsperf, nsd and knot through
# ../shared/bench/peers.sh; etcd-server, etcd-client and protobuf-compiler here), builds the
# release binary, prints both tables and writes them to $WORK/results.md (default
# /tmp/beacon-bench). The knobs of each part (SECS, ROUNDS, REG_*) pass through the
# environment; see bench/dns.sh and the header of benches/registry.rs. Loopback only.
# About 10 minutes on 2 cores (REG_ETCD_MEM=1000000 adds etcd at 1M instances: ~10 more).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-/tmp/beacon-bench}
mkdir -p "$work"

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v dig >/dev/null || missing+=(dnsutils)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

out=$work/results.md
{
  echo "# beacon benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "## 1. DNS answers, side by side with NSD and Knot (bash bench/dns.sh)"
  echo
} | tee "$out"
WORK=$work bash "$repo/bench/dns.sh" | tee -a "$out"
{
  echo
  echo "## 2. The registry, etcd on the same sizes (cargo bench --bench registry)"
} | tee -a "$out"
(cd "$repo" && cargo bench --quiet --bench registry) | tee -a "$out"
echo
echo "bench/run.sh: both tables are in $out"
