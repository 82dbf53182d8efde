//! Registration request bytes into the protocol handler: nothing panics, and the heartbeat's
//! fast path replies byte for byte as the general path (beacon::protocol::fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    beacon::protocol::fuzzing::check(data);
});
