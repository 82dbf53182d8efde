//! Replays every input the fuzzers keep (fuzz/corpus/TARGET/, and fuzz/regressions/TARGET/ for
//! inputs that once failed) through the same checks, on the stable toolchain, so `cargo test`
//! checks every input ever found without cargo-fuzz.

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
    let inputs = inputs("dns_query");
    assert!(
        inputs.len() >= 100,
        "fuzz/corpus/dns_query holds {} inputs",
        inputs.len()
    );
    for (path, bytes) in inputs {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| harness.check(&bytes)));
        assert!(outcome.is_ok(), "{path}");
    }
}

#[test]
fn the_protocol_corpus_replays() {
    let inputs = inputs("protocol_request");
    assert!(
        inputs.len() >= 40,
        "fuzz/corpus/protocol_request holds {} inputs",
        inputs.len()
    );
    for (path, bytes) in inputs {
        let outcome = std::panic::catch_unwind(|| crate::protocol::fuzzing::check(&bytes));
        assert!(outcome.is_ok(), "{path}");
    }
}

#[test]
fn the_update_corpus_replays() {
    let harness = crate::update::fuzzing::UpdateHarness::default();
    let inputs = inputs("dns_update");
    assert!(
        inputs.len() >= 10,
        "fuzz/corpus/dns_update holds {} inputs",
        inputs.len()
    );
    for (path, bytes) in inputs {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| harness.check(&bytes)));
        assert!(outcome.is_ok(), "{path}");
    }
}
