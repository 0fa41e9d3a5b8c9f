//! The Kubernetes Node annotations (`postern.dev/authorized-keys` and its
//! signature), which anyone who may update the Node or its status writes: see
//! the body for what must hold.
//!
//! The body is `postern_tests::fuzz_bodies::kube_annotation`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::kube_annotation(data));
