//! Which bastion, which token and which project/edge a command uses: flags,
//! then the environment, then the stored login; a project or edge left out is
//! the only one the user can see.

use std::path::PathBuf;

use postern_client::Client;

use crate::{CliError, ProjectOnly, Scope, config};

#[derive(Debug, Default)]
pub struct Global {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

/// What every command against the bastion needs.
#[derive(Debug)]
pub struct Ctx {
    pub client: Client,
}

/// A token from `--token-file`, else `POSTERN_TOKEN`.
pub fn token_from(global: &Global) -> Result<Option<String>, CliError> {
    if let Some(f) = &global.token_file {
        let t = crate::config::read_limited(f, 8192, "the token file")?;
        let t = String::from_utf8(t)
            .map_err(|_| CliError::Usage(format!("the token file {} is not text", f.display())))?;
        return check_token(t).map(Some);
    }
    match std::env::var("POSTERN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => check_token(t).map(Some),
        _ => Ok(None),
    }
}

/// A token is one line of visible ASCII, as the bastion issues them.
pub fn check_token(t: String) -> Result<String, CliError> {
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(CliError::Usage("the token is empty".into()));
    }
    if t.len() > 4096 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CliError::Usage(
            "that is not an API token (expected one line such as pat_…)".into(),
        ));
    }
    Ok(t)
}

pub fn tls(
    ca_file: Option<&PathBuf>,
) -> Result<Option<std::sync::Arc<postern_client::TlsConfig>>, CliError> {
    let Some(f) = ca_file else { return Ok(None) };
    let pem = crate::config::read_limited(f, 1024 * 1024, "the CA file")?;
    postern_client::tls_config(Some(&pem))
        .map(Some)
        .map_err(|e| CliError::Usage(format!("{}: {e}", f.display())))
}

impl Ctx {
    pub fn new(global: &Global) -> Result<Ctx, CliError> {
        let stored = config::load()?;
        let url = match (&global.url, &stored) {
            (Some(u), _) => u.clone(),
            (None, Some(p)) => p.url.clone(),
            (None, None) => {
                return Err(CliError::Usage(
                    "not logged in: run postern login URL (or set POSTERN_URL and POSTERN_TOKEN)"
                        .into(),
                ));
            }
        };
        let token = match token_from(global)? {
            Some(t) => t,
            // The stored token belongs to the stored bastion only.
            None => match &stored {
                Some(p) if global.url.as_ref().is_none_or(|u| same_url(u, &p.url)) => {
                    p.token.clone()
                }
                _ => {
                    return Err(CliError::Usage(format!(
                        "no token for {url}: run postern login {url} (or set POSTERN_TOKEN)"
                    )));
                }
            },
        };
        let ca = global
            .ca_file
            .clone()
            .or_else(|| stored.as_ref().and_then(|p| p.ca_file.clone()));
        let client = Client::new(&url, Some(token), tls(ca.as_ref())?)?;
        Ok(Ctx { client })
    }

    /// The project: the one given, else the only one the user can see.
    pub async fn project(&self, p: &Option<String>) -> Result<String, CliError> {
        if let Some(p) = p {
            return Ok(p.clone());
        }
        let projects = self.client.projects().await?;
        match projects.as_slice() {
            [one] => Ok(one.name.clone()),
            [] => Err(CliError::Usage(
                "you can see no project: ask an org admin for a role on one".into(),
            )),
            many => Err(CliError::Usage(format!(
                "which project? give -p PROJECT (or set POSTERN_PROJECT); you can see: {}",
                names(many.iter().map(|p| p.name.as_str()))
            ))),
        }
    }

    pub async fn project_of(&self, s: &ProjectOnly) -> Result<String, CliError> {
        self.project(&s.project).await
    }

    /// The project and edge: as given, else the only ones there are.
    pub async fn scope(&self, s: &Scope) -> Result<(String, String), CliError> {
        let project = self.project(&s.project).await?;
        let shown = crate::output::safe(&project);
        if let Some(e) = &s.edge {
            return Ok((project, e.clone()));
        }
        let edges = self.client.edges(&project).await?;
        match edges.as_slice() {
            [one] => Ok((project, one.name.clone())),
            [] => Err(CliError::Usage(format!(
                "project {shown} has no edge yet: a project admin makes one with postern edges create NAME -p {shown}"
            ))),
            many => Err(CliError::Usage(format!(
                "which edge of {shown}? give -e EDGE (or set POSTERN_EDGE); it has: {}",
                names(many.iter().map(|e| e.name.as_str()))
            ))),
        }
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

/// At most 20 names, comma-separated.
fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = it.collect();
    let mut s = all
        .iter()
        .take(20)
        .map(|n| crate::output::safe(n))
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > 20 {
        s.push_str(&format!(" and {} more", all.len() - 20));
    }
    s
}
