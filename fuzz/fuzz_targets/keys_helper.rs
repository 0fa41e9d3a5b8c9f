//! The keys-socket protocol and the files the keys helper reads (grants.json,
//! link.json, break-glass.json): nothing panics, and no input can make the
//! helper print more than one line per grant, or a line carrying anything but
//! the options Postern writes and one key.
//!
//! The body is `postern_tests::fuzz_bodies::keys_helper`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::keys_helper(data));
