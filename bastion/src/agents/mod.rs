//! The fleet: every node's agent channel, here or on a peer replica, and how
//! the bastion calls an agent over it (`client`), with the registry of live
//! channels, the agent port's TLS settings, the agent packages served, and
//! the reading of a node's Kubernetes keys. A call on a local channel goes
//! out on h2 (`wire`). The agent port itself (the door
//! agents come in by) is `agent_port`.

pub mod client;
pub mod fleet;
pub mod kube_keys;
pub mod packages;
mod registry;
mod tls;
mod wire;

pub use fleet::{Fleet, NodeLink};
pub use registry::{AgentBody, AgentConn, BoxError, held_body, stream_body};
pub use tls::server_config;
pub use wire::ChannelHandle;
