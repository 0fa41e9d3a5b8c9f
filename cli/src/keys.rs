//! `postern keys` (your SSH public keys at the bastion) and `postern
//! ssh-config` (an ssh_config block with the bastion's host key known in
//! advance, so that plain `ssh NODE` and Ansible go through the bastion).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use postern_api::admin::NodeState;

use crate::output::{json, safe, table};
use crate::{CliError, Ctx, config, ssh_names};

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    action: Option<KeysCmd>,
    /// Whose keys (org admins may manage anyone's; default: yours)
    #[arg(long, global = true)]
    user: Option<String>,
    /// JSON, as the API answers it
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Register a public key (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub)
    Add { file: Option<PathBuf> },
    /// The registered keys (the default)
    List,
    /// Remove a key, by its id or its SHA256 fingerprint
    Rm { key: String },
}

async fn user(ctx: &Ctx, given: &Option<String>) -> Result<String, CliError> {
    match given {
        Some(u) => Ok(u.clone()),
        None => Ok(ctx.client.whoami().await?.name),
    }
}

pub async fn keys(ctx: &Ctx, a: KeysArgs) -> Result<(), CliError> {
    let user = user(ctx, &a.user).await?;
    match a.action.unwrap_or(KeysCmd::List) {
        KeysCmd::List => {
            let keys = ctx.client.ssh_keys(&user).await?;
            if a.json {
                return json(&keys);
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.fingerprint.clone(),
                        k.algorithm.clone(),
                        k.comment.clone(),
                        k.created_at.clone(),
                    ]
                })
                .collect();
            table(&["ID", "FINGERPRINT", "TYPE", "COMMENT", "ADDED"], &rows);
            Ok(())
        }
        KeysCmd::Add { file } => {
            let path = match file {
                Some(f) => f,
                None => default_public_key().ok_or_else(|| {
                    CliError::Usage(
                        "no ~/.ssh/id_ed25519.pub (nor ecdsa, nor rsa): make one with ssh-keygen -t ed25519, or give the file".into(),
                    )
                })?,
            };
            let text = config::read_limited(&path, 16 * 1024, "the public key")?;
            let text = String::from_utf8_lossy(&text);
            let k = ctx.client.add_ssh_key(&user, text.trim()).await?;
            if a.json {
                return json(&k);
            }
            crate::outln!(
                "added {} {} for {}",
                safe(&k.algorithm),
                safe(&k.fingerprint),
                safe(&k.user)
            );
            Ok(())
        }
        KeysCmd::Rm { key } => {
            let keys = ctx.client.ssh_keys(&user).await?;
            let found = keys
                .iter()
                .find(|k| k.id == key || k.fingerprint == key)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "{} has no key {}: postern keys list shows their ids and fingerprints",
                        safe(&user),
                        safe(&key)
                    ))
                })?;
            ctx.client.delete_ssh_key(&user, &found.id).await?;
            crate::outln!(
                "removed {}; sessions that used it are closed",
                safe(&found.fingerprint)
            );
            Ok(())
        }
    }
}

fn default_public_key() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME")?);
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .map(|f| home.join(".ssh").join(f))
        .find(|p| p.is_file())
}

#[derive(Debug, Args)]
pub struct SshConfigArgs {
    /// The login on the nodes
    #[arg(long, default_value = "root")]
    login: String,
    /// The private key ssh should offer (default: ssh's own choice)
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Write it to the config directory and Include it from ~/.ssh/config,
    /// instead of printing it
    #[arg(long)]
    install: bool,
}

/// The bastion's name in the written ssh_config.
const ALIAS: &str = "postern-bastion";

/// Names that may never be a plain `Host` name, whatever the user's setup: a
/// domain (github.com), the bastion's alias (a node so named would make every
/// jump recurse), localhost, and a name that reads as an IP address (a node
/// enrolled before such names were refused).
fn plain_name_ok(h: &str) -> bool {
    !h.contains('.')
        && h != ALIAS
        && !h.eq_ignore_ascii_case("localhost")
        && !postern_api::validate::ip_shaped(h)
}

