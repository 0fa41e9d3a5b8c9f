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
mod tests {
    use super::*;

    #[test]
    fn resource_paths_read_as_the_apiserver_reads_them() {
        let i = request_info("GET", "/api/v1/namespaces/prod/pods/web-1", None);
        assert_eq!(
            (i.verb.as_str(), i.api_group.as_str(), i.resource.as_str()),
            ("get", "", "pods")
        );
        assert_eq!((i.namespace.as_str(), i.name.as_str()), ("prod", "web-1"));
        let i = request_info("GET", "/apis/apps/v1/namespaces/prod/deployments", None);
        assert_eq!(
            (i.verb.as_str(), i.api_group.as_str(), i.resource.as_str()),
            ("list", "apps", "deployments")
        );
        let i = request_info("GET", "/api/v1/pods", Some("watch=true&limit=5"));
        assert_eq!(i.verb, "watch");
        let i = request_info("GET", "/api/v1/watch/namespaces/a/configmaps", None);
        assert_eq!((i.verb.as_str(), i.namespace.as_str()), ("watch", "a"));
        let i = request_info(
            "POST",
            "/api/v1/namespaces/a/pods/p/exec",
            Some("command=sh"),
        );
        assert_eq!(
            (i.verb.as_str(), i.subresource.as_str(), i.name.as_str()),
            ("create", "exec", "p")
        );
        let i = request_info("DELETE", "/api/v1/namespaces/a/configmaps", None);
        assert_eq!(i.verb, "deletecollection");
        let i = request_info("GET", "/api/v1/namespaces/kube-system", None);
        assert_eq!(
            (i.resource.as_str(), i.namespace.as_str(), i.name.as_str()),
            ("namespaces", "kube-system", "kube-system")
        );
        let i = request_info("GET", "/version", None);
        assert!(!i.is_resource);
        assert_eq!((i.verb.as_str(), i.path.as_str()), ("get", "/version"));
        let i = request_info("GET", "/apis/apps/v1", None);
        assert!(!i.is_resource);
    }

    #[test]
    fn encoded_paths_read_as_the_api_server_decodes_them() {
        let i = request_info("POST", "/%61pi/v1/namespaces/default/config%6daps", None);
        assert_eq!(
            (i.verb.as_str(), i.resource.as_str(), i.namespace.as_str()),
            ("create", "configmaps", "default")
        );
        assert!(is_mutation(&i.verb));
        let i = request_info("GET", "/api/v1/%77atch/namespaces/a/pods", None);
        assert_eq!(i.verb, "watch");
        // Unknown methods and broken escapes are changes, never reads.
        assert!(is_mutation(&request_info("PROPFIND", "/x%zz%", None).verb));
        assert!(!is_mutation("list"));
    }

    #[test]
    fn a_watch_is_what_the_api_server_serves_as_one() {
        // apimachinery's `Convert_Slice_string_To_bool`: only an absent first
        // value, `0` and `false` (in any case) are not a watch.
        for q in [
            "watch=true",
            "watch=t",
            "watch=TRUE",
            "watch=%74rue",
            "%77atch=1",
            "a=b&watch=True",
            "watch=yes",
            "watch=on",
            "watch=",
            "watch",
            "watch&limit=5",
            "watch=no",
            "watch=%20false",
            "watch=1&watch=0",
            // The first pair Go can read is the first value.
            "watch=%zz&watch=1",
            // Read by an API server built with Go before 1.17, which splits at `;`.
            "watch=1;a=b",
            "a=b;watch=1",
        ] {
            assert!(is_watch_query(Some(q)), "{q}");
            assert_eq!(
                request_info("GET", "/api/v1/pods", Some(q)).verb,
                "watch",
                "{q}"
            );
        }
        for q in [
            "watch=false",
            "watch=False",
            "watch=FALSE",
            "watch=fAlSe",
            "watch=%46alse",
            "watch=0",
            "watch=0&watch=1",
            "watch=%zz&watch=0",
            "watchx=true",
            "xwatch",
            "",
            "limit=5",
        ] {
            assert!(!is_watch_query(Some(q)), "{q}");
            assert_eq!(
                request_info("GET", "/api/v1/pods", Some(q)).verb,
                "list",
                "{q}"
            );
        }
        assert!(!is_watch_query(None));
        // A watch is asked for by reads only.
        assert_eq!(
            request_info("DELETE", "/api/v1/namespaces/a/pods", Some("watch")).verb,
            "deletecollection"
        );
        // Hostile queries are read to the end, however many pairs come first.
        let q = format!("{}watch=yes", "a&".repeat(10_000));
        assert!(is_watch_query(Some(&q)));
    }

