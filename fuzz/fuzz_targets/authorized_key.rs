//! Public-key text as users register it (`POST /users/{u}/ssh-keys`): nothing
//! panics, and a key that is accepted is stored in a canonical form that parses
//! again to the same fingerprint and passes the agent's key check.
//!
//! The body is `postern_tests::fuzz_bodies::authorized_key`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::authorized_key(data));
