//! What strangers send to sign in and what identity providers answer: ID
//! tokens, codes, session and invitation tokens, SSH certificates, sign-in
//! bodies. Nothing panics; nothing random is accepted as signed.
//!
//! The body is `postern_tests::fuzz_bodies::identity`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::identity(data));