    #[test]
    fn namespace_subresources_are_the_namespaces_own() {
        for sub in ["finalize", "status"] {
            let i = request_info("PUT", &format!("/api/v1/namespaces/victim/{sub}"), None);
            assert_eq!(
                (
                    i.verb.as_str(),
                    i.resource.as_str(),
                    i.name.as_str(),
                    i.subresource.as_str(),
                    i.namespace.as_str()
                ),
                ("update", "namespaces", "victim", sub, "victim"),
            );
        }
        // Any other third segment is a resource in the namespace.
        let i = request_info("GET", "/api/v1/namespaces/a/pods/p/status", None);
        assert_eq!(
            (
                i.resource.as_str(),
                i.name.as_str(),
                i.subresource.as_str(),
                i.namespace.as_str()
            ),
            ("pods", "p", "status", "a"),
        );
        let i = request_info("GET", "/api/v1/namespaces/status", None);
        assert_eq!(
            (i.resource.as_str(), i.name.as_str(), i.namespace.as_str()),
            ("namespaces", "status", "status"),
        );
        let i = request_info("GET", "/api/v1/namespaces", None);
        assert_eq!(
            (i.verb.as_str(), i.resource.as_str(), i.namespace.as_str()),
            ("list", "namespaces", ""),
        );
    }

    #[test]
    fn a_field_selector_on_the_name_names_what_a_list_reads() {
        let named = |q: &str| request_info("GET", "/api/v1/namespaces/a/secrets", Some(q));
        let i = named("fieldSelector=metadata.name%3Ddb-pass");
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("list", "db-pass"));
        let i = named("watch=1&fieldSelector=metadata.name%3D%3Ddb-pass");
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("watch", "db-pass"));
        // Terms are sorted, as the API server sorts them, and escapes undone.
        assert_eq!(
            named("fieldSelector=type%3Dx,metadata.name%3Db,metadata.name%3Da").name,
            "a"
        );
        assert_eq!(named("fieldSelector=metadata.name%3Da%5C%2Cb").name, "a,b");
        for q in [
            "fieldSelector=metadata.name!%3Da",
            "fieldSelector=metadata.namespace%3Da",
            "fieldSelector=metadata.name%3D",
            "fieldSelector=metadata.name%3D..",
            "fieldSelector=metadata.name%3Da%2Fb",
            // One term the API server cannot parse: no selector at all.
            "fieldSelector=metadata.name%3Da,oops",
            "fieldSelector=metadata.name%3Da%5Cx",
            "labelSelector=metadata.name%3Da",
        ] {
            assert_eq!(named(q).name, "", "{q}");
        }
        // Only lists and watches: a named read keeps its own name.
        let i = request_info(
            "GET",
            "/api/v1/namespaces/a/secrets/s",
            Some("fieldSelector=metadata.name%3Dother"),
        );
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("get", "s"));
        let i = request_info(
            "DELETE",
            "/api/v1/namespaces/a/secrets",
            Some("fieldSelector=metadata.name%3Dx"),
        );
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("deletecollection", ""));
    }

    #[test]
    fn hostile_paths_are_bounded_and_never_panic() {
        let long = "x".repeat(100_000);
        let i = request_info(
            "GET",
            &format!("/api/v1/namespaces/{long}/pods/{long}"),
            None,
        );
        assert!(i.namespace.len() <= MAX_PART && i.name.len() <= MAX_PART);
        assert!(i.path.len() <= MAX_PART);
        for p in [
            "",
            "/",
            "//",
            "/api",
            "/apis/",
            "/api//",
            "/apis/g//x/\u{0}/\n",
        ] {
            let i = request_info("GET", p, Some("watch"));
            assert!(!i.name.contains('\n') && !i.name.contains('\u{0}'));
        }
        let i = request_info(&"M".repeat(500), "/api/v1/pods", None);
        assert!(i.verb.len() <= 32);
        // Found by the fuzzer: a long method on a path that is not a resource.
        let i = request_info(&"m".repeat(40), "/api/vo", None);
        assert!(i.verb.chars().count() <= 32);
    }

    #[test]
    fn no_credential_or_identity_of_the_client_crosses() {
        use http::HeaderValue;
        let mut h = http::HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("impersonate-user", HeaderValue::from_static("system:admin"));
        h.append(
            "impersonate-group",
            HeaderValue::from_static("system:masters"),
        );
        h.insert("impersonate-extra-scopes", HeaderValue::from_static("x"));
        h.insert("postern-kube-user", HeaderValue::from_static("root"));
        h.insert("x-remote-user", HeaderValue::from_static("admin"));
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("accept", HeaderValue::from_static("application/json"));
        let kept = forwardable_headers(&h);
        assert_eq!(
            kept.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["accept"]
        );
        retain_forwardable(&mut h);
        assert_eq!(h, kept);
    }

    #[test]
    fn groups_are_checked_and_defaults_name_the_role() {
        assert_eq!(default_group(Role::ReadOnly), "postern:read_only");
        assert!(check_group("postern:read_only").is_ok());
        assert!(check_group("team-a@corp/dev").is_ok());
        assert!(check_group("").is_err());
        assert!(check_group("system:masters").is_err());
        assert!(check_group("a b").is_err());
        assert!(check_group("a\r\nImpersonate-User: x").is_err());
        assert!(check_group(&"g".repeat(129)).is_err());
    }
}
