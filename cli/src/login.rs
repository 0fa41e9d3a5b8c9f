//! `postern login`, `logout`, `whoami` and `invitation accept`.
//!
//! A person signs in with `--user` (password, then a TOTP code when asked):
//! the bastion answers a session, and certifies a fresh SSH key made here for
//! it, written beside the login as `ssh/id_ed25519{,.pub,-cert.pub}` (and
//! added to a running ssh-agent for the session's lifetime). A bot logs in
//! with its API token (pasted, piped, `--token-file` or `POSTERN_TOKEN`).

use std::io::{IsTerminal, Read};
use std::path::Path;

use clap::Args;
use postern_client::Client;

use crate::context::{Ctx, Global, check_token, tls, token_from};
use crate::output::{json, safe};
use crate::{CliError, config};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The bastion's REST API, e.g. http://127.0.0.1:8080 or https://bastion.example.com
    url: String,
    /// Sign in as this local user (password, and a TOTP code when asked);
    /// without it, the CLI takes an API token (bots)
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Read the password from this file (first line) instead of a prompt
    #[arg(long, value_name = "FILE", requires = "user")]
    password_file: Option<std::path::PathBuf>,
    /// The TOTP code (or a recovery code), instead of a prompt
    #[arg(long, value_name = "CODE", requires = "user")]
    code: Option<String>,
    /// A session shorter than the org's maximum, e.g. 2h
    #[arg(long, value_name = "DURATION", requires = "user")]
    ttl: Option<humantime::Duration>,
    /// Do not make an SSH key and certificate for the session
    #[arg(long)]
    no_ssh: bool,
    /// Sign in through the org's identity provider (single sign-on)
    #[arg(
        long,
        value_name = "PROVIDER",
        conflicts_with = "user",
        requires = "org"
    )]
    sso: Option<String>,
    /// The org whose provider `--sso` names
    #[arg(long, value_name = "ORG")]
    org: Option<String>,
    /// With --sso: print a URL and a code to open on any device, and wait
    /// (for machines without a browser)
    #[arg(long, requires = "sso")]
    headless: bool,
}

/// Checks the token against the bastion before storing it, so a login that
/// succeeds is one that works.
pub async fn login(global: &Global, a: LoginArgs) -> Result<(), CliError> {
    if a.user.is_some() {
        return sign_in(global, a).await;
    }
    if a.sso.is_some() {
        return crate::sso::sign_in(
            global,
            a.url,
            a.sso.unwrap_or_default(),
            a.org.unwrap_or_default(),
            a.headless,
            a.no_ssh,
        )
        .await;
    }
    let token = match token_from(global)? {
        Some(t) => t,
        None => read_token()?,
    };
    let client = Client::new(&a.url, Some(token.clone()), tls(global.ca_file.as_ref())?)?;
    let e = client.endpoint();
    let loopback = e.host() == "localhost"
        || e.host()
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !e.is_https() && !loopback {
        eprintln!(
            "warning: {} is plain HTTP to another machine: the token crosses the network in the clear; use https:// (the TLS proxy in front of the bastion)",
            e.url
        );
    }
    let me = client.whoami().await.map_err(|e| match e {
        // The generic 401 text says "log in again", which reads oddly here.
        postern_client::ClientError::Api {
            status: 401,
            message,
            ..
        } => CliError::Usage(format!(
            "the bastion at {} refused this token ({message}): check that it was pasted whole, and \
             that it has not expired or been revoked; a project admin makes a new one for a bot with \
             postern users token NAME (people sign in with postern login URL --sso or --user)",
            client.endpoint().url
        )),
        e => e.into(),
    })?;
    let path = config::save(&config::Profile {
        url: client.endpoint().url.clone(),
        token,
        ca_file: global
            .ca_file
            .as_ref()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())),
        session_id: None,
        expires_at: None,
    })?;
    crate::outln!(
        "logged in to {} as {} (org {}); the token is in {}",
        client.endpoint().url,
        safe(&me.name),
        safe(&me.org),
        path.display()
    );
    Ok(())
}

