//! The Postern bastion as a library: the store, authorization, audit, PKI, the
//! agent port and the REST API, composed by [`app::Bastion`]. `main.rs` only parses
//! flags, so tests drive all of this in process.

pub mod access;
pub mod agent_port;
pub mod agents;
pub mod app;
pub mod audit;
pub mod authz;
pub mod clock;
pub mod cmdexec;
pub mod dev;
pub mod http;
pub mod identity;
pub mod kube;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod peer_port;
pub mod pki;
pub mod recording;
pub mod replicas;
pub mod replication;
pub mod secrets;
pub mod ssh;
pub mod state;
pub mod store;
pub mod tenancy_init;

pub use app::{Bastion, Config, StartError};
pub use postern_secret_files as fsutil;