/// Most node names written as plain `Host` names; beyond, `NODE.EDGE.PROJECT`.
const MAX_PLAIN_NAMES: usize = 10_000;
const MAX_EDGES: usize = 500;
/// How long the resolver may take over all the plain names; a name it has not
/// answered for by then is not written.
const RESOLVE_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);
/// Names listed in the written file's comment of those left out, at most.
const MAX_LISTED: usize = 20;

pub async fn ssh_config(ctx: &Ctx, a: SshConfigArgs) -> Result<(), CliError> {
    postern_api::validate::login(&a.login).map_err(|e| CliError::Usage(e.to_string()))?;
    let ep = ctx.client.ssh_endpoint().await?;
    let (host, port) = split_address(&ep.address)?;
    // What the bastion sends goes into the user's ssh configuration: every
    // part is checked as the bastion checks it, so no answer can add an ssh
    // option (a ProxyCommand, say) to it.
    let untrusted = |what: &str| {
        CliError::Usage(format!(
            "the bastion sent an unusable {what}; not writing an ssh configuration from it"
        ))
    };
    postern_api::validate::name("user", &ep.user).map_err(|_| untrusted("user name"))?;
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
    {
        return Err(untrusted("SSH address"));
    }
    let key_ok = ep.host_key.split(' ').count() == 2
        && ep.host_key.starts_with("ssh-")
        && ep
            .host_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=-@. ".contains(&b));
    if !key_ok {
        return Err(untrusted("host key"));
    }
    let known_line = format!(
        "{} {}",
        postern_api::ssh::known_hosts_name(&ep.address),
        ep.host_key
    );
    let dir = config::dir()?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let known = dir.join("known_hosts");

    // Every node the user can see, by plain name when that is unique, and
    // every edge by the NODE.EDGE.PROJECT pattern the bastion also accepts.
    let mut patterns = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let named = |what, v: &str| postern_api::validate::name(what, v).is_ok();
    'all: for p in ctx.client.projects().await? {
        if !named("project", &p.name) {
            continue;
        }
        for e in ctx.client.edges(&p.name).await? {
            if patterns.len() >= MAX_EDGES {
                break 'all;
            }
            if !named("edge", &e.name) {
                continue;
            }
            patterns.push(format!("*.{}.{}", e.name, p.name));
            for n in ctx.client.nodes(&p.name, &e.name).await? {
                // Only nodes an admin let in: a pending node's name is
                // whatever its joiner chose.
                let admitted = matches!(n.state, NodeState::Approved | NodeState::Provisioned);
                if admitted && postern_api::validate::hostname(&n.hostname).is_ok() {
                    *seen.entry(n.hostname).or_default() += 1;
                }
            }
        }
    }
    // A plain name would take over `ssh NAME` for the user: only unique,
    // single-label names (see plain_name_ok), and of those only the ones
    // neither the user's ssh configuration nor their resolver gives a
    // meaning to, since the joiner chose the name.
    let candidates: Vec<String> = seen
        .iter()
        .filter(|(h, n)| **n == 1 && plain_name_ok(h))
        .map(|(h, _)| h.clone())
        .take(MAX_PLAIN_NAMES)
        .collect();
    let file = dir.join("ssh_config");
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let (plain, withheld) = match &home {
        Some(home) => {
            let used = ssh_names::UsedNames::load(home, &file);
            let (in_config, free): (Vec<String>, Vec<String>) = if used.canonicalizes() {
                // ssh would complete any plain name with the user's own
                // domains: none is safe to take.
                (candidates, Vec::new())
            } else {
                candidates.into_iter().partition(|h| used.uses(h))
            };
            // Looked up while nothing else waits on this command: blocking
            // here holds up no other work.
            let answered = ssh_names::resolved(&free, RESOLVE_BUDGET);
            let (resolving, plain): (Vec<String>, Vec<String>) =
                free.into_iter().partition(|h| answered.contains(h));
            let withheld = [
                (
                    if used.canonicalizes() {
                        "your ssh configuration canonicalizes host names (CanonicalizeHostname), so any of them may be one of your hosts"
                    } else {
                        "your ssh configuration has them"
                    },
                    in_config,
                ),
                ("your resolver knows them, or did not answer", resolving),
            ];
            (plain, withheld)
        }
        None => (
            Vec::new(),
            [
                (
                    "HOME is not set, so your ssh configuration is unknown",
                    candidates,
                ),
                ("", Vec::new()),
            ],
        ),
    };
    let identity = a
        .identity
        .as_ref()
        .map(|p| {
            let p = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            Ok::<_, CliError>(format!(
                "  IdentityFile {}\n  IdentitiesOnly yes\n",
                quoted(&p)?
            ))
        })
        .transpose()?;
    // Signed in with a session: its key and certificate (made by postern
    // login), for the bastion and the nodes alike, unless --identity says
    // otherwise. ssh reads the certificate beside the key by itself; it is
    // named too, so a reader of the file sees where it comes from.
    let session_key = config::ssh_dir()?.join("id_ed25519");
    let identity = match identity {
        Some(i) => i,
        None if session_key.with_file_name("id_ed25519-cert.pub").exists() => format!(
            "  IdentityFile {}\n  CertificateFile {}\n  IdentitiesOnly yes\n",
            quoted(&session_key)?,
            quoted(&session_key.with_file_name("id_ed25519-cert.pub"))?
        ),
        None => String::new(),
    };
    let alias = ALIAS;
    // The bastion's login goes with every jump: the user's own settings come
    // first (see ssh_names), and a `User` of theirs for every host must not
    // become the login at the bastion.
    let jump = format!("{}@{alias}", ep.user);
    let mut text = format!(
        "# Postern: SSH through the bastion at {url} (written by postern ssh-config).\n\
         # The bastion's host key is in {known}; each node's own host key is\n\
         # accepted on first use and pinned in {nodes_known}.\n\
         Host {alias}\n  HostName {host}\n  Port {port}\n  User {user}\n  \
         UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n{identity}",
        url = ctx.client.endpoint().url,
        known = quoted(&known)?,
        nodes_known = quoted(&dir.join("known_hosts_nodes"))?,
        user = ep.user,
    );
    for (why, names) in &withheld {
        if names.is_empty() {
            continue;
        }
        let mut listed = names
            .iter()
            .take(MAX_LISTED)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        if names.len() > MAX_LISTED {
            listed.push_str(&format!(" and {} more", names.len() - MAX_LISTED));
        }
        text.push_str(&format!(
            "# Only as NODE.EDGE.PROJECT, not by plain name ({why}): {listed}\n"
        ));
    }
    let mut hosts = plain;
    hosts.extend(patterns);
    if hosts.is_empty() {
        text.push_str("# (no nodes visible yet: run this again once nodes have joined)\n");
    } else {
        // OpenSSH reads long Host lines fine; keep them readable anyway.
        for chunk in hosts.chunks(20) {
            text.push_str(&format!(
                "Host {}\n  User {}\n  ProxyJump {jump}\n  UserKnownHostsFile {}\n  StrictHostKeyChecking accept-new\n{identity}",
                chunk.join(" "),
                a.login,
                quoted(&dir.join("known_hosts_nodes"))?
            ));
        }
    }
    if !a.install {
        // Printing must not break what an earlier --install set up, which
        // reads this same file (for another address, say, when this bastion
        // is a replica behind a load balancer): the line is added, nothing
        // is replaced.
        add_line(&known, &known_line)?;
        crate::out!("{text}");
        return Ok(());
    }
    // What is installed is written whole, the key it trusts included, and
    // only once everything it is made of was fetched.
    config::write_private(&known, &format!("{known_line}\n"))?;
    config::write_private(&file, &text)?;
    let home =
        home.ok_or_else(|| CliError::Usage("HOME is not set: cannot find ~/.ssh/config".into()))?;
    let ssh_dir = home.join(".ssh");
    // A config that is a link (to dotfiles, say) is edited where it points.
    let user_config = match std::fs::canonicalize(ssh_dir.join("config")) {
        Ok(target) => target,
        Err(_) => ssh_dir.join("config"),
    };
    let include = format!("Include {}", quoted_plain(&file)?);
    let current = match std::fs::read_to_string(&user_config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(CliError::Usage(format!(
                "cannot read {}: {e}",
                user_config.display()
            )));
        }
    };
    // At the end, after `Match all`: every setting of the user's is read
    // first, and so wins (see ssh_names).
    let updated = ssh_names::with_include_last(&current, &include);
    if updated != current {
        std::fs::create_dir_all(&ssh_dir)
            .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", ssh_dir.display())))?;
        config::write_private(&user_config, &updated)?;
    }
    crate::outln!(
        "wrote {} and included it at the end of {} (your own settings come first); now: ssh {}@NODE",
        file.display(),
        user_config.display(),
        a.login
    );
    Ok(())
}

