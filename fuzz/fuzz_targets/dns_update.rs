//! DNS UPDATE bytes into the updater (beacon::update::fuzzing): nothing panics, every reply is
//! a response to the same ID, and an unsigned reply over UDP is at most 3× the input.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<beacon::update::fuzzing::UpdateHarness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(Default::default).check(data);
});