/// The token from a prompt without echo on a terminal, else from stdin.
fn read_token() -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let text = if stdin.is_terminal() {
        rpassword::prompt_password("API token: ")
            .map_err(|e| CliError::Usage(format!("cannot read the token: {e}")))?
    } else {
        let mut s = String::new();
        stdin
            .lock()
            .take(8192)
            .read_to_string(&mut s)
            .map_err(|e| CliError::Usage(format!("cannot read the token from stdin: {e}")))?;
        s
    };
    if text.trim().is_empty() {
        return Err(CliError::Usage(
            "no token given: paste it at the prompt, pipe it in, or use --token-file / POSTERN_TOKEN"
                .into(),
        ));
    }
    check_token(text)
}

/// A line typed without echo on a terminal, else read from stdin.
fn secret_line(prompt: &str, what: &str) -> Result<String, CliError> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt)
            .map_err(|e| CliError::Usage(format!("cannot read {what}: {e}")));
    }
    let mut s = String::new();
    std::io::stdin()
        .lock()
        .take(4096)
        .read_to_string(&mut s)
        .map_err(|e| CliError::Usage(format!("cannot read {what} from stdin: {e}")))?;
    Ok(s.lines().next().unwrap_or_default().to_string())
}

/// A line typed with echo (a code).
fn plain_line(prompt: &str) -> Result<String, CliError> {
    use std::io::Write;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut s = String::new();
    std::io::stdin()
        .read_line(&mut s)
        .map_err(|e| CliError::Usage(format!("cannot read the code: {e}")))?;
    Ok(s.trim().to_string())
}

fn password_from(file: Option<&Path>, prompt: &str) -> Result<String, CliError> {
    match file {
        Some(f) => {
            let raw = config::read_limited(f, 4096, "the password file")?;
            Ok(String::from_utf8_lossy(&raw)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string())
        }
        None => secret_line(prompt, "the password"),
    }
}

/// A fresh Ed25519 key for a session: (private OpenSSH PEM, public line).
pub fn new_ssh_key(comment: &str) -> Result<(String, String), CliError> {
    let seed: [u8; 32] = rand::random();
    let mut key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| CliError::Usage(format!("cannot encode the SSH key: {e}")))?
        .to_string();
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| CliError::Usage(format!("cannot encode the SSH key: {e}")))?;
    Ok((private, public))
}

/// Signs a person in and stores the session, the SSH key and its certificate.
async fn sign_in(global: &Global, a: LoginArgs) -> Result<(), CliError> {
    let name = a.user.clone().unwrap_or_default();
    let client = Client::new(&a.url, None, tls(global.ca_file.as_ref())?)?;
    let password = password_from(
        a.password_file.as_deref(),
        &format!("password for {name}: "),
    )?;
    if password.is_empty() {
        return Err(CliError::Usage("no password given".into()));
    }
    let key = if a.no_ssh {
        None
    } else {
        Some(new_ssh_key(&format!("postern:{name}"))?)
    };
    let mut body = postern_api::identity::Login {
        name: name.clone(),
        password,
        code: a.code.clone(),
        ttl_seconds: a.ttl.map(|d| d.as_secs() as i64),
        ssh_public_key: key.as_ref().map(|k| k.1.clone()),
    };
    let session = match client.login(&body).await {
        Err(postern_client::ClientError::Api {
            status: 401,
            message,
            ..
        }) if message == postern_api::identity::NEED_CODE && body.code.is_none() => {
            if !std::io::stdin().is_terminal() {
                return Err(CliError::Usage(format!("{message}: pass it with --code")));
            }
            body.code = Some(plain_line("TOTP code (or a recovery code): ")?);
            client.login(&body).await?
        }
        other => other?,
    };
    keep_session(global, &client, &session, key).await
}

