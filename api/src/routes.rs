//! The REST API's paths, as templates the bastion's router mounts and clients
//! fill, so the server and every client (the `postern` CLI, the tests) share one
//! spelling of each route.
//!
//! A template's `{name}` parts are filled in order by [`path`], each one
//! percent-encoded as a single path segment, so a value can never reach another
//! route (`..`, `/` and `?` in a name stay inside their segment).

/// The admin API's prefix.
pub const API: &str = "/api/v1";
/// The cmdexec API's prefix (the seed's paths).
pub const CMDEXEC: &str = "/cmdexec/v1";

// Under `API`.
pub const WHOAMI: &str = "/whoami";
pub const PROJECTS: &str = "/projects";
pub const PROJECT: &str = "/projects/{project}";
pub const EDGES: &str = "/projects/{project}/edges";
pub const NODES: &str = "/projects/{project}/edges/{edge}/nodes";
pub const NODE: &str = "/projects/{project}/edges/{edge}/nodes/{node}";
pub const NODE_LABELS: &str = "/projects/{project}/edges/{edge}/nodes/{node}/labels";
pub const NODE_APPROVE: &str = "/projects/{project}/edges/{edge}/nodes/{node}/approve";
pub const NODE_DISABLE: &str = "/projects/{project}/edges/{edge}/nodes/{node}/disable";
pub const NODE_ENABLE: &str = "/projects/{project}/edges/{edge}/nodes/{node}/enable";
/// PUT grants the node its edge's Kubernetes gateway role, DELETE takes it back.
pub const NODE_KUBE_GATEWAY: &str = "/projects/{project}/edges/{edge}/nodes/{node}/kube-gateway";
pub const ENROLLMENT_TOKENS: &str = "/projects/{project}/edges/{edge}/enrollment-tokens";
pub const ENROLLMENT_TOKEN: &str = "/projects/{project}/edges/{edge}/enrollment-tokens/{token_id}";
pub const USERS: &str = "/users";
pub const USER: &str = "/users/{user}";
pub const USER_ROLES: &str = "/users/{user}/roles";
pub const USER_ROLE: &str = "/users/{user}/roles/{scope}";
pub const USER_TOKENS: &str = "/users/{user}/tokens";
pub const SSH_KEYS: &str = "/users/{user}/ssh-keys";
pub const SSH_KEY: &str = "/users/{user}/ssh-keys/{key_id}";
pub const TOKEN: &str = "/tokens/{token_id}";
pub const AUTH_LOGIN: &str = "/auth/login";
pub const AUTH_LOGOUT: &str = "/auth/logout";
pub const AUTH_SSH_CERT: &str = "/auth/ssh-certificate";
pub const AUTH_KUBE_CERT: &str = "/auth/kube-certificate";
pub const AUTH_INVITATION: &str = "/auth/invitation";
pub const USER_INVITATION: &str = "/users/{user}/invitation";
pub const USER_SESSIONS: &str = "/users/{user}/sessions";
pub const USER_MFA: &str = "/users/{user}/mfa";
pub const USER_DISABLE: &str = "/users/{user}/disable";
pub const USER_ENABLE: &str = "/users/{user}/enable";
pub const ORG_POLICY: &str = "/org/policy";
pub const BOTS: &str = "/projects/{project}/bots";
pub const BOT: &str = "/projects/{project}/bots/{name}";
pub const SSO_PROVIDERS: &str = "/sso/providers";
pub const SSO_PROVIDER: &str = "/sso/providers/{name}";
pub const SSO_GROUPS: &str = "/sso/providers/{name}/groups";
pub const SSO_GROUP_ROLES: &str = "/sso/providers/{name}/groups/{group}/roles";
pub const SSO_GROUP_ROLE: &str = "/sso/providers/{name}/groups/{group}/roles/{scope}";
pub const AUTH_SSO_START: &str = "/auth/sso/start";
pub const AUTH_SSO_CALLBACK: &str = "/auth/sso/callback";
pub const AUTH_SSO_DEVICE: &str = "/auth/sso/device";
pub const AUTH_SSO_DEVICE_CONFIRM: &str = "/auth/sso/device/confirm";
pub const AUTH_SSO_DEVICE_APPROVE: &str = "/auth/sso/device/approve";
pub const AUTH_SSO_COLLECT: &str = "/auth/sso/collect";
pub const AUDIT: &str = "/audit";
/// Walks the audit log's hash chain (org admins).
pub const AUDIT_VERIFY: &str = "/audit/verify";
pub const RECORDING_POLICY: &str = "/projects/{project}/recording-policy";
pub const RECORDINGS: &str = "/recordings";
pub const RECORDING: &str = "/recordings/{id}";
pub const RECORDING_SEGMENTS: &str = "/recordings/{id}/segments";
pub const RECORDING_CAST: &str = "/recordings/{id}/cast";
pub const RECORDING_LIVE: &str = "/recordings/{id}/live";
pub const ORG_RECORDING_RETENTION: &str = "/org/recording-retention";
pub const KUBECONFIG: &str = "/kubeconfig";
pub const SSH_ENDPOINT: &str = "/ssh";

