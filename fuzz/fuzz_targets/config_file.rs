//! Config file text: reading never panics, every refusal names a documented key, and a config
//! that validates builds what the server builds from it (beacon::config::fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    beacon::config::fuzzing::check(data);
});
