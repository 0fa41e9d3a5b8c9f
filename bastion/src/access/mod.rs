//! Access, once for every door. The REST API, the SSH front door and the
//! Kubernetes door each authenticate a caller (`authn`), find the project, edge or
//! node a request names and ask `authz` whether the caller may reach it
//! (`resolve`), and get one outcome, `Denied`, that each door only translates
//! into its own protocol (a JSON error, an SSH refusal, a Kubernetes `Status`).
//! Taking access away is an event every door subscribes to (`bus`), and so is a
//! node's Kubernetes gateway role changing (`gateway`).

pub mod authn;
mod bus;
mod gateway;
pub mod resolve;

pub use bus::*;
pub use gateway::*;

use crate::store::StoreError;

/// Why a door refuses a request, whatever its protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No valid credential (401): the message says how to get one.
    #[error("{0}")]
    Unauthenticated(String),
    /// Not there, or not visible to the caller (404): the two read the same, so
    /// other orgs' and projects' names do not leak.
    #[error("{0}")]
    NotFound(String),
    /// Visible, but the caller's role does not allow it (403): the reason names
    /// the role and what to ask for.
    #[error("{reason}")]
    Forbidden {
        reason: String,
        /// The project the refusal is about, for the audit entry.
        project: Option<String>,
    },
    /// The bastion cannot decide now (its database is down): 503, retry.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a corrupt row: 500; the details are in the bastion's log.
    #[error("{0}")]
    Internal(String),
}

impl Denied {
    pub fn forbidden(reason: impl Into<String>, project: Option<&str>) -> Denied {
        Denied::Forbidden {
            reason: reason.into(),
            project: project.map(str::to_string),
        }
    }
}

impl From<StoreError> for Denied {
    fn from(e: StoreError) -> Denied {
        match e {
            StoreError::NotFound(what) => Denied::NotFound(format!("{what} not found")),
            other if other.is_unavailable() => {
                tracing::warn!(error = %other, "database unavailable during authorization");
                Denied::Unavailable(
                    "the bastion's database is busy or unreachable; retry in a few seconds".into(),
                )
            }
            other => {
                tracing::error!(error = %other, "store error during authorization");
                Denied::Internal(other.to_string())
            }
        }
    }
}
