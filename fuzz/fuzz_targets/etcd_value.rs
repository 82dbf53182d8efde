//! An etcd key and value as a cluster node reads them: decoding never panics, and a value that
//! decodes is its key's instance within the limits and survives the registry's encoding
//! (beacon::cluster::fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    beacon::cluster::fuzzing::check(data);
});