/// Stores a session and, when a key was made, its certificate: the session's
/// own (from a password sign-in) or one asked for now (after SSO).
pub async fn keep_session(
    global: &Global,
    client: &Client,
    session: &postern_api::identity::SessionCreated,
    key: Option<(String, String)>,
) -> Result<(), CliError> {
    let path = config::save(&config::Profile {
        url: client.endpoint().url.clone(),
        token: session.token.clone(),
        ca_file: global
            .ca_file
            .as_ref()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())),
        session_id: Some(session.id.clone()),
        expires_at: Some(session.expires_at.clone()),
    })?;
    crate::outln!(
        "logged in to {} as {} (org {}, {}) until {}; the session is in {}",
        client.endpoint().url,
        safe(&session.user),
        safe(&session.org),
        safe(&session.method),
        safe(&session.expires_at),
        path.display()
    );
    if let Some(left) = session.recovery_codes_left {
        crate::outln!("a recovery code was used: {left} left (an org admin can reset your MFA)");
    }
    let Some((private, public)) = key else {
        return Ok(());
    };
    let cert = match &session.ssh_certificate {
        Some(c) => c.clone(),
        None => {
            let with_session = Client::new(
                &client.endpoint().url,
                Some(session.token.clone()),
                tls(global.ca_file.as_ref())?,
            )?;
            with_session.ssh_certificate(&public).await?.certificate
        }
    };
    {
        let dir = config::ssh_dir()?;
        write_ssh_files(&dir, &private, &public, &cert)?;
        crate::outln!(
            "SSH: {} holds your key and a certificate valid until the session ends; `postern ssh-config` uses it",
            dir.display()
        );
        add_to_agent(&dir.join("id_ed25519"), &session.expires_at);
    }
    Ok(())
}

fn write_ssh_files(dir: &Path, private: &str, public: &str, cert: &str) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    config::write_private(&dir.join("id_ed25519"), private)?;
    config::write_private(&dir.join("id_ed25519.pub"), &format!("{public}\n"))?;
    config::write_private(&dir.join("id_ed25519-cert.pub"), &format!("{cert}\n"))?;
    Ok(())
}

/// Adds the session's key (and its certificate, which ssh-add finds beside
/// it) to a running ssh-agent, for as long as the session lasts. Best effort:
/// without an agent, ssh reads the files.
fn add_to_agent(key: &Path, expires_at: &str) {
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        return;
    }
    let secs =
        time::OffsetDateTime::parse(expires_at, &time::format_description::well_known::Rfc3339)
            .map(|t| {
                (t - time::OffsetDateTime::now_utc())
                    .whole_seconds()
                    .max(60)
            })
            .unwrap_or(3600);
    let ok = std::process::Command::new("ssh-add")
        .arg("-q")
        .arg("-t")
        .arg(secs.to_string())
        .arg(key)
        .stdin(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        crate::outln!("SSH: added to your ssh-agent for {secs} s");
    }
}

