//! Certificate signing requests as nodes send them (enrollment and rotation):
//! nothing panics, and whatever is signed is a certificate for the node the
//! bastion named, never for a name the CSR asked for.
//!
//! The body is `postern_tests::fuzz_bodies::csr`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::csr(data));
