//! Label selectors as users write them to pick nodes by their labels: nothing
//! panics, a refusal points inside the input, an accepted selector prints a
//! canonical form that parses back to the same selector and prints the same
//! again, and matching it against labels never panics.
//!
//! The body is `postern_tests::fuzz_bodies::label_selector`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::label_selector(data));
