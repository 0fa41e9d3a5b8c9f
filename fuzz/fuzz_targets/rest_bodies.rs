//! REST bodies and query strings as the API reads them, and the validation that
//! follows: no input may panic, and what parses obeys its invariants.
//!
//! The body is `postern_tests::fuzz_bodies::rest_bodies`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::rest_bodies(data));