// Under `CMDEXEC`. The seed's paths end in `/`; both spellings are served.
pub const EXECUTE: &str = "/projects/{project}/edges/{edge}/execute";
pub const EXECUTION: &str = "/projects/{project}/edges/{edge}/execution/{exec_id}";
pub const EXECUTION_EVENTS: &str = "/projects/{project}/edges/{edge}/execution/{exec_id}/events";
pub const EXECUTION_CANCEL: &str = "/projects/{project}/edges/{edge}/execution/{exec_id}/cancel";
pub const HISTORY: &str = "/projects/{project}/history";

/// `prefix` + `template` with its `{…}` parts replaced, in order, by `args`,
/// each percent-encoded as one path segment.
///
/// # Panics
/// When `args` does not give exactly one value per `{…}` part: a programming
/// error in the caller, never something input can cause.
pub fn path(prefix: &str, template: &str, args: &[&str]) -> String {
    let mut out = String::with_capacity(prefix.len() + template.len() + 32);
    out.push_str(prefix);
    let mut args = args.iter();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .unwrap_or(rest.len() - 1);
        let value = args
            .next()
            .expect("routes::path: fewer values than the template has parts");
        encode_segment(value, &mut out);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    assert!(
        args.next().is_none(),
        "routes::path: more values than the template has parts"
    );
    out
}

/// RFC 3986 path-segment encoding: unreserved characters stay, everything else
/// (including `/`, `%`, `?`, `#`) becomes `%XX`. `.` and `..` are encoded too,
/// so a segment never means "this" or "parent" directory.
fn encode_segment(value: &str, out: &mut String) {
    if value == "." || value == ".." {
        for _ in 0..value.len() {
            out.push_str("%2E");
        }
        return;
    }
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A query string (`?a=1&b=x`) of the pairs whose value is present, each value
/// percent-encoded.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        let Some(v) = v else { continue };
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        encode_segment(v, &mut out);
    }
    out
}

/// The web console's sign-in (a cookie session) and its session.
pub const AUTH_CONSOLE: &str = "/auth/console";
/// The console's SSO sign-in: to the provider and back to the console.
pub const AUTH_SSO_CONSOLE: &str = "/auth/sso/console";
/// A shell on a node in the browser (WebSocket), through the terminating SSH mode.
pub const TERMINAL: &str = "/projects/{project}/edges/{edge}/nodes/{node}/terminal";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_templates_in_order() {
        assert_eq!(
            path(CMDEXEC, EXECUTION, &["demo", "local", "01ab"]),
            "/cmdexec/v1/projects/demo/edges/local/execution/01ab"
        );
        assert_eq!(path(API, WHOAMI, &[]), "/api/v1/whoami");
    }

    #[test]
    fn a_value_stays_inside_its_segment() {
        assert_eq!(
            path(API, PROJECT, &["../users?x=1#f"]),
            "/api/v1/projects/..%2Fusers%3Fx%3D1%23f"
        );
        assert_eq!(path(API, PROJECT, &[".."]), "/api/v1/projects/%2E%2E");
        assert_eq!(path(API, PROJECT, &["é"]), "/api/v1/projects/%C3%A9");
    }

    #[test]
    fn query_skips_absent_values_and_encodes_the_rest() {
        assert_eq!(
            query(&[
                ("action", Some("cmdexec.*".into())),
                ("actor", None),
                ("since", Some("2026-11-30T12:00:00+01:00".into())),
            ]),
            "?action=cmdexec.%2A&since=2026-11-30T12%3A00%3A00%2B01%3A00"
        );
        assert_eq!(query(&[("a", None)]), "");
    }

    #[test]
    #[should_panic(expected = "fewer values")]
    fn too_few_values_is_a_programming_error() {
        path(API, NODE, &["p", "e"]);
    }
}
