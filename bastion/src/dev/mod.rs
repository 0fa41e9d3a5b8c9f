//! `postern-bastion dev`: the five-minute experience. On first start it makes org
//! `default`, project `demo`, edge `local` and the org admin `admin`, writes the
//! admin's API token and a ready join command (and, when it serves an agent
//! package, the one-line install) into the data directory, and enrolls
//! one demo agent (`demo-node`) through the real agent port. Later starts reuse
//! everything. When the machine has sshd, the demo node gets its own (see
//! `sshd`), and the user's public key is registered for `admin`.

pub mod sshd;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use postern_agent::{Agent, AgentOptions, Identity, JoinRequest};
use serde_json::json;
use thiserror::Error;

use crate::audit::Event;
use crate::clock::now_ms;
use crate::fsutil::write_private;
use crate::http::ApiError;
use crate::state::Shared;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum DevError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    #[error("demo agent: {0}")]
    Agent(String),
}

#[derive(Debug, Clone)]
pub struct DevFiles {
    pub token_file: PathBuf,
    pub join_file: PathBuf,
    /// The one-line install and join (`install-command`), when the bastion
    /// serves an agent package; `None` otherwise.
    pub install_file: Option<PathBuf>,
}

/// Creates the demo tenancy if missing; returns where the token and join command are.
pub async fn bootstrap(shared: &Arc<Shared>, data_dir: &Path) -> Result<DevFiles, DevError> {
    let mut files = DevFiles {
        token_file: data_dir.join("admin.token"),
        join_file: data_dir.join("join-command"),
        install_file: None,
    };
    if shared.store.org_by_name("default").await?.is_some()
        && files.token_file.exists()
        && files.join_file.exists()
    {
        files.install_file = write_install_command(shared, data_dir, &files.join_file)?;
        return Ok(files);
    }
    // The org and its admin, exactly as `postern-bastion init` makes them.
    let token =
        crate::tenancy_init::init(&shared.store, "default", "admin", 365 * 24 * 3600).await?;
    let org = shared
        .store
        .org_by_name("default")
        .await?
        .ok_or_else(|| StoreError::NotFound("org \"default\"".into()))?;
    let now = now_ms();
    let project = match shared.store.project_by_name(&org.id, "demo").await? {
        Some(p) => p,
        None => shared.store.create_project(&org.id, "demo", now).await?,
    };
    let edge = match shared.store.edge_by_name(&project.id, "local").await? {
        Some(e) => e,
        None => shared.store.create_edge(&project.id, "local", now).await?,
    };
    write_private(&files.token_file, format!("{}\n", token.token).as_bytes())
        .map_err(|e| DevError::Write(files.token_file.display().to_string(), e))?;
    let enroll = crate::http::issue_enrollment_token(
        shared,
        &edge,
        Some("admin"),
        30 * 24 * 3600,
        1000,
        true,
    )
    .await?;
    write_private(
        &files.join_file,
        format!("{}\n", enroll.join_command).as_bytes(),
    )
    .map_err(|e| DevError::Write(files.join_file.display().to_string(), e))?;
    files.install_file = write_install_command(shared, data_dir, &files.join_file)?;
    shared
        .audit
        .batched(
            Event::new("dev.bootstrap", "ok")
                .org(&org.id)
                .actor("admin")
                .project("demo")
                .detail(json!({ "edge": "local", "user": "admin" })),
        )
        .await;
    Ok(files)
}

/// Enrolls the demo agent on first start (through the real agent port), then
/// returns it ready to run.
pub async fn demo_agent(
    data_dir: &Path,
    join_file: &Path,
    sshd_port: Option<u16>,
) -> Result<Agent, DevError> {
    let dir = data_dir.join("demo-agent");
    let identity = if Identity::is_enrolled(&dir) {
        Identity::load(&dir).map_err(|e| DevError::Agent(e.to_string()))?
    } else {
        let line = std::fs::read_to_string(join_file)
            .map_err(|e| DevError::Write(join_file.display().to_string(), e))?;
        let (controller, token, ca_hash) = parse_join_command(&line)
            .ok_or_else(|| DevError::Agent("join-command is malformed".into()))?;
        postern_agent::join(&JoinRequest {
            controller,
            token,
            ca_hash,
            hostname: "demo-node".into(),
            data_dir: Some(dir),
        })
        .await
        .map_err(|e| DevError::Agent(e.to_string()))?
    };
    let mut options = AgentOptions::default();
    if let Some(port) = sshd_port {
        options.sshd_port = port;
    }
    Ok(Agent::new(identity, options))
}

