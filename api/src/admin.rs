//! Bodies of the admin REST API under `/api/v1/`. Requests refuse unknown fields so a
//! misspelt option is an error, never silently ignored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// Lowercase letters, digits and `-`, 1 to 63, not starting with `-`; unique in the org.
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9-]*$")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEdge {
    /// Lowercase letters, digits and `-`, 1 to 63, not starting with `-`; unique in the project.
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9-]*$")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Edge {
    pub id: String,
    pub name: String,
    pub project: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
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
    /// Keys the node's agent read from its Kubernetes Node object
    /// (`--kube-node-keys`): they let in at the node's own sshd without the
    /// bastion. Absent when the agent never reported any.
    #[serde(default)]
    pub kube_keys: Option<crate::kube_keys::NodeKubeKeys>,
    /// The labels `target_type: selector` matches: the agent's, with a project
    /// admin's winning on the same key.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Labels the node's agent reports (`postern-agent run --label k=v`).
    #[serde(default)]
    pub agent_labels: std::collections::BTreeMap<String, String>,
    /// Labels a project admin set (`PUT …/nodes/{node}/labels`).
    #[serde(default)]
    pub admin_labels: std::collections::BTreeMap<String, String>,
    /// Labels the agent reports that differ from `agent_labels`: not used
    /// until a project admin approves them (`POST …/approve` with them as
    /// `labels`).
    #[serde(default)]
    pub agent_labels_pending: Option<std::collections::BTreeMap<String, String>>,
    /// The node's part in its edge's Kubernetes door.
    #[serde(default)]
    pub kube_gateway: NodeKubeGateway,
}

/// Whether a node serves its edge's Kubernetes API. It does when both hold
/// (and its agent is connected): a project admin's grant and its agent's
/// capability. An agent's word alone never makes a gateway.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct NodeKubeGateway {
    /// A project admin granted the node the gateway role
    /// (`PUT …/nodes/{node}/kube-gateway`; `DELETE` takes it back).
    pub granted: bool,
    /// The node's agent runs with `--kube-apiserver`, as it said when its
    /// channel last came up.
    pub capable: bool,
}

impl Node {
    /// The labels the node's agent reports now, as an approval must name
    /// them: the change that waits, or the approved ones when none does.
    pub fn reported_agent_labels(&self) -> &std::collections::BTreeMap<String, String> {
        self.agent_labels_pending
            .as_ref()
            .unwrap_or(&self.agent_labels)
    }
}

/// `POST …/nodes/{node}/approve`: what the approval covers. The body may be
/// left out, which is `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveNode {
    /// The labels the node's agent reports, as the approver saw them
    /// (`agent_labels_pending`, or `agent_labels` when nothing waits). They
    /// become the node's agent labels only if the agent still reports exactly
    /// these; otherwise nothing is changed and the answer is 409, saying what
    /// it reports now. Absent: the node itself is approved (when pending), but
    /// none of its agent's labels: what it reports keeps waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
}

/// `PUT …/nodes/{node}/labels`: the labels a project admin sets on a node,
/// replacing those set before (the agent's own are kept; these win on a key).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetNodeLabels {
    /// At most 64; keys and values in Kubernetes label syntax (`role`,
    /// `example.com/zone`; values up to 63 characters of letters, digits, `-_.`).
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Lowercase letters, digits and `-`, 1 to 63, not starting with `-`; unique on the bastion.
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9-]*$")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct User {
    pub id: String,
    pub name: String,
    pub org: String,
    pub roles: Vec<RoleBinding>,
    pub created_at: String,
}

/// A role on the whole org (`project` absent, only for `org_admin`) or on one project.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBinding {
    pub role: Role,
    /// The project's name; absent (or null) for `org_admin`, required for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9-]*$")]
    pub project: Option<String>,
    /// Unix logins this role may use over SSH. `org_admin` may use any.
    #[serde(default)]
    #[schema(schema_with = logins_schema)]
    pub logins: Vec<String>,
    /// Where SSH sessions of this role may forward ports with `ssh -L`, as
    /// `host:port` seen from the node (e.g. `127.0.0.1:5432`). Empty, the default,
    /// allows no forwarding at all. Remote forwarding (`ssh -R`) is never allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = forward_to_schema)]
    pub forward_to: Vec<String>,
    /// The Kubernetes groups this role's users are impersonated with on the
    /// clusters of the project (kubectl through the bastion). Absent: the
    /// role's default, `postern:<role>`; an empty list: none, so the cluster's
    /// RBAC sees only the user's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = kube_groups_schema)]
    pub kube_groups: Option<Vec<String>>,
}

