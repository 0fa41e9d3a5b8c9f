//! One audit event as a door builds it, and the bounds every event is held to
//! before it is written, whatever a peer put in it.

use serde_json::Value;

/// One event to record. Build with [`Event::new`] and the setters.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub action: String,
    pub outcome: String,
    pub org_id: Option<String>,
    pub actor: Option<String>,
    pub source_ip: Option<String>,
    pub project: Option<String>,
    pub targets: Vec<String>,
    pub exec_id: Option<String>,
    pub detail: Value,
}

impl Event {
    pub fn new(action: impl Into<String>, outcome: impl Into<String>) -> Event {
        Event {
            action: action.into(),
            outcome: outcome.into(),
            detail: Value::Null,
            ..Event::default()
        }
    }
    pub fn org(mut self, org_id: impl Into<String>) -> Self {
        self.org_id = Some(org_id.into());
        self
    }
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }
    pub fn source(mut self, ip: Option<String>) -> Self {
        self.source_ip = ip;
        self
    }
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }
    pub fn target(mut self, t: impl Into<String>) -> Self {
        self.targets.push(t.into());
        self
    }
    pub fn detail(mut self, d: Value) -> Self {
        self.detail = d;
        self
    }
}

/// Longest one-line field (actor, source, project, action…) kept in an entry.
const MAX_FIELD: usize = 256;
/// Longest string kept anywhere inside an entry's detail.
const MAX_DETAIL_STRING: usize = 8 * 1024;

impl Event {
    /// The event with every string bounded and free of control bytes, whatever
    /// a peer put in it: the one place that keeps an entry's size in check, so no
    /// caller can forget to (user names, paths, versions, commands, reasons).
    pub(super) fn bounded(self) -> Event {
        use postern_api::validate::{peer_line, peer_text};
        let line = |s: String| {
            if s.len() <= MAX_FIELD && !s.chars().any(char::is_control) {
                s
            } else {
                peer_line(&s, MAX_FIELD)
            }
        };
        fn walk(v: &mut Value) {
            match v {
                Value::String(s) if s.len() > MAX_DETAIL_STRING => {
                    *s = peer_text(s, MAX_DETAIL_STRING);
                }
                Value::Array(a) => a.iter_mut().for_each(walk),
                Value::Object(o) => o.values_mut().for_each(walk),
                _ => {}
            }
        }
        let mut detail = self.detail;
        walk(&mut detail);
        Event {
            action: line(self.action),
            outcome: line(self.outcome),
            org_id: self.org_id.map(line),
            actor: self.actor.map(line),
            source_ip: self.source_ip.map(line),
            project: self.project.map(line),
            targets: self.targets.into_iter().map(line).collect(),
            exec_id: self.exec_id.map(line),
            detail,
        }
    }
}
