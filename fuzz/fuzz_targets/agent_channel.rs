//! Messages on the agent channel, both ways: what the bastion reads from an
//! agent and what an agent reads from the bastion. Nothing panics, and what
//! parses survives a round trip unchanged.
//!
//! The body is `postern_tests::fuzz_bodies::agent_channel`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::agent_channel(data));
