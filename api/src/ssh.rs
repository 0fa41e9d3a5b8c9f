//! The SSH side's contracts: users' registered keys, the just-in-time key grants
//! the bastion pushes to a node, the keys helper's socket protocol, and the one
//! function that turns a grant into an `authorized_keys` line.
//!
//! Everything printed into `authorized_keys` passes through [`authorized_keys_line`],
//! which re-checks every field, so a corrupted grants file or a confused agent can
//! never inject key options or extra lines into sshd's input.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate;

/// Agent route for grants (`PUT`: merge these grants into the node's set).
pub const GRANTS_ROUTE: &str = "/v1/grants";
/// Agent route for relayed connections: a full-duplex byte stream to
/// `127.0.0.1:{port}` on the node.
pub const CONNECT_ROUTE: &str = "/v1/connect/{port}";

/// The largest public key line accepted (an RSA-16384 key is about 2.8 KiB).
pub const MAX_PUBLIC_KEY_LEN: usize = 8 * 1024;
/// Keys per user; more is a sign of automation gone wrong.
pub const MAX_KEYS_PER_USER: usize = 100;
/// Grants a node keeps at once; older ones are dropped first beyond this.
pub const MAX_GRANTS_PER_NODE: usize = 10_000;

/// The `from=` a grant is limited to: the agent relays from loopback, so a granted
/// key is useless on any other path to the node.
pub const GRANT_FROM: &str = "127.0.0.1,::1";

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSshKey {
    /// One OpenSSH public key line: `ssh-ed25519 AAAA… comment`. Ed25519, ECDSA, or
    /// RSA of at least 2048 bits; at most 8 KiB once surrounding whitespace is trimmed.
    #[schema(min_length = 1, max_length = 8192)]
    pub public_key: String,
}

/// `GET /api/v1/ssh`: how to reach the SSH front door with its host key
/// known in advance, so nobody trusts it on first use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct SshEndpoint {
    /// `host:port` users dial (`ssh -J USER@HOST:PORT …`).
    pub address: String,
    /// The front door's host key (`ssh-ed25519 AAAA…`), the same on every replica.
    pub host_key: String,
    /// A `known_hosts` line: the address as OpenSSH writes it, then the key.
    pub known_hosts: String,
    /// The caller's user name: the login at the bastion.
    pub user: String,
}

/// `host:port` as OpenSSH names it in `known_hosts`: the bare host for port
/// 22, `[host]:port` otherwise.
pub fn known_hosts_name(address: &str) -> String {
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && (!h.contains(':') || h.starts_with('[')) => {
            (h.trim_start_matches('[').trim_end_matches(']'), p)
        }
        _ => (address.trim_start_matches('[').trim_end_matches(']'), "22"),
    };
    match port {
        "22" => host.to_string(),
        p => format!("[{host}]:{p}"),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SshKey {
    pub id: String,
    pub user: String,
    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    pub algorithm: String,
    pub comment: String,
    pub public_key: String,
    pub created_at: String,
}

/// One key that may log in on a node, for some logins, until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub id: String,
    /// The Postern user the key belongs to.
    pub user: String,
    /// `<algorithm> <base64>`, without a comment.
    pub public_key: String,
    pub fingerprint: String,
    /// Unix logins the key may use; empty means any login (org admins).
    pub logins: Vec<String>,
    pub expires_at_ms: i64,
    /// `host:port` destinations the key may forward to with `ssh -L` (the role's
    /// `forward_to`); empty: no forwarding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_to: Vec<String>,
    /// A just-in-time credential of the bastion's terminating mode: one login,
    /// a minute at most, taken back as soon as the bastion has logged in with
    /// it. It neither sets nor follows the logins of the user's other grants
    /// (those follow the user's role; this one names the login asked for).
    /// An agent older than this field refuses such a grant (unknown field), so
    /// the terminating mode fails closed there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub once: bool,
}

/// The longest life of a just-in-time grant ([`Grant::once`]).
pub const ONCE_GRANT_MAX_MS: i64 = 60_000;

impl Grant {
    pub fn allows_login(&self, login: &str) -> bool {
        self.logins.is_empty() || self.logins.iter().any(|l| l == login)
    }

    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// `PUT /v1/grants`: grants to add; a grant for a key the node already holds for
/// the same user replaces the older one. A user's logins on a node follow from
/// their role in the node's project, not from the key, so a new grant also sets
/// the logins of every other grant that user holds on the node: a role narrowed
/// since an older key was granted is never widened by that older grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantPush {
    pub grants: Vec<Grant>,
    /// Fingerprints whose grants the node drops at once: a key was deleted, its
    /// user removed, or their role changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoke: Vec<String>,
}

