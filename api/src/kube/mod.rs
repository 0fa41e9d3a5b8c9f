//! The Kubernetes door's contract: where kubectl reaches an edge on the bastion, the
//! headers the bastion and a gateway agent exchange over the channel, the default
//! Kubernetes groups of each role, and the reading of a Kubernetes API path into
//! what the audit log records (verb, API group, resource, namespace, name).
//!
//! The path reader is the Kubernetes apiserver's own `RequestInfo` rules, kept to
//! what an audit entry needs; it sees every path a client sends, so it never
//! panics and bounds what it returns.

use crate::admin::Role;

/// `https://bastion:KUBE_PORT/k8s/{project}/{edge}`: the server of one context of a
/// downloaded kubeconfig. The rest of the path is the Kubernetes API path.
pub const PATH_PREFIX: &str = "/k8s/";

/// The agent route a gateway serves: the Kubernetes API path follows it.
pub const AGENT_ROUTE_PREFIX: &str = "/v1/kube";

/// Headers the bastion sets on a request it forwards to a gateway agent, after
/// removing any the client sent. The agent turns them into `Impersonate-User`
/// and `Impersonate-Group` (one per group) towards the API server.
pub const HDR_USER: &str = "postern-kube-user";
pub const HDR_GROUP: &str = "postern-kube-group";
/// The client asked for a protocol upgrade (`exec`, `attach`, `port-forward`):
/// the value is the client's `Upgrade` header. HTTP/2 has no upgrades, so the
/// bytes after the switch travel as the request and response bodies of the stream.
pub const HDR_UPGRADE: &str = "postern-kube-upgrade";
/// Set by the agent on its answer when the API server switched protocols (101);
/// the response body then carries the server's bytes.
pub const HDR_SWITCHED: &str = "postern-kube-switched";
/// Set by the agent on an answer it made itself (no gateway configured, the API
/// server unreachable), so the bastion can tell it from the API server's own.
pub const HDR_AGENT_ERROR: &str = "postern-kube-agent-error";

/// The suffix of the TLS server names that name an edge.
pub const SNI_SUFFIX: &str = ".kube.postern";

/// `<edge>.<project>.kube.postern` → (project, edge), when both are valid names.
pub fn edge_of_server_name(name: &str) -> Option<(String, String)> {
    let head = name.strip_suffix(SNI_SUFFIX)?;
    let (edge, project) = head.split_once('.')?;
    let ok = |s: &str| crate::validate::name("name", s).is_ok();
    (ok(edge) && ok(project)).then(|| (project.to_string(), edge.to_string()))
}

/// The TLS server name of an edge.
pub fn server_name_of(project: &str, edge: &str) -> String {
    format!("{edge}.{project}{SNI_SUFFIX}")
}

/// Whether a request header may cross a Kubernetes hop (client → bastion →
/// gateway → API server): never hop-by-hop headers (HTTP/2 refuses them), nor
/// any credential or identity the client claims (`Authorization`,
/// `Impersonate-*`, the front-proxy `X-Remote-*`), nor Postern's own, which only
/// the bastion sets. `connection_named`: the headers the `Connection` header names.
pub fn forwardable(name: &str, connection_named: &[String]) -> bool {
    !(matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
    ) || name.starts_with("impersonate-")
        || name.starts_with("postern-")
        || name.starts_with("x-remote-")
        || connection_named.iter().any(|c| c == name))
}

/// The header names a `Connection` header's values list, lower-case, bounded.
pub fn connection_named<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|s| s.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .take(16)
        .collect()
}