/// Ends the session at the bastion (when the login is one), then forgets it
/// and its SSH key here.
pub async fn logout(global: &Global) -> Result<(), CliError> {
    let Some(profile) = config::load()? else {
        crate::outln!("not logged in");
        return Ok(());
    };
    if profile.session_id.is_some() {
        let ca = profile.ca_file.clone().or_else(|| global.ca_file.clone());
        let client = Client::new(&profile.url, Some(profile.token.clone()), tls(ca.as_ref())?)?;
        match client.logout().await {
            Ok(()) => crate::outln!("the session is ended at {}", profile.url),
            Err(e) => eprintln!(
                "warning: could not end the session at the bastion ({e}); it ends on its own at {}",
                profile.expires_at.as_deref().unwrap_or("its expiry")
            ),
        }
        let dir = config::ssh_dir()?;
        let key = dir.join("id_ed25519");
        if std::env::var_os("SSH_AUTH_SOCK").is_some() && key.exists() {
            let _ = std::process::Command::new("ssh-add")
                .arg("-q")
                .arg("-d")
                .arg(&key)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        for f in ["id_ed25519", "id_ed25519.pub", "id_ed25519-cert.pub"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let _ = std::fs::remove_file(config::dir()?.join("kube-credential.json"));
        config::remove()?;
        crate::outln!("logged out");
    } else if config::remove()? {
        crate::outln!(
            "logged out: the stored token is deleted (it stays valid until it expires or is revoked)"
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct InvitationArgs {
    #[command(subcommand)]
    cmd: InvitationCmd,
}

#[derive(Debug, clap::Subcommand)]
enum InvitationCmd {
    /// Accept an invitation: set your password and enrol an authenticator app
    Accept {
        /// The bastion's REST API
        url: String,
        /// Read the invitation (piv_…) from this file instead of a prompt
        #[arg(long, value_name = "FILE")]
        invitation_file: Option<std::path::PathBuf>,
        /// Read the new password from this file instead of a prompt
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
        /// Set only a password (when the org does not require MFA)
        #[arg(long)]
        no_totp: bool,
        /// Where to write the TOTP secret for scripts (0600), instead of
        /// asking for a code from an app; the code is then made from it
        #[arg(long, value_name = "FILE", hide = true)]
        totp_secret_file: Option<std::path::PathBuf>,
    },
    /// Make an invitation for a user (org admins)
    Create { user: String },
}

pub async fn invitation(global: &Global, a: InvitationArgs) -> Result<(), CliError> {
    match a.cmd {
        InvitationCmd::Create { user } => {
            let ctx = Ctx::new(global)?;
            let inv = ctx.client.create_invitation(&user).await?;
            crate::outln!(
                "invitation for {} (valid until {}):\n  {}\nthey run: postern invitation accept {}",
                safe(&user),
                safe(&inv.expires_at),
                inv.invitation,
                ctx.client.endpoint().url
            );
            Ok(())
        }
        InvitationCmd::Accept {
            url,
            invitation_file,
            password_file,
            no_totp,
            totp_secret_file,
        } => {
            let client = Client::new(&url, None, tls(global.ca_file.as_ref())?)?;
            let invitation = match invitation_file {
                Some(f) => {
                    String::from_utf8_lossy(&config::read_limited(&f, 4096, "the invitation file")?)
                        .trim()
                        .to_string()
                }
                None => secret_line("invitation (piv_…): ", "the invitation")?,
            };
            let password = password_from(
                password_file.as_deref(),
                "new password (12 characters or more): ",
            )?;
            if password_file.is_none() && std::io::stdin().is_terminal() {
                let again = secret_line("again: ", "the password")?;
                if again != password {
                    return Err(CliError::Usage(
                        "the passwords differ; nothing was changed".into(),
                    ));
                }
            }
            let (totp_secret, totp_code) = if no_totp {
                (None, None)
            } else {
                let secret: [u8; 20] = rand::random();
                let b32 = crate::totp::base32(&secret);
                let code = match &totp_secret_file {
                    Some(f) => {
                        config::write_private(f, &b32)?;
                        crate::totp::code_now(&secret)
                    }
                    None => {
                        let uri = crate::totp::otpauth_uri(&secret, "postern", "Postern");
                        crate::outln!(
                            "Add this to your authenticator app (scan it, or type the secret {b32}):\n"
                        );
                        crate::outln!("{}", crate::totp::qr_text(&uri));
                        crate::outln!("{uri}\n");
                        plain_line("the code your app shows now: ")?
                    }
                };
                (Some(b32), Some(code))
            };
            let body = postern_api::identity::AcceptInvitation {
                invitation,
                password,
                totp_secret,
                totp_code,
            };
            let done = client.accept_invitation(&body).await?;
            crate::outln!(
                "welcome, {} (org {}): log in with postern login {url} --user {}",
                safe(&done.user),
                safe(&done.org),
                safe(&done.user)
            );
            if !done.recovery_codes.is_empty() {
                crate::outln!(
                    "\nRecovery codes, each good once if you lose your authenticator (keep them safe; they are not shown again):"
                );
                for c in &done.recovery_codes {
                    crate::outln!("  {c}");
                }
            }
            Ok(())
        }
    }
}

pub async fn whoami(ctx: &Ctx, as_json: bool) -> Result<(), CliError> {
    let me = ctx.client.whoami().await?;
    if as_json {
        return json(&me);
    }
    crate::outln!(
        "{} (org {}) at {}",
        safe(&me.name),
        safe(&me.org),
        ctx.client.endpoint().url
    );
    for r in &me.roles {
        let on = r
            .project
            .as_deref()
            .map(safe)
            .unwrap_or_else(|| "the whole org".into());
        let logins = if r.logins.is_empty() {
            String::new()
        } else {
            format!(", SSH as {}", safe(&r.logins.join(", ")))
        };
        crate::outln!("  {} on {on}{logins}", r.role);
    }
    if me.roles.is_empty() {
        crate::outln!("  no roles yet: an org admin grants them");
    }
    Ok(())
}
