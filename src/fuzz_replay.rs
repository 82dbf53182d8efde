//! Replays every input the fuzzers keep (fuzz/corpus/TARGET/, and fuzz/regressions/TARGET/ for
//! inputs that once failed) through the same checks, on the stable toolchain, so `cargo test`
//! checks every input ever found without cargo-fuzz.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut found = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                found.push((entry.path().display().to_string(), bytes));
            }
        }
    }
    found
}

#[test]
fn the_dns_corpus_replays() {
    let harness = crate::dns::fuzzing::DnsHarness::default();
    replay("dns_query", 100, |bytes| harness.check(bytes));
}

#[test]
fn the_protocol_corpus_replays() {
    replay("protocol_request", 40, crate::protocol::fuzzing::check);
}

/// Replays `target`'s inputs through `check`, after asserting there are at least `min`.
fn replay(target: &str, min: usize, check: impl Fn(&[u8])) {
    let inputs = inputs(target);
    assert!(
        inputs.len() >= min,
        "fuzz/corpus/{target} holds {} inputs",
        inputs.len()
    );
    for (path, bytes) in inputs {
        assert!(
            catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_ok(),
            "{path}"
        );
    }
}

#[test]
fn the_zone_file_corpus_replays() {
    replay("zone_file", 100, crate::dns::fuzzing::check_zone_file);
}

#[test]
fn the_config_file_corpus_replays() {
    replay("config_file", 100, crate::config::fuzzing::check);
}

#[test]
fn the_etcd_value_corpus_replays() {
    replay("etcd_value", 100, crate::cluster::fuzzing::check);
}

#[test]
fn the_watch_push_corpus_replays() {
    replay("watch_push", 100, crate::client::fuzzing::check);
}

#[test]
fn the_signed_request_corpus_replays() {
    replay("signed_request", 100, crate::auth::fuzzing::check);
}

#[test]
fn the_update_corpus_replays() {
    let harness = crate::update::fuzzing::UpdateHarness::default();
    replay("dns_update", 100, |bytes| harness.check(bytes));
}
