//! Signed requests and Authorization headers against a known key: nothing panics, and only the
//! exact signed form of a request verifies (beacon::auth::fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    beacon::auth::fuzzing::check(data);
});
