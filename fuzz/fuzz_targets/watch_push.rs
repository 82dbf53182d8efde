//! Lines a watcher reads from a registry: parsing never panics, and every update read comes
//! back whole through the server's push encoding (beacon::client::fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    beacon::client::fuzzing::check(data);
});
