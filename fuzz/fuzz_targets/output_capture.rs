//! The agent's bounded capture of command output, fed any bytes in any chunks:
//! the total and hash cover everything, output that fits is kept byte for byte,
//! UTF-8 text stays UTF-8 after the cuts, and what is kept stays near the budget.
//!
//! The body is `postern_tests::fuzz_bodies::output_capture`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::output_capture(data));
