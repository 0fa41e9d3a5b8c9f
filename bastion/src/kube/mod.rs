//! The Kubernetes door: kubectl, helm and anything else that reads a kubeconfig
//! reach an edge's cluster through the bastion. The bastion authenticates the
//! caller's API token, authorizes their role in the edge's project, audits every
//! request, and forwards it over the agent channel of one of the edge's gateway
//! agents, which calls the API server with its own credential and impersonates
//! the Postern user with the Kubernetes groups of their role. The cluster's RBAC
//! keeps the final word on what those groups may do. A gateway is a node a
//! project admin granted the role (`gateways`), never one that only says it is.

mod flow;
mod gateways;
mod listen;
mod live;
mod proxy;
mod status;
mod stream;
mod upgrade;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

pub(crate) use gateways::apply_published as apply_published_gateway;
pub use gateways::{GatewayChange, changed as gateway_changed};
pub use listen::{
    KubeTlsError, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE, edge_of_server_name, serve,
    server_config, server_name_of,
};
pub use live::{KubeDoor, Live};

/// What the Kubernetes listener answers with.
pub type KubeBody = BoxBody<Bytes, crate::agents::BoxError>;
