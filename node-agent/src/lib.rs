//! The Postern node agent as a library: enroll with a bastion, keep the outbound
//! mTLS channel (reconnecting with capped, fully jittered backoff, in turn to each
//! bastion replica it was given), and serve the bastion's calls over the reversed
//! HTTP/2 connection.
//!
//! Many agents can run in one process (the benchmark swarm does), so nothing here
//! is global: each agent is an [`Identity`] plus a [`channel::Agent`].

pub mod backoff;
pub mod channel;
pub mod doctor;
pub mod enroll;
pub mod exec;
/// Files that hold secrets (shared with the bastion).
pub use postern_secret_files as fsutil;
pub mod identity;
pub mod kube;
pub mod kube_keys;
mod service;
pub mod ssh;
pub mod tls;

pub use channel::{Agent, AgentOptions, AgentStatus};
pub use enroll::{EnrollError, JoinRequest, join};
pub use identity::{Identity, IdentityError};