/// What `h`'s `Connection` headers name.
fn named_in(h: &http::HeaderMap) -> Vec<String> {
    connection_named(
        h.get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// The headers of `from` that may cross a hop ([`forwardable`]).
pub fn forwardable_headers(from: &http::HeaderMap) -> http::HeaderMap {
    let named = named_in(from);
    let mut h = http::HeaderMap::new();
    for (name, value) in from {
        if forwardable(name.as_str(), &named) {
            h.append(name.clone(), value.clone());
        }
    }
    h
}

/// Removes from `h` every header that may not cross a hop ([`forwardable`]).
pub fn retain_forwardable(h: &mut http::HeaderMap) {
    let named = named_in(h);
    let drop: Vec<http::HeaderName> = h
        .keys()
        .filter(|k| !forwardable(k.as_str(), &named))
        .cloned()
        .collect();
    for k in drop {
        h.remove(&k);
    }
}

/// Most Kubernetes groups one role binding lists.
pub const MAX_GROUPS: usize = 16;
/// Longest Kubernetes group name Postern sends.
pub const MAX_GROUP_LEN: usize = 128;

/// The groups a role grants when its binding lists none: `postern:<role>`.
pub fn default_group(role: Role) -> String {
    format!("postern:{role}")
}

/// A Kubernetes group a role binding may grant: 1 to 128 of letters, digits and
/// `: . _ - @ /`. Header-safe, and never a `system:` group, which Kubernetes
/// reserves for its own identities (`system:masters` would be cluster-admin).
pub fn check_group(g: &str) -> Result<(), String> {
    if g.is_empty() || g.len() > MAX_GROUP_LEN {
        return Err(format!(
            "Kubernetes group must be 1 to {MAX_GROUP_LEN} characters"
        ));
    }
    if !g
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":._-@/".contains(&b))
    {
        return Err(format!(
            "Kubernetes group {:?} may hold only letters, digits and ':._-@/'",
            g.chars().take(80).collect::<String>()
        ));
    }
    if g.starts_with("system:") {
        return Err(format!(
            "Kubernetes group {g:?} is reserved: groups starting with 'system:' are Kubernetes' own"
        ));
    }
    Ok(())
}

/// What one Kubernetes API request is about, for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or the lower-case HTTP method for a non-resource path.
    pub verb: String,
    /// `true` for `/api/...` and `/apis/...` resource paths.
    pub is_resource: bool,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The path as asked (bounded), for non-resource requests (`/version`, `/healthz`).
    pub path: String,
}

/// Longest part of a path kept in a `RequestInfo`.
const MAX_PART: usize = 253;

fn part(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_PART).collect();
    out.retain(|c| !c.is_control());
    out
}

/// Reads a Kubernetes API path and query (`watch` makes a list a watch, a
/// `fieldSelector` on `metadata.name` names what a list reads) the way the
/// apiserver's `RequestInfoFactory` does.
pub fn request_info(method: &str, path: &str, query: Option<&str>) -> RequestInfo {
    // The API server decodes the path before it routes it (`/%61pi/v1/…` is
    // `/api/v1/…`): read what it will act on, not what was sent.
    let decoded = percent_decode(path);
    let path = decoded.as_str();
    let method = method.to_ascii_lowercase();
    let mut info = RequestInfo {
        verb: part(&method).chars().take(32).collect(),
        path: part(path),
        ..RequestInfo::default()
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').take(16).collect();
    let rest: &[&str] = match segs.as_slice() {
        ["api", version, rest @ ..] => {
            info.api_version = part(version);
            rest
        }
        ["apis", group, version, rest @ ..] => {
            info.api_group = part(group);
            info.api_version = part(version);
            rest
        }
        _ => return info,
    };
    if rest.is_empty() {
        // Discovery (`/api/v1`, `/apis/apps/v1`): not a resource request.
        return info;
    }
    info.is_resource = true;
    let mut rest = rest;
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest = &rest[1..];
    }
    // `namespaces/{ns}/{resource}…`; but `namespaces/{ns}` alone is the
    // namespace, and `namespaces/{ns}/status|finalize` are its subresources
    // (`namespaceSubresources`): a forced finalizer removal is a change to the
    // namespace, and is recorded as one.
    if rest.first() == Some(&"namespaces") && rest.len() >= 2 {
        info.namespace = part(rest[1]);
        if rest.len() >= 3 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    match rest {
        [] => {}
        [resource] => info.resource = part(resource),
        [resource, name] => {
            info.resource = part(resource);
            info.name = part(name);
        }
        [resource, name, sub, ..] => {
            info.resource = part(resource);
            info.name = part(name);
            info.subresource = part(sub);
        }
    }
    // A read without a name is a list, or a watch. The API server asks the
    // query only then; here a named read that asks for a watch counts as one
    // too, which only ever counts more as long-lived, never less.
    let listing = matches!(method.as_str(), "get" | "head") && info.name.is_empty() && !watch_path;
    info.verb = match method.as_str() {
        "get" | "head" if watch_path || is_watch_query(query) => "watch",
        "get" | "head" if info.name.is_empty() => "list",
        "get" | "head" => "get",
        "post" => "create",
        "put" => "update",
        "patch" => "patch",
        "delete" if info.name.is_empty() => "deletecollection",
        "delete" => "delete",
        other => other,
    }
    .chars()
    .take(32)
    .collect();
    if listing && let Some(name) = field_selector_name(query) {
        info.name = part(&name);
    }
    info
}

/// Whether the API server holds this request open as a watch (`/watch/…`, or
/// a list asking for one): [`request_info`]'s verb, for whoever must treat
/// watches apart (the gateway gives each its own connection).
pub fn is_watch(method: &str, path: &str, query: Option<&str>) -> bool {
    request_info(method, path, query).verb == "watch"
}

/// `namespaces/{ns}/…` segments the API server reads as subresources of the
/// namespace, not as resources in it (`requestinfo.go`'s `namespaceSubresources`).
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// Whether the API server serves a list with this query as a watch: as
/// apimachinery's `Convert_Slice_string_To_bool` reads the first `watch`
/// value, only an absent one, `0` and `false` in any case are not; anything
/// else is, the empty value and a bare `watch` included. Shared by the bastion
/// (which caps, re-authorizes and audits watches) and the gateway (which gives
/// each watch a connection of its own), so both count what the API server holds
/// open.
///
/// Go's `url.ParseQuery` skips a pair it cannot unescape and, since Go 1.17,
/// any `&`-separated pair holding a `;`; older API servers split pairs at `;`
/// as well. A query either reading makes a watch is a watch here: counting a
/// list as a watch costs a client a watch slot, the other way round costs the
/// cap.
pub fn is_watch_query(query: Option<&str>) -> bool {
    let Some(q) = query else {
        return false;
    };
    [false, true]
        .into_iter()
        .filter_map(|semicolons| first_query_value(q, "watch", semicolons))
        .any(|v| !(v == b"0" || v.eq_ignore_ascii_case(b"false")))
}

/// The first value of `key` in `query` as Go's `url.ParseQuery` reads it (as
/// bytes: Go does not ask for UTF-8). `semicolons`: as Go before 1.17, which
/// also split pairs at `;`.
fn first_query_value(query: &str, key: &str, semicolons: bool) -> Option<Vec<u8>> {
    let separators: &[char] = if semicolons { &['&', ';'] } else { &['&'] };
    for pair in query.split(separators) {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if query_unescape(k).as_deref() != Some(key.as_bytes()) {
            continue;
        }
        if let Some(v) = query_unescape(v) {
            return Some(v);
        }
    }
    None
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte, and any other `%`
/// makes the whole text invalid (`None`).
fn query_unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
                let (h, l) = (hex(b.get(i + 1))?, hex(b.get(i + 2))?);
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The name a list or watch reads when its `fieldSelector` requires an exact
/// `metadata.name`, as the API server sets it (and its RBAC checks
/// `resourceNames` against it): the selector's terms split at unescaped `,`,
/// sorted, the first `metadata.name=` or `==` term, unescaped, if it is a valid
/// path segment. A selector the API server cannot parse names nothing.
fn field_selector_name(query: Option<&str>) -> Option<String> {
    let raw = first_query_value(query?, "fieldSelector", false)?;
    let selector = String::from_utf8_lossy(&raw);
    // Go's `splitTerms`: `\` escapes the next character.
    let mut terms = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in selector.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms.sort_unstable();
    let mut name = None;
    for term in terms.into_iter().filter(|t| !t.is_empty()) {
        // Every term must parse, or the API server has no selector at all.
        let (field, exact, value) = split_selector_term(term)?;
        let value = unescape_selector_value(value)?;
        if exact && field == "metadata.name" && name.is_none() {
            name = Some(value);
        }
    }
    // `path.IsValidPathSegmentName`.
    name.filter(|n| !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '%']))
}

