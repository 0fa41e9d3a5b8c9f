//! Who is connected through the front door right now, so that an access change
//! takes effect at once: deleting a key or a user cuts their SSH connections, and
//! removing or changing a role cuts their relays into that project. Entries are
//! removed when their guard drops, so the registry holds only live connections.
//!
//! A relay registers before it is authorized, with no project yet: a cut that
//! arrives while it is being authorized matches it, and the relay then refuses
//! instead of opening with the access it just lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Entry {
    user_id: String,
    fingerprint: String,
    /// `None` for a connection; for a relay, `Some(None)` until it is authorized,
    /// then `Some(Some(project))`.
    relay: Option<Option<String>>,
    kill: CancellationToken,
}

/// What an access change cuts.
#[derive(Debug, Clone, Copy)]
pub enum Cut<'a> {
    /// Every connection of the user (the user was deleted).
    User,
    /// Connections authenticated with this key, and relays opened with it.
    Key(&'a str),
    /// The user's relays into this project (`None`: into any project).
    Relays(Option<&'a str>),
}

#[derive(Debug, Default)]
pub struct Live {
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

/// Keeps an entry registered; dropping it removes the entry.
#[derive(Debug)]
pub struct Registered {
    live: Arc<Live>,
    id: u64,
}

impl Registered {
    /// Names the project a relay was authorized for.
    pub fn authorized_for(&self, project_id: &str) {
        if let Some(e) = self.live.lock().get_mut(&self.id) {
            e.relay = Some(Some(project_id.to_string()));
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(
        self: &Arc<Self>,
        user_id: &str,
        fingerprint: &str,
        relay: Option<Option<String>>,
        kill: CancellationToken,
    ) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Entry {
                user_id: user_id.to_string(),
                fingerprint: fingerprint.to_string(),
                relay,
                kill,
            },
        );
        Registered {
            live: self.clone(),
            id,
        }
    }

    /// An authenticated connection; `kill` closes it (and its relays).
    pub fn connection(
        self: &Arc<Self>,
        user_id: &str,
        fingerprint: &str,
        kill: CancellationToken,
    ) -> Registered {
        self.register(user_id, fingerprint, None, kill)
    }

    /// A relay about to be authorized; `kill` ends it.
    pub fn relay(
        self: &Arc<Self>,
        user_id: &str,
        fingerprint: &str,
        kill: CancellationToken,
    ) -> Registered {
        self.register(user_id, fingerprint, Some(None), kill)
    }

    /// Cancels what `cut` names for `user_id`; returns how many relays and
    /// connections were cut.
    pub fn cut(&self, user_id: &str, cut: Cut<'_>) -> usize {
        // Chosen before any is cancelled: a connection's relays are its child
        // tokens, and each counts whichever order the map yields them in.
        let hits: Vec<CancellationToken> = self
            .lock()
            .values()
            .filter(|e| e.user_id == user_id && !e.kill.is_cancelled())
            .filter(|e| match cut {
                Cut::User => true,
                Cut::Key(fp) => e.fingerprint == fp,
                Cut::Relays(project) => match (&e.relay, project) {
                    (None, _) => false,
                    (Some(_), None) | (Some(None), Some(_)) => true,
                    (Some(Some(p)), Some(q)) => p == q,
                },
            })
            .map(|e| e.kill.clone())
            .collect();
        for k in &hits {
            k.cancel();
        }
        hits.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_hit_only_what_they_name() {
        let live = Arc::new(Live::default());
        let conn = CancellationToken::new();
        let _c = live.connection("alice", "SHA256:k1", conn.clone());
        let (r1, r2, pending, bob) = (
            conn.child_token(),
            conn.child_token(),
            conn.child_token(),
            CancellationToken::new(),
        );
        let g1 = live.relay("alice", "SHA256:k1", r1.clone());
        g1.authorized_for("p1");
        let g2 = live.relay("alice", "SHA256:k1", r2.clone());
        g2.authorized_for("p2");
        let _g3 = live.relay("alice", "SHA256:k1", pending.clone());
        let _b = live.relay("bob", "SHA256:k9", bob.clone());

        // A role change on p1 ends the p1 relay and the one still being authorized.
        assert_eq!(live.cut("alice", Cut::Relays(Some("p1"))), 2);
        assert!(r1.is_cancelled() && pending.is_cancelled());
        assert!(!r2.is_cancelled() && !conn.is_cancelled() && !bob.is_cancelled());
        // Another key of alice's: nothing.
        assert_eq!(live.cut("alice", Cut::Key("SHA256:k2")), 0);
        // The key itself: the connection, and with it every relay on it.
        assert_eq!(live.cut("alice", Cut::Key("SHA256:k1")), 2);
        assert!(conn.is_cancelled() && r2.is_cancelled() && !bob.is_cancelled());

        drop((g1, g2));
        assert_eq!(live.len(), 3);
    }
}
