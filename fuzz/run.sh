#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds each (default 600), on the nightly toolchain with
# cargo-fuzz (installed from crates.io if missing), growing the corpora in fuzz/corpus/, which
# `cargo test` replays on the stable toolchain (src/fuzz_replay.rs, with fuzz/regressions/). Prints executions and
# crashes per target; a crash leaves its input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${SECS:-600}
command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz
for target in dns_query protocol_request dns_update; do
  echo "== $target, ${secs}s"
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -timeout=10 2>&1 |
    grep -E '^#[0-9]+\s+(DONE|INITED)|Done [0-9]+ runs|ERROR|SUMMARY|crash-' || true
  # Keep the corpus small: only the inputs that add coverage.
  cargo +nightly fuzz cmin "$target" "corpus/$target" >/dev/null 2>&1 || true
done