fn kube_groups_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .description(Some(
            "Kubernetes groups granted on the project's clusters, at most 16, each 1 to 128 of \
             letters, digits and `:._-@/`, never starting with `system:`. Absent: `postern:<role>`.",
        ))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(crate::kube::MAX_GROUP_LEN))
                .pattern(Some("^[A-Za-z0-9:._@/-]+$")),
        )
        .max_items(Some(crate::kube::MAX_GROUPS))
        .build()
}

/// Most `forward_to` destinations in one role.
pub const MAX_FORWARD_TO: usize = 32;

fn forward_to_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .description(Some(
            "`host:port` destinations (from the node) this role may forward to with ssh -L, at \
             most 32; the host a hostname or IPv4 address, the port 1 to 65535. Empty: none.",
        ))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(3))
                .max_length(Some(259))
                .pattern(Some("^[A-Za-z0-9.-]+:[0-9]{1,5}$")),
        )
        .max_items(Some(MAX_FORWARD_TO))
        .build()
}

/// At most 64 unix logins, each as `useradd` accepts it by default (see
/// [`crate::validate::login`]).
fn logins_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .description(Some(
            "Unix logins this role may use over SSH, at most 64: each 1 to 32 of `a-z`, `0-9`, \
             `_` and `-`, starting with a letter or `_`. `org_admin` may use any.",
        ))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(32))
                .pattern(Some("^[a-z_][a-z0-9_-]*$")),
        )
        .max_items(Some(64))
        .build()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A label for people: at most 100 characters, none of them control characters.
    #[serde(default)]
    #[schema(max_length = 100, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub name: Option<String>,
    /// Lifetime in seconds, 60 to 365 days; default 30 days.
    #[serde(default, deserialize_with = "crate::validate::whole_number")]
    #[schema(minimum = 60, maximum = 31_536_000)]
    pub ttl_seconds: Option<i64>,
}

/// Returned once, when the token is made: the secret is never shown again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// The token's id, for listing and revoking it.
    pub id: String,
    /// The secret to send as `Authorization: Bearer …`.
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    /// The user the token belongs to.
    pub user: String,
    pub name: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// Lifetime in seconds, 1 to 30 days; default 24 hours.
    #[serde(default, deserialize_with = "crate::validate::whole_number")]
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl_seconds: Option<i64>,
    /// How many nodes may join with it, 1 to 100000; default 1.
    #[serde(default, deserialize_with = "crate::validate::whole_number")]
    #[schema(minimum = 1, maximum = 100_000)]
    pub max_uses: Option<i64>,
    /// Nodes that join with it are approved at once; default false.
    #[serde(default)]
    pub auto_approve: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentTokenCreated {
    /// The token's id, for revoking it.
    pub id: String,
    /// The secret the node presents when it joins.
    pub token: String,
    pub expires_at: String,
    pub max_uses: i64,
    pub auto_approve: bool,
    /// `sha256:…` of the bastion's CA, which the node pins when it joins.
    pub ca_hash: String,
    /// Ready to run on the node; append `--hostname H --data-dir D` if the defaults
    /// (the machine's hostname, `/var/lib/postern-agent`) do not fit.
    pub join_command: String,
    /// One line, run as root on a Debian or Ubuntu node, that installs the
    /// agent package from the bastion's agent port and joins: it fetches an
    /// install script with the bastion's CA pinned (`curl --cacert`, the CA
    /// given inline), which checks the package's sha256 and runs the join
    /// command's arguments. `null` when the bastion serves no agent package
    /// (`serve --agent-package`).
    pub install_command: Option<String>,
}

