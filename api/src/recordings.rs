//! Session recordings: a project's recording policy, what a listing shows of a
//! recording, and its segments (the chain that `postern recording verify` checks).
//!
//! The cast itself is asciicast v2 (a JSON header line, then one
//! `[seconds, code, data]` array a line), served as it was recorded; a segment
//! is a run of those lines with the SHA-256 that chains it to the one before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::admin::Role;

/// Most label rules in one policy.
pub const MAX_LABEL_RULES: usize = 32;
/// What `mode` a listing shows for a `ssh -J` session, which only its two ends
/// can read.
pub const NOT_RECORDED: &str = "not recorded: end-to-end encrypted (ssh -J)";

/// How a session is recorded.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RecordingLevel {
    /// Not recorded (the audit log still has who, where, when and how much).
    Off,
    /// Recorded; a failed write leaves a visible gap marker and the session goes on.
    BestEffort,
    /// Recorded, or refused: a session is not opened when the recorder cannot
    /// write, a running one ends within 5 s of a failed write, and `ssh -J`
    /// (which the bastion cannot see into) is refused.
    Strict,
}

impl RecordingLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingLevel::Off => "off",
            RecordingLevel::BestEffort => "best_effort",
            RecordingLevel::Strict => "strict",
        }
    }

    pub fn parse(s: &str) -> Option<RecordingLevel> {
        match s {
            "off" => Some(RecordingLevel::Off),
            "best_effort" => Some(RecordingLevel::BestEffort),
            "strict" => Some(RecordingLevel::Strict),
            _ => None,
        }
    }
}

/// A label rule: nodes whose labels match `selector` are recorded at least at `level`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelRule {
    /// A label selector, as `postern exec -l` takes (`tier=payments`).
    #[schema(max_length = 4096)]
    pub selector: String,
    pub level: RecordingLevel,
}

/// `PUT /api/v1/projects/{project}/recording-policy`. A session through the
/// terminating mode is recorded at the strongest level that applies: the
/// default, the user's role in the project, and every label rule the node
/// matches. Rules only ever raise the level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordingPolicy {
    /// For everyone, on every node of the project. Default `best_effort`.
    #[serde(default = "best_effort")]
    pub default: RecordingLevel,
    /// Per role (`project_member`, `project_admin`, `read_only`, `org_admin`).
    #[serde(default)]
    pub roles: BTreeMap<Role, RecordingLevel>,
    /// Per node label selector.
    #[serde(default)]
    pub labels: Vec<LabelRule>,
    /// Also record what users type (`i` events), not only what the terminal
    /// shows: typed input the terminal hides (`stty -echo`, passwords) is in
    /// the recording too. Off by default.
    #[serde(default)]
    pub input: bool,
}

fn best_effort() -> RecordingLevel {
    RecordingLevel::BestEffort
}

impl Default for RecordingPolicy {
    fn default() -> RecordingPolicy {
        RecordingPolicy {
            default: RecordingLevel::BestEffort,
            roles: BTreeMap::new(),
            labels: Vec::new(),
            input: false,
        }
    }
}

impl RecordingPolicy {
    /// Refuses what could not be applied: too many rules, a selector that does
    /// not parse. The message names the rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.labels.len() > MAX_LABEL_RULES {
            return Err(format!(
                "{} label rules given, at most {MAX_LABEL_RULES} are allowed",
                self.labels.len()
            ));
        }
        for (i, r) in self.labels.iter().enumerate() {
            r.selector
                .parse::<crate::labels::Selector>()
                .map_err(|e| format!("labels[{i}].selector: {e}"))?;
        }
        Ok(())
    }

    /// The level for a user of `role` on a node with `labels`.
    pub fn level(&self, role: Option<Role>, labels: &crate::labels::Labels) -> RecordingLevel {
        let mut level = self.default;
        if let Some(l) = role.and_then(|r| self.roles.get(&r)) {
            level = level.max(*l);
        }
        for r in &self.labels {
            if let Ok(sel) = r.selector.parse::<crate::labels::Selector>()
                && sel.matches(labels)
            {
                level = level.max(r.level);
            }
        }
        level
    }
}

/// One recorded channel of a terminated SSH connection, or one `ssh -J`
/// session (`mode` relay: metadata only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecordingView {
    pub id: String,
    pub project: String,
    pub node: String,
    pub node_id: String,
    pub user: String,
    pub login: String,
    /// `terminate` (recorded by the bastion) or `relay` (`ssh -J`: not recorded).
    pub mode: String,
    /// `shell`, `exec`, `subsystem` (terminate), `jump` (relay), or
    /// `kube_exec`, `kube_attach` (kubectl through the Kubernetes door: `node`
    /// is the gateway that served it, `login` the container).
    pub kind: String,
    /// kubectl exec and attach: the pod, as `NAMESPACE/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The command of an exec, the name of a subsystem; empty for a shell.
    pub command: String,
    /// The level the policy asked for (`off`, `best_effort`, `strict`), or
    /// [`NOT_RECORDED`] for a relay.
    pub policy: String,
    /// `live`, `ended`, `interrupted` (its replica stopped mid-session) or
    /// `failed` (strict: the store refused a write and the session was ended).
    pub status: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub width: u32,
    pub height: u32,
    pub chunks: i64,
    /// Size of the cast (asciicast v2) as served.
    pub cast_bytes: i64,
    /// What the store holds of it, compressed.
    pub stored_bytes: i64,
    /// Writes lost (best_effort); each left a marker in the cast.
    pub gaps: i64,
    /// The chain's head; the session's final audit entry holds the same.
    pub last_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecordingPage {
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub recordings: Vec<RecordingView>,
}

/// Longest recording retention an org may set: ten years.
pub const RETENTION_DAYS_MAX: i64 = 3650;

