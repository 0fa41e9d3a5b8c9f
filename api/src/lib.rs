//! Contracts shared by every part of Postern: REST bodies, the agent channel's routes
//! and messages, and the validation of names, hostnames, logins and limits.
//!
//! This crate does no I/O, so the bastion, the agent, the keys helper and the tests
//! agree on one definition of each message and each rule.

pub mod admin;
pub mod agent;
mod b64;
pub mod cmdexec;
pub mod console;
pub mod error;
pub mod identity;
pub mod kube;
pub mod kube_keys;
pub mod labels;
pub mod pubkey;
pub mod recordings;
pub mod routes;
pub mod ssh;
pub mod validate;

pub use error::{ErrorBody, ErrorDetail};
pub use validate::ValidationError;

/// The agent/bastion protocol version, sent in every enrollment and checked on
/// both sides so a mismatch fails with an actionable message instead of garbage.
pub const PROTOCOL_VERSION: u32 = 2;

/// The version of this build, reported by agents and shown in node listings.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