/// Go's `splitTerm`: at the first operator, `!=` tried before `==` before `=`;
/// answers (field, whether it requires equality, raw value).
fn split_selector_term(term: &str) -> Option<(&str, bool, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        if let Some(v) = rest.strip_prefix("!=") {
            return Some((&term[..i], false, v));
        }
        if let Some(v) = rest.strip_prefix("==") {
            return Some((&term[..i], true, v));
        }
        if let Some(v) = rest.strip_prefix('=') {
            return Some((&term[..i], true, v));
        }
    }
    None
}

/// Go's `fields.UnescapeValue`: `\\`, `\,` and `\=` are the characters
/// themselves; any other escape, a trailing `\`, or a bare `,` or `=` is an error.
fn unescape_selector_value(v: &str) -> Option<String> {
    let mut out = String::with_capacity(v.len());
    let mut escaped = false;
    for c in v.chars() {
        match c {
            '\\' | ',' | '=' if escaped => {
                out.push(c);
                escaped = false;
            }
            _ if escaped => return None,
            '\\' => escaped = true,
            ',' | '=' => return None,
            c => out.push(c),
        }
    }
    (!escaped).then_some(out)
}

/// Whether a request may change cluster state, and so is audited before it is
/// sent: everything but a read. An unknown verb counts as a change.
pub fn is_mutation(verb: &str) -> bool {
    !matches!(verb, "get" | "list" | "watch" | "head" | "options")
}

/// `%XX` decoded, as the API server reads a path; invalid escapes stay as they
/// are, and bytes that are not UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