/// Whether `fp` looks like a key fingerprint as Postern writes them
/// (`SHA256:` and unpadded base64).
pub fn check_fingerprint(fp: &str) -> bool {
    fp.strip_prefix("SHA256:").is_some_and(|b64| {
        (1..=64).contains(&b64.len())
            && b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantPushed {
    /// Live grants the node holds after the merge.
    pub held: usize,
}

/// What the agent keeps in its grants file (and in memory).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsFile {
    pub grants: Vec<Grant>,
}

/// The keys helper's one-line request on the agent's unix socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    pub login: String,
    /// When sshd passes `%f`, only grants for that key are wanted.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// The agent's one-line answer: the live grants for that login, and break-glass
/// keys when (and only when) the bastion has been unreachable beyond the grace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysAnswer {
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub break_glass: Vec<String>,
    /// Keys from the node's Kubernetes Node object (`--kube-node-keys`), live and
    /// for that login.
    #[serde(default)]
    pub kube_keys: Vec<crate::kube_keys::KubeKey>,
}

/// Files and socket in the agent's data directory that the keys helper reads.
pub mod files {
    pub const GRANTS: &str = "grants.json";
    pub const SOCKET: &str = "keys.sock";
    pub const LINK: &str = "link.json";
    pub const BREAK_GLASS: &str = "break-glass.json";
    pub const BREAK_GLASS_LOG: &str = "break-glass.log";
    /// The keys learned from the Kubernetes Node object, cached.
    pub const KUBE_KEYS: &str = "kube-keys.json";
}

/// The agent's view of its channel, refreshed every few seconds in `link.json`, so
/// the helper can tell how long the bastion has been unreachable even when the
/// agent itself is down (then the last refresh is when it was last known up).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkState {
    pub up: bool,
    /// When the channel last went down (meaningful when `up` is false).
    pub down_since_ms: i64,
    /// When the agent last wrote this file.
    pub written_ms: i64,
}

impl LinkState {
    /// Since when the bastion counts as unreachable, read by the helper when the
    /// agent does not answer: if the file says "up", the agent died after its last
    /// refresh, taking the only path to the bastion with it.
    pub fn unreachable_since_agent_silent(&self) -> i64 {
        if self.up {
            self.written_ms
        } else {
            self.down_since_ms.min(self.written_ms)
        }
    }
}

/// Break-glass keys from the agent's configuration, copied for the helper.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassFile {
    /// `<algorithm> <base64>` keys.
    pub keys: Vec<String>,
    /// Printed only after the bastion has been unreachable this long.
    pub grace_secs: u64,
}