/// Adds `line` to the file at `path` unless it holds it already, keeping
/// every other line as it is.
fn add_line(path: &Path, line: &str) -> Result<(), CliError> {
    let current = if path.exists() {
        config::read_limited(path, 1024 * 1024, "the known hosts file")?
    } else {
        Vec::new()
    };
    let current = String::from_utf8_lossy(&current);
    if current.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    let mut text = current.into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    config::write_private(path, &text)
}

fn split_address(address: &str) -> Result<(String, u16), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "the bastion gave an unusable SSH address {}",
            safe(address)
        ))
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// A path as ssh_config reads it in IdentityFile and UserKnownHostsFile: in
/// double quotes, so spaces stay inside it, and `%` doubled, since those
/// expand %-tokens; a path ssh_config cannot hold is refused.
fn quoted(path: &Path) -> Result<String, CliError> {
    Ok(quoted_plain(path)?.replace('%', "%%"))
}

/// Like [`quoted`], for `Include`, which expands no tokens.
fn quoted_plain(path: &Path) -> Result<String, CliError> {
    let s = path.to_str().ok_or_else(|| {
        CliError::Usage(format!(
            "{} is not UTF-8: ssh_config cannot name it",
            path.display()
        ))
    })?;
    if s.contains(['"', '\\', '\n', '\r']) {
        return Err(CliError::Usage(format!(
            "{s:?} holds a quote, a backslash or a line break: ssh_config cannot name it"
        )));
    }
    Ok(format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_ssh_config_or_refused() {
        assert_eq!(
            quoted(Path::new("/home/a b/.config")).unwrap(),
            "\"/home/a b/.config\""
        );
        assert!(quoted(Path::new("/x\nProxyCommand evil")).is_err());
        assert!(quoted(Path::new("/x\"y")).is_err());
        assert!(quoted(Path::new("/x\\y")).is_err());
        assert_eq!(quoted(Path::new("/100%/a")).unwrap(), "\"/100%%/a\"");
        assert_eq!(quoted_plain(Path::new("/100%/a")).unwrap(), "\"/100%/a\"");
    }

    #[test]
    fn plain_names_never_shadow_domains_the_alias_localhost_or_addresses() {
        assert!(plain_name_ok("web-1"));
        for bad in [
            "github.com",
            "postern-bastion",
            "localhost",
            "LOCALHOST",
            "1234",
            "0x7f",
        ] {
            assert!(!plain_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn ssh_addresses_split_or_are_refused() {
        assert_eq!(
            split_address("127.0.0.1:2222").unwrap(),
            ("127.0.0.1".into(), 2222)
        );
        assert_eq!(split_address("[::1]:22").unwrap(), ("::1".into(), 22));
        for bad in ["host", "host:x", ":22", "a b:22", "h\n:22"] {
            assert!(split_address(bad).is_err(), "{bad:?}");
        }
    }
}