/// One entry of the tamper-evident audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct AuditEntry {
    /// Position in the log (the chain's order).
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
    /// Whatever the action recorded (any JSON value, often an object or null).
    pub detail: serde_json::Value,
    /// This entry's link in the hash chain.
    pub hash: String,
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Entries in the whole log of the caller's org.
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

/// Query of `GET …/nodes`: with none of it, every node of the edge; with
/// any, one page of the nodes that match, and `X-Total-Count` says how many do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeListQuery {
    /// Nodes whose hostname contains this (case-insensitive), up to 253 bytes.
    pub q: Option<String>,
    /// Nodes carrying this label, `key=value` (or `key` for any value).
    pub label: Option<String>,
    /// 1 to 1000; default 100 when any of the query is given.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// The largest page of nodes.
pub const MAX_NODE_PAGE: i64 = 1000;

/// `GET /api/v1/audit/verify`: whether the audit log's hash chain holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerified {
    /// Every entry's hash matches its content and links to the one before.
    pub ok: bool,
    /// Entries checked (the whole log, every org's: it is one chain).
    pub checked: i64,
    /// Where and how the chain breaks, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Query of `GET /api/v1/audit`: a page, and what to keep. Every filter is
/// optional; together they all must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// An action (`cmdexec.execute`), or a prefix ending in `*` (`cmdexec.*`).
    pub action: Option<String>,
    /// The user who did it.
    pub actor: Option<String>,
    /// `ok`, `denied`, `failed`, `rejected`, `not_found`, `error`, …
    pub outcome: Option<String>,
    /// Entries at or after this time (RFC 3339, e.g. `2026-11-30T12:00:00Z`).
    pub since: Option<String>,
    /// Entries before this time (RFC 3339).
    pub until: Option<String>,
}

/// The audit filters, checked: what the store matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    /// The action is a prefix (the query's trailing `*` removed).
    pub action_prefix: bool,
    pub actor: Option<String>,
    pub outcome: Option<String>,
    /// Unix milliseconds.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// Longest filter value accepted.
pub const AUDIT_FILTER_MAX: usize = 200;

impl AuditQuery {
    pub fn bounds(&self) -> Result<(i64, i64), crate::ValidationError> {
        PageQuery {
            limit: self.limit,
            offset: self.offset,
        }
        .bounds()
    }

    /// The filters, or what is wrong with one of them (the message names it).
    pub fn filter(&self) -> Result<AuditFilter, String> {
        let text = |field: &str, v: &Option<String>| -> Result<Option<String>, String> {
            match v {
                None => Ok(None),
                Some(s)
                    if s.is_empty()
                        || s.len() > AUDIT_FILTER_MAX
                        || s.chars().any(char::is_control) =>
                {
                    Err(format!(
                        "{field} must be 1 to {AUDIT_FILTER_MAX} printable characters"
                    ))
                }
                Some(s) => Ok(Some(s.clone())),
            }
        };
        let time = |field: &str, v: &Option<String>| -> Result<Option<i64>, String> {
            let Some(s) = v else { return Ok(None) };
            let t = humantime::parse_rfc3339_weak(s)
                .map_err(|e| format!("{field} must be a time such as 2026-11-30T12:00:00Z: {e}"))?;
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("{field} is before 1970"))?
                .as_millis();
            Ok(Some(
                i64::try_from(ms).map_err(|_| format!("{field} is too far ahead"))?,
            ))
        };
        let mut action = text("action", &self.action)?;
        let mut action_prefix = false;
        if let Some(a) = &mut action
            && let Some(p) = a.strip_suffix('*')
        {
            if p.contains('*') {
                return Err("action may end in one * (a prefix), and hold no other".into());
            }
            *a = p.to_string();
            action_prefix = true;
        }
        let f = AuditFilter {
            action,
            action_prefix,
            actor: text("actor", &self.actor)?,
            outcome: text("outcome", &self.outcome)?,
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
        };
        if let (Some(a), Some(b)) = (f.since_ms, f.until_ms)
            && a >= b
        {
            return Err("since must be before until".into());
        }
        Ok(f)
    }
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
