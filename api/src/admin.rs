//! Bodies of the admin REST API under `/api/v1/`. Requests refuse unknown fields so a
//! misspelt option is an error, never silently ignored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest request body the admin API accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// API tokens: default and maximum lifetime.
pub const TOKEN_TTL_DEFAULT_SECS: i64 = 30 * 24 * 3600;
pub const TOKEN_TTL_MAX_SECS: i64 = 365 * 24 * 3600;
/// Enrollment tokens: default and maximum lifetime, and uses.
pub const ENROLL_TTL_DEFAULT_SECS: i64 = 24 * 3600;
pub const ENROLL_TTL_MAX_SECS: i64 = 30 * 24 * 3600;
pub const ENROLL_USES_MAX: i64 = 100_000;
/// Paging limits for lists.
pub const PAGE_LIMIT_DEFAULT: i64 = 10;
pub const PAGE_LIMIT_MAX: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    OrgAdmin,
    ProjectAdmin,
    ProjectMember,
    ReadOnly,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::OrgAdmin,
        Role::ProjectAdmin,
        Role::ProjectMember,
        Role::ReadOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::OrgAdmin => "org_admin",
            Role::ProjectAdmin => "project_admin",
            Role::ProjectMember => "project_member",
            Role::ReadOnly => "read_only",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}: use org_admin, project_admin, project_member or read_only"
                )
            })
    }
}

/// A node's lifecycle. `Disabled` refuses its certificate until re-enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Pending,
    Approved,
    Provisioned,
    Disabled,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Approved => "approved",
            NodeState::Provisioned => "provisioned",
            NodeState::Disabled => "disabled",
        }
    }
}

impl FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(NodeState::Pending),
            "approved" => Ok(NodeState::Approved),
            "provisioned" => Ok(NodeState::Provisioned),
            "disabled" => Ok(NodeState::Disabled),
            other => Err(format!("unknown node state {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEdge {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Edge {
    pub id: String,
    pub name: String,
    pub project: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    pub edge: String,
    pub project: String,
    pub state: NodeState,
    pub reachable: bool,
    pub last_seen_at: Option<String>,
    pub agent_version: Option<String>,
    pub cert_serial: Option<String>,
    pub cert_expires_at: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub org: String,
    pub roles: Vec<RoleBinding>,
    pub created_at: String,
}

/// A role on the whole org (`project` absent, only for `org_admin`) or on one project.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleBinding {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Unix logins this role may use over SSH. `org_admin` may use any.
    #[serde(default)]
    pub logins: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime in seconds; default 30 days, at most 365 days.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

/// Returned once, when the token is made: the secret is never shown again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: String,
    pub token: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub name: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// Lifetime in seconds; default 24 hours, at most 30 days.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    /// How many nodes may join with it; default 1.
    #[serde(default)]
    pub max_uses: Option<i64>,
    /// Nodes that join with it are approved at once; default false.
    #[serde(default)]
    pub auto_approve: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentTokenCreated {
    pub id: String,
    pub token: String,
    pub expires_at: String,
    pub max_uses: i64,
    pub auto_approve: bool,
    pub ca_hash: String,
    /// Ready to run on the node; append `--hostname H --data-dir D` if the defaults
    /// (the machine's hostname, `/var/lib/postern-agent`) do not fit.
    pub join_command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    pub id: String,
    pub at: String,
    pub action: String,
    pub outcome: String,
    pub actor: Option<String>,
    pub source_ip: Option<String>,
    pub project: Option<String>,
    pub targets: Vec<String>,
    pub exec_id: Option<String>,
    pub detail: serde_json::Value,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub entries: Vec<AuditEntry>,
}

/// `?limit=&offset=` for paged lists. Kept as strings-to-integers by serde so a
/// non-number is a clear 400, and checked against the bounds above.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl PageQuery {
    /// `(limit, offset)` with defaults applied and bounds checked.
    pub fn bounds(&self) -> Result<(i64, i64), crate::ValidationError> {
        let limit = crate::validate::range(
            "limit",
            self.limit.unwrap_or(PAGE_LIMIT_DEFAULT),
            1,
            PAGE_LIMIT_MAX,
        )?;
        let offset = crate::validate::range("offset", self.offset.unwrap_or(0), 0, i64::MAX)?;
        Ok((limit, offset))
    }
}
