#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds each (default 600), on the nightly toolchain with
# cargo-fuzz (installed from crates.io if missing), growing the corpora in fuzz/corpus/, which
# `cargo test` replays on the stable toolchain (src/fuzz_replay.rs, with fuzz/regressions/). Prints
# executions and crashes per target; a crash leaves its input in fuzz/artifacts/TARGET/. The
# targets: DNS queries (dns_query), registration requests (protocol_request), static zone files
# (zone_file), DNS UPDATEs (dns_update), the config file (config_file), etcd keys and values
# (etcd_value), the watch pushes a watcher reads (watch_push), and signed requests and HTTP
# Authorization headers (signed_request); each runs a check in the library (a doc-hidden `fuzzing` module beside the
# code it checks).
set -euo pipefail
cd "$(dirname "$0")"
secs=${SECS:-600}
command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz
# TARGETS picks some of them (space-separated); all by default.
targets=${TARGETS:-dns_query protocol_request dns_update zone_file config_file etcd_value watch_push signed_request}
for target in $targets; do
  echo "== $target, ${secs}s"
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -timeout=10 2>&1 |
    grep -E '^#[0-9]+\s+(DONE|INITED)|Done [0-9]+ runs|ERROR|SUMMARY|crash-' || true
  # Keep the corpus small: only the inputs that add coverage.
  cargo +nightly fuzz cmin "$target" "corpus/$target" >/dev/null 2>&1 || true
done