/// `GET`/`PUT /api/v1/org/recording-retention`: how long the org keeps
/// recordings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordingRetention {
    /// Recordings (and relayed sessions' rows) are deleted this many days
    /// after their session ended, each deletion in the audit log; 0 keeps
    /// them until an org admin deletes one. 0 to 3650.
    #[schema(minimum = 0, maximum = 3650)]
    pub days: i64,
}

/// `GET /api/v1/recordings?…`: filters, all optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingQuery {
    /// Sessions in the page, 1 to 100; default 10.
    pub limit: Option<i64>,
    /// Sessions to skip; default 0.
    pub offset: Option<i64>,
    /// The user who was recorded.
    pub user: Option<String>,
    /// The node's hostname.
    pub node: Option<String>,
    /// The project's name.
    pub project: Option<String>,
    /// `terminate` or `relay`.
    pub mode: Option<String>,
    /// Sessions started at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Sessions started before this time (RFC 3339).
    pub until: Option<String>,
}

impl RecordingQuery {
    pub fn bounds(&self) -> Result<(i64, i64), crate::ValidationError> {
        crate::admin::PageQuery {
            limit: self.limit,
            offset: self.offset,
        }
        .bounds()
    }

    /// `since` and `until` in unix milliseconds, or what is wrong with them.
    pub fn times(&self) -> Result<(Option<i64>, Option<i64>), String> {
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
        let since = time("since", &self.since)?;
        let until = time("until", &self.until)?;
        if let (Some(a), Some(b)) = (since, until)
            && a >= b
        {
            return Err("since must be before until".into());
        }
        Ok((since, until))
    }
}

/// A segment of a cast: bytes `offset..offset+length` of it, and the chained hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Segment {
    pub seq: i64,
    pub offset: i64,
    pub length: i64,
    /// Milliseconds from the session's start to the segment's first event.
    pub at_ms: i64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SegmentList {
    pub recording: String,
    pub segments: Vec<Segment>,
}

/// The chain: a segment's hash covers the one before it (the first covers the
/// recording's id) and its own lines, so an edit anywhere changes the head.
pub fn chain(previous: &str, lines: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(previous.as_bytes());
    h.update(b"\n");
    h.update(lines);
    hex::encode(h.finalize())
}

/// Checks a whole cast against its segments and the head the audit log holds;
/// the error names the first segment that does not match.
pub fn verify(
    recording: &str,
    cast: &[u8],
    segments: &[Segment],
    head: &str,
) -> Result<(), String> {
    let mut previous = recording.to_string();
    let mut at = 0i64;
    for s in segments {
        if s.offset != at || s.length < 0 {
            return Err(format!(
                "segment {} does not start where the one before ends",
                s.seq
            ));
        }
        let end = (s.offset + s.length) as usize;
        let Some(lines) = cast.get(s.offset as usize..end) else {
            return Err(format!("segment {} lies beyond the cast's end", s.seq));
        };
        let h = chain(&previous, lines);
        if h != s.sha256 {
            return Err(format!(
                "segment {} was changed: its hash does not match",
                s.seq
            ));
        }
        previous = h;
        at += s.length;
    }
    if at as usize != cast.len() {
        return Err("the cast holds bytes no segment covers".into());
    }
    if previous != head {
        return Err("the last segment's hash is not the one the audit log holds".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(id: &str, parts: &[&[u8]]) -> (Vec<u8>, Vec<Segment>, String) {
        let mut cast = Vec::new();
        let mut segs = Vec::new();
        let mut prev = id.to_string();
        for (i, p) in parts.iter().enumerate() {
            let h = chain(&prev, p);
            segs.push(Segment {
                seq: i as i64,
                offset: cast.len() as i64,
                length: p.len() as i64,
                at_ms: 0,
                sha256: h.clone(),
            });
            cast.extend_from_slice(p);
            prev = h;
        }
        (cast, segs, prev)
    }

    #[test]
    fn any_edit_breaks_the_chain() {
        let (mut cast, segs, head) =
            segments("r1", &[b"{\"version\":2}\n", b"[0.1,\"o\",\"hi\"]\n"]);
        verify("r1", &cast, &segs, &head).unwrap();
        assert!(verify("r2", &cast, &segs, &head).is_err());
        assert!(verify("r1", &cast, &segs[..1], &head).is_err());
        let n = cast.len() - 3;
        cast[n] ^= 1;
        assert!(
            verify("r1", &cast, &segs, &head)
                .unwrap_err()
                .contains("segment 1")
        );
    }

    #[test]
    fn the_strongest_rule_wins_and_rules_only_raise() {
        let p: RecordingPolicy = serde_json::from_str(
            r#"{"default":"off","roles":{"project_member":"best_effort"},"labels":[{"selector":"tier=payments","level":"strict"}]}"#,
        )
        .unwrap();
        p.validate().unwrap();
        let none = crate::labels::Labels::new();
        let pay: crate::labels::Labels = [("tier".to_string(), "payments".to_string())].into();
        assert_eq!(
            p.level(Some(Role::ProjectAdmin), &none),
            RecordingLevel::Off
        );
        assert_eq!(
            p.level(Some(Role::ProjectMember), &none),
            RecordingLevel::BestEffort
        );
        assert_eq!(
            p.level(Some(Role::ProjectAdmin), &pay),
            RecordingLevel::Strict
        );
        assert!(serde_json::from_str::<RecordingPolicy>(r#"{"default":"loud"}"#).is_err());
        assert!(serde_json::from_str::<RecordingPolicy>(r#"{"other":1}"#).is_err());
        let bad = RecordingPolicy {
            labels: vec![LabelRule {
                selector: "a in ()".into(),
                level: RecordingLevel::Strict,
            }],
            ..RecordingPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("labels[0]"));
    }
}
