//! `postern login`, `logout` and `whoami`.

use std::io::{IsTerminal, Read};

use clap::Args;
use postern_client::Client;

use crate::context::{Ctx, Global, check_token, tls, token_from};
use crate::output::{json, safe};
use crate::{CliError, config};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The bastion's REST API, e.g. http://127.0.0.1:8080 or https://bastion.example.com
    url: String,
}

/// Checks the token against the bastion before storing it, so a login that
/// succeeds is one that works.
pub async fn login(global: &Global, a: LoginArgs) -> Result<(), CliError> {
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
             that it has not expired or been revoked; an org admin makes a new one with \
             postern users token NAME",
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

pub fn logout() -> Result<(), CliError> {
    if config::remove()? {
        crate::outln!(
            "logged out: the stored token is deleted (it stays valid until it expires or is revoked)"
        );
    } else {
        crate::outln!("not logged in");
    }
    Ok(())
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
