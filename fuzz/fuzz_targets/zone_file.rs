//! Static zone file text: loading never panics, a zone that loads answers its own record sets
//! and the names above them, and its records written out load back the same
//! (beacon::dns::fuzzing::check_zone_file).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    beacon::dns::fuzzing::check_zone_file(data);
});