/// Registers the public key of whoever runs `dev` for `admin`, so that their
/// plain `ssh -J` works; answers what to tell them, and the private key's path
/// when there is one beside it.
pub async fn register_users_key(
    shared: &Arc<Shared>,
    api: &str,
    data_dir: &Path,
) -> (String, Option<PathBuf>) {
    let (note, public) = register_key(shared, api, data_dir).await;
    let private = public
        .and_then(|p| {
            p.to_str()
                .and_then(|s| s.strip_suffix(".pub"))
                .map(PathBuf::from)
        })
        .filter(|p| p.exists());
    (note, private)
}

async fn register_key(
    shared: &Arc<Shared>,
    api: &str,
    data_dir: &Path,
) -> (String, Option<PathBuf>) {
    let how = format!(
        "add one with: postern login http://{api} < {}; postern keys add",
        data_dir.join("admin.token").display()
    );
    let Some((path, line)) = sshd::users_public_key() else {
        return (
            format!("no public key in ~/.ssh (make one with ssh-keygen -t ed25519), then {how}"),
            None,
        );
    };
    let key = match postern_api::pubkey::parse_user_key(&line) {
        Ok(k) => k,
        Err(e) => {
            return (
                format!("{} is not a key Postern takes ({e}); {how}", path.display()),
                None,
            );
        }
    };
    let user = match shared.store.user_by_name("admin").await {
        Ok(Some(u)) => u,
        _ => return (format!("user admin not found; {how}"), None),
    };
    let added = shared
        .store
        .add_ssh_key(
            &crate::store::NewSshKey {
                user_id: &user.id,
                fingerprint: &key.fingerprint,
                algorithm: &key.algorithm,
                public_key: &key.public_key,
                comment: &key.comment,
            },
            postern_api::ssh::MAX_KEYS_PER_USER,
            now_ms(),
        )
        .await;
    let note = match added {
        Ok(_) => format!("registered your key {} for admin", path.display()),
        Err(StoreError::Conflict(_)) => format!("your key {} is registered", path.display()),
        Err(e) => {
            return (
                format!("cannot register {} ({e}); {how}", path.display()),
                None,
            );
        }
    };
    (note, Some(path))
}

/// Writes `install-command` beside `join-command`, for the same token, when
/// the bastion serves an agent package; removes one left by an earlier start
/// that did, so the file never names a package that is not served.
fn write_install_command(
    shared: &Shared,
    data_dir: &Path,
    join_file: &Path,
) -> Result<Option<PathBuf>, DevError> {
    let file = data_dir.join("install-command");
    if shared.settings.agent_packages.is_none() {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DevError::Write(file.display().to_string(), e)),
        }
        return Ok(None);
    }
    let line = std::fs::read_to_string(join_file)
        .map_err(|e| DevError::Write(join_file.display().to_string(), e))?;
    let (controller, token, ca_hash) = parse_join_command(&line)
        .ok_or_else(|| DevError::Agent("join-command is malformed".into()))?;
    let command = crate::agents::packages::install_command(
        shared.pki.ca_pem(),
        &controller,
        &token,
        &ca_hash,
    );
    write_private(&file, format!("{command}\n").as_bytes())
        .map_err(|e| DevError::Write(file.display().to_string(), e))?;
    Ok(Some(file))
}

/// Reads `--controller`, `--token` and `--ca-hash` out of a join command line.
pub fn parse_join_command(line: &str) -> Option<(String, String, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let get = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    };
    Some((get("--controller")?, get("--token")?, get("--ca-hash")?))
}
