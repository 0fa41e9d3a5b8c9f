//! What a Kubernetes client sends the bastion's Kubernetes door: the API path
//! read for the audit log, the TLS server name that names an edge, header names
//! and `Connection` lists checked before anything crosses a hop, and Kubernetes
//! groups. Nothing panics, what is kept is bounded and free of control
//! characters, and no credential or identity header is ever forwardable.
//!
//! The body is `postern_tests::fuzz_bodies::kube_request`, which `tests/tests/fuzz_replay.rs`
//! also runs, as an ordinary test, on the seeds, any crash input and the cached corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| postern_tests::fuzz_bodies::kube_request(data));
