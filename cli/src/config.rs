//! The stored login: which bastion and which token, in the user's config
//! directory, readable by the user only (the token is a bearer secret).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CliError;

/// No `Debug`: it holds the token.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub url: String,
    pub token: String,
    /// A private CA for an `https://` bastion (a path, as given at login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The session's id, when `token` is a login session (not a bot's token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When the session ends (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Where a session's SSH key and certificate live: `<config dir>/ssh`.
pub fn ssh_dir() -> Result<PathBuf, CliError> {
    Ok(dir()?.join("ssh"))
}

/// `$POSTERN_CONFIG_DIR`, else `$XDG_CONFIG_HOME/postern`, else
/// `~/.config/postern`.
pub fn dir() -> Result<PathBuf, CliError> {
    if let Some(d) = std::env::var_os("POSTERN_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("postern"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("postern")),
        None => Err(CliError::Usage(
            "cannot find your config directory: set HOME or POSTERN_CONFIG_DIR".into(),
        )),
    }
}

pub fn profile_path() -> Result<PathBuf, CliError> {
    Ok(dir()?.join("login.json"))
}

/// The stored login, when there is one.
pub fn load() -> Result<Option<Profile>, CliError> {
    let path = profile_path()?;
    if !path.exists() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&read_limited(&path, 64 * 1024, "your login")?).into_owned();
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} is readable by others and holds your token: chmod 600 it, or log in again",
            path.display()
        );
    }
    serde_json::from_str(&text).map(Some).map_err(|e| {
        CliError::Usage(format!(
            "your login {} is damaged ({e}): log in again with postern login URL",
            path.display()
        ))
    })
}

/// Writes the login atomically, 0600 in a 0700 directory.
pub fn save(p: &Profile) -> Result<PathBuf, CliError> {
    let path = profile_path()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let fail = |what: &str, e: std::io::Error| {
        CliError::Usage(format!("cannot {what} {}: {e}", dir.display()))
    };
    // A directory made here is the user's only; one that exists is theirs to
    // keep as it is (the file itself is 0600 either way).
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| fail("create", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail("restrict", e))?;
    }
    write_private(&path, &serde_json::to_string_pretty(p).unwrap_or_default())?;
    Ok(path)
}

/// Replaces `path` atomically with `text`, readable by the user only (the
/// project's one way to write a secret file).
pub fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    postern_secret_files::write_private(path, text.as_bytes())
        .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))
}

/// A local file the user named, read whole only if it is at most `max`
/// bytes (`/dev/zero` or a wrong path to a disk image must not fill memory).
pub fn read_limited(path: &Path, max: usize, what: &str) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let fail =
        |e: std::io::Error| CliError::Usage(format!("cannot read {what} {}: {e}", path.display()));
    let mut out = Vec::new();
    std::fs::File::open(path)
        .map_err(fail)?
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(fail)?;
    if out.len() > max {
        return Err(CliError::Usage(format!(
            "{what} {} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(out)
}

/// Forgets the login; `false` when there was none.
pub fn remove() -> Result<bool, CliError> {
    let path = profile_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CliError::Usage(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
    }
}