/// Checks a key as `<algorithm> <base64>`: the algorithm a plain token and the body
/// base64, so nothing else can ride along into an `authorized_keys` line.
pub fn check_key_text(key: &str) -> bool {
    let mut parts = key.split(' ');
    let (Some(alg), Some(body), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let alg_ok = !alg.is_empty()
        && alg.len() <= 64
        && alg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-@._".contains(&b));
    let body_ok = !body.is_empty()
        && body.len() <= MAX_PUBLIC_KEY_LEN
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    alg_ok && body_ok
}

/// `YYYYMMDDHHMMSSZ` (UTC) for `expiry-time=`; with the `Z`, sshd reads it as UTC.
pub fn expiry_time(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok()?;
    Some(format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// The `authorized_keys` line for a live grant and login, or `None` when the grant
/// has expired, does not cover the login, or any field is malformed.
///
/// `restrict` turns off everything; a shell needs a pty, so that is given back.
/// Port forwarding is given back only when the role names destinations, and then
/// only to them (`permitopen`); remote forwarding stays off, since `permitlisten`
/// names only [`NO_LISTEN`]. Agent and X11 forwarding stay off.
pub fn authorized_keys_line(g: &Grant, login: &str, now_ms: i64) -> Option<String> {
    if !g.is_live(now_ms) || !g.allows_login(login) {
        return None;
    }
    if !check_key_text(&g.public_key)
        || validate::name("user", &g.user).is_err()
        || !g.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        || g.id.is_empty()
        || g.id.len() > 64
    {
        return None;
    }
    if g.forward_to.len() > crate::admin::MAX_FORWARD_TO
        || g.forward_to
            .iter()
            .any(|t| validate::forward_target(t).is_err())
    {
        return None;
    }
    let expiry = expiry_time(g.expires_at_ms)?;
    let mut forwarding = String::new();
    if !g.forward_to.is_empty() {
        forwarding.push_str("port-forwarding,");
        for t in &g.forward_to {
            forwarding.push_str(&format!("permitopen=\"{t}\","));
        }
        forwarding.push_str(&format!("permitlisten=\"{NO_LISTEN}\","));
    }
    Some(format!(
        "restrict,pty,{forwarding}expiry-time=\"{expiry}\",from=\"{GRANT_FROM}\" {} postern:user={}:grant={}",
        g.public_key, g.user, g.id
    ))
}

/// The only listen address a grant permits for `ssh -R`: sshd has no
/// `permitlisten="none"` (it refuses the whole key line), so the grant names an
/// address from TEST-NET-1 (RFC 5737, documentation only), port 1, which nothing
/// routes to: remote forwarding is refused for every address anyone could reach.
pub const NO_LISTEN: &str = "192.0.2.1:1";

/// The line printed for a break-glass key from the agent's configuration (already
/// checked when loaded): no `from=`, since it exists for when the bastion path is
/// gone, but still no agent or X11 forwarding.
pub fn break_glass_line(key: &str) -> Option<String> {
    let mut parts = key.split_whitespace();
    let alg = parts.next()?;
    let body = parts.next()?;
    let key = format!("{alg} {body}");
    check_key_text(&key).then(|| format!("restrict,pty {key} postern:break-glass"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_names_follow_openssh() {
        assert_eq!(known_hosts_name("127.0.0.1:2222"), "[127.0.0.1]:2222");
        assert_eq!(
            known_hosts_name("bastion.example.com:22"),
            "bastion.example.com"
        );
        assert_eq!(
            known_hosts_name("bastion.example.com"),
            "bastion.example.com"
        );
        assert_eq!(known_hosts_name("[::1]:2222"), "[::1]:2222");
        assert_eq!(known_hosts_name("[::1]:22"), "::1");
    }

    fn grant() -> Grant {
        Grant {
            id: "g-1".into(),
            user: "alice".into(),
            public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBc6".into(),
            fingerprint: "SHA256:x".into(),
            logins: vec!["root".into()],
            // 2030-01-02T03:04:05Z
            expires_at_ms: 1_893_553_445_000,
            forward_to: vec![],
            once: false,
        }
    }

    #[test]
    fn a_live_grant_prints_one_restricted_line() {
        let line = authorized_keys_line(&grant(), "root", 0).expect("line");
        assert_eq!(
            line,
            "restrict,pty,expiry-time=\"20300102030405Z\",from=\"127.0.0.1,::1\" \
             ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBc6 postern:user=alice:grant=g-1"
        );
    }

    /// Forwarding only where the role says, and never remote forwarding.
    #[test]
    fn forwarding_is_the_roles_and_local_only() {
        let mut g = grant();
        g.forward_to = vec!["127.0.0.1:5432".into(), "db.internal:6379".into()];
        let line = authorized_keys_line(&g, "root", 0).expect("line");
        assert_eq!(
            line,
            "restrict,pty,port-forwarding,permitopen=\"127.0.0.1:5432\",permitopen=\"db.internal:6379\",\
             permitlisten=\"192.0.2.1:1\",expiry-time=\"20300102030405Z\",from=\"127.0.0.1,::1\" \
             ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBc6 postern:user=alice:grant=g-1"
        );
        // A destination that could break out of its quotes spoils the whole grant.
        g.forward_to = vec!["h:1\",command=\"sh".into()];
        assert_eq!(authorized_keys_line(&g, "root", 0), None);
    }

    #[test]
    fn expired_other_login_and_injected_fields_print_nothing() {
        let g = grant();
        assert!(authorized_keys_line(&g, "root", g.expires_at_ms).is_none());
        assert!(authorized_keys_line(&g, "postgres", 0).is_none());
        let mut any = grant();
        any.logins.clear();
        assert!(authorized_keys_line(&any, "postgres", 0).is_some());
        for bad in [
            "ssh-ed25519 AAAA\nssh-rsa BBBB",
            "command=\"sh\" ssh-ed25519 AAAA",
            "ssh-ed25519 AAAA comment",
            "ssh-ed25519",
            "",
        ] {
            let mut g = grant();
            g.public_key = bad.into();
            assert!(authorized_keys_line(&g, "root", 0).is_none(), "{bad:?}");
        }
        let mut g = grant();
        g.user = "al ice\n".into();
        assert!(authorized_keys_line(&g, "root", 0).is_none());
        let mut g = grant();
        g.id = "x\"y".into();
        assert!(authorized_keys_line(&g, "root", 0).is_none());
    }

    #[test]
    fn break_glass_lines_drop_comments_and_refuse_options() {
        assert_eq!(
            break_glass_line("ssh-ed25519 AAAA oncall@laptop").as_deref(),
            Some("restrict,pty ssh-ed25519 AAAA postern:break-glass")
        );
        assert!(break_glass_line("command=\"x\" ssh-ed25519 AAAA").is_none());
    }
}
