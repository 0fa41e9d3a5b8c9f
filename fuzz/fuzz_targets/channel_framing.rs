//! The agent channel's framing under HTTP/2 (`postern_channel`), fed by a
//! hostile peer on either side, live or parked: nothing panics, and what h2
//! reads is exactly the DATA chunks' bytes.
//!
//! The body is `postern_tests::fuzz_bodies::channel_framing`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::channel_framing(data));
