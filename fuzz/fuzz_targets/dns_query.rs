//! DNS query bytes into the responder: nothing panics, and the fast path's answer equals the
//! general path's (beacon::dns::fuzzing).
#![no_main]

use std::sync::OnceLock;

use beacon::dns::fuzzing::DnsHarness;
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<DnsHarness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(DnsHarness::default).check(data);
});
