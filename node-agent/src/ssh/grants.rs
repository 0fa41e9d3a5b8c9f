//! The node's key grants: held in memory for the keys helper's queries and written
//! (atomically, 0600) to `grants.json` in the data directory, so the helper can
//! still answer from the file while the agent is down. Expired grants are dropped
//! on every change and by a periodic prune; they are never served.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use postern_api::ssh::{Grant, GrantsFile, MAX_GRANTS_PER_NODE};
use thiserror::Error;

use crate::fsutil::write_private;

pub use postern_api::ssh::files::GRANTS as GRANTS_FILE;

#[derive(Debug, Error)]
pub enum GrantError {
    #[error("grant {0:?} is malformed: {1}")]
    Invalid(String, &'static str),
    #[error("cannot write the grants file {0}: {1}")]
    Write(String, std::io::Error),
}

#[derive(Debug, Clone, Default)]
pub struct GrantStore {
    inner: Arc<Mutex<Vec<Grant>>>,
    /// Serializes file writes so an older set never overwrites a newer one.
    write: Arc<tokio::sync::Mutex<()>>,
    path: Option<PathBuf>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn check(g: &Grant) -> Result<(), GrantError> {
    let bad = |why| Err(GrantError::Invalid(g.id.clone(), why));
    if !postern_api::ssh::check_key_text(&g.public_key) {
        return bad("public_key is not \"<algorithm> <base64>\"");
    }
    if postern_api::validate::name("user", &g.user).is_err() {
        return bad("user is not a valid name");
    }
    if g.logins
        .iter()
        .any(|l| postern_api::validate::login(l).is_err())
    {
        return bad("a login is not a valid unix login");
    }
    if g.forward_to.len() > postern_api::admin::MAX_FORWARD_TO
        || g.forward_to
            .iter()
            .any(|t| postern_api::validate::forward_target(t).is_err())
    {
        return bad("a forward_to destination is not host:port");
    }
    if g.once
        && (g.logins.len() != 1
            || g.expires_at_ms - now_ms() > postern_api::ssh::ONCE_GRANT_MAX_MS + 5_000)
    {
        // Its login is the one asked for, never "any"; its life a minute (and
        // a little for clocks), so a leaked one is worth little.
        return bad("a just-in-time grant names exactly one login and lives a minute at most");
    }
    if g.id.is_empty()
        || g.id.len() > 64
        || !g.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return bad("id must be 1-64 letters, digits or dashes");
    }
    Ok(())
}

impl GrantStore {
    /// A store backed by `dir/grants.json` (loaded now, keeping only live grants),
    /// or memory only.
    pub fn open(dir: Option<&Path>) -> GrantStore {
        let path = dir.map(|d| d.join(GRANTS_FILE));
        let now = now_ms();
        let grants = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<GrantsFile>(&b).ok())
            .map(|f| {
                f.grants
                    .into_iter()
                    .filter(|g| g.is_live(now) && check(g).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        GrantStore {
            inner: Arc::new(Mutex::new(grants)),
            write: Arc::default(),
            path,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Grant>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the grants of `revoke`d fingerprints, then merges `new` grants: a newer
    /// grant for the same user and key replaces the older, and sets the logins of
    /// that user's other grants (logins follow the user's role, not the key).
    /// Expired grants go too. Persists; returns how many live grants are held.
    pub async fn merge(&self, new: Vec<Grant>, revoke: &[String]) -> Result<usize, GrantError> {
        for g in &new {
            check(g)?;
        }
        if let Some(bad) = revoke
            .iter()
            .find(|f| !postern_api::ssh::check_fingerprint(f))
        {
            return Err(GrantError::Invalid(
                bad.chars().take(80).collect(),
                "a revoked fingerprint is not SHA256:<base64>",
            ));
        }
        let now = now_ms();
        let held = {
            let mut all = self.lock();
            all.retain(|g| g.is_live(now) && !revoke.contains(&g.fingerprint));
            for g in new.into_iter().filter(|g| g.is_live(now)) {
                all.retain(|o| !(o.user == g.user && o.fingerprint == g.fingerprint));
                // A just-in-time grant names one login for one login; the
                // role's logins are the other grants' business, and theirs
                // are not its.
                for o in all
                    .iter_mut()
                    .filter(|o| o.user == g.user && !o.once && !g.once)
                {
                    o.logins.clone_from(&g.logins);
                    o.forward_to.clone_from(&g.forward_to);
                }
                all.push(g);
            }
            if all.len() > MAX_GRANTS_PER_NODE {
                all.sort_by_key(|g| g.expires_at_ms);
                let excess = all.len() - MAX_GRANTS_PER_NODE;
                all.drain(..excess);
            }
            all.len()
        };
        self.persist().await?;
        Ok(held)
    }

    /// Drops expired grants; persists when something changed.
    pub async fn prune(&self) -> Result<(), GrantError> {
        let now = now_ms();
        let changed = {
            let mut all = self.lock();
            let before = all.len();
            all.retain(|g| g.is_live(now));
            all.len() != before
        };
        if changed {
            self.persist().await?;
        }
        Ok(())
    }

    /// Live grants that let `login` in, optionally only for one key fingerprint.
    pub fn for_login(&self, login: &str, fingerprint: Option<&str>) -> Vec<Grant> {
        let now = now_ms();
        self.lock()
            .iter()
            .filter(|g| g.is_live(now) && g.allows_login(login))
            .filter(|g| fingerprint.is_none_or(|f| f == g.fingerprint))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn persist(&self) -> Result<(), GrantError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let _one_writer = self.write.lock().await;
        // Snapshot under the writer lock, so the newest state is what lands last.
        let snapshot = GrantsFile {
            grants: self.lock().clone(),
        };
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let data = serde_json::to_vec(&snapshot).map_err(std::io::Error::other)?;
            write_private(&path, &data)
        })
        .await
        .map_err(|e| GrantError::Write(shown.clone(), std::io::Error::other(e)))?
        .map_err(|e| GrantError::Write(shown, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_just_in_time_grant_keeps_its_own_login_and_changes_no_other() {
        let store = GrantStore::open(None);
        let mut role = grant("g-role", "SHA256:role", now_ms() + 600_000);
        role.logins = vec!["root".into(), "deploy".into()];
        store.merge(vec![role], &[]).await.unwrap();
        let mut once = grant("g-once", "SHA256:once", now_ms() + 30_000);
        once.logins = vec!["deploy".into()];
        once.once = true;
        store.merge(vec![once.clone()], &[]).await.unwrap();
        // The role's grant still lets root in; the one-off lets only deploy.
        assert_eq!(store.for_login("root", Some("SHA256:role")).len(), 1);
        assert!(store.for_login("root", Some("SHA256:once")).is_empty());
        assert_eq!(store.for_login("deploy", Some("SHA256:once")).len(), 1);
        // A longer life, or any login, is refused.
        let mut long = once.clone();
        long.expires_at_ms = now_ms() + 3_600_000;
        assert!(store.merge(vec![long], &[]).await.is_err());
        let mut any = once;
        any.logins = vec![];
        assert!(store.merge(vec![any], &[]).await.is_err());
    }

    fn grant(id: &str, fp: &str, expires_at_ms: i64) -> Grant {
        Grant {
            id: id.into(),
            user: "alice".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            fingerprint: fp.into(),
            logins: vec!["root".into()],
            expires_at_ms,
            forward_to: vec![],
            once: false,
        }
    }

    #[tokio::test]
    async fn merge_replaces_prunes_and_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = GrantStore::open(Some(dir.path()));
        let later = now_ms() + 60_000;
        assert_eq!(
            store
                .merge(vec![grant("a", "fp1", later)], &[])
                .await
                .expect("merge"),
            1
        );
        assert_eq!(
            store
                .merge(vec![grant("b", "fp1", later + 1)], &[])
                .await
                .expect("merge"),
            1
        );
        assert_eq!(
            store
                .merge(vec![grant("c", "fp2", later)], &[])
                .await
                .expect("merge"),
            2
        );
        assert_eq!(store.for_login("root", Some("fp1"))[0].id, "b");
        assert!(store.for_login("postgres", None).is_empty());
        // An already expired grant is not kept.
        store
            .merge(vec![grant("d", "fp3", 1)], &[])
            .await
            .expect("merge");
        assert_eq!(store.len(), 2);

        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(GRANTS_FILE))
                .expect("file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let reopened = GrantStore::open(Some(dir.path()));
        assert_eq!(reopened.len(), 2);
    }

    #[tokio::test]
    async fn malformed_grants_change_nothing() {
        let store = GrantStore::open(None);
        let mut bad = grant("x", "fp", now_ms() + 60_000);
        bad.public_key = "ssh-ed25519 AAAA\nssh-rsa BBBB".into();
        let ok = grant("y", "fp2", now_ms() + 60_000);
        assert!(store.merge(vec![ok, bad], &[]).await.is_err());
        assert!(store.is_empty());
        // A revocation that is not a fingerprint is refused whole, too.
        let ok = grant("y", "SHA256:abc", now_ms() + 60_000);
        store.merge(vec![ok.clone()], &[]).await.expect("merge");
        assert!(
            store
                .merge(vec![], &["SHA256:abc\nroot".into()])
                .await
                .is_err()
        );
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn revocations_drop_keys_and_new_grants_narrow_older_ones() {
        let store = GrantStore::open(None);
        let later = now_ms() + 60_000;
        let mut k1 = grant("a", "SHA256:k1", later);
        let mut k2 = grant("b", "SHA256:k2", later);
        k1.logins = vec!["root".into(), "deploy".into()];
        k2.logins = k1.logins.clone();
        let mut bob = grant("c", "SHA256:k3", later);
        bob.user = "bob".into();
        store
            .merge(vec![k1.clone(), k2, bob], &[])
            .await
            .expect("merge");
        // alice's role narrowed to `deploy`: her next grant (key 1) narrows key 2's
        // grant as well, and leaves bob's alone.
        k1.id = "a2".into();
        k1.logins = vec!["deploy".into()];
        store.merge(vec![k1], &[]).await.expect("merge");
        assert!(store.for_login("root", Some("SHA256:k2")).is_empty());
        assert_eq!(store.for_login("deploy", Some("SHA256:k2")).len(), 1);
        assert_eq!(store.for_login("root", Some("SHA256:k3")).len(), 1);
        // Key 2 deleted: gone at once, nothing else touched.
        let held = store
            .merge(vec![], &["SHA256:k2".into()])
            .await
            .expect("revoke");
        assert_eq!(held, 2);
        assert!(store.for_login("deploy", Some("SHA256:k2")).is_empty());
        assert_eq!(store.for_login("deploy", Some("SHA256:k1")).len(), 1);
    }
}
