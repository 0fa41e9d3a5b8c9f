//! Session recording: what a door that terminates a session (the SSH door's
//! `login+node` mode) writes of it, and where.
//!
//! A recording is an asciicast v2 cast (`o` output, `r` resize, `m` markers),
//! cut into segments of at most 64 KiB or 1 s of lines, each compressed (zstd)
//! and chained by SHA-256 to the one before (see
//! `postern_api::recordings::chain`), and stored in the store beside everything
//! else, so every replica serves every recording. The session's final audit
//! entry holds the chain's head, so an edit anywhere is found offline.
//!
//! What it costs a session: one task, a buffer of at most 64 KiB being filled
//! and at most two full ones waiting to be written (no file descriptor at all).
//! The policy decides what a failed write does: `best_effort` drops that
//! segment and writes a gap marker in the next; `strict` ends the session at
//! once (and no session opens when its recording cannot be started).

pub mod retention;
mod tape;

pub use tape::{Ended, Meta, Tape, decompress};

use std::sync::Arc;

use postern_api::recordings::RecordingLevel;

use crate::store::Store;

/// Segment boundaries: a segment is written when it holds this much...
pub const SEGMENT_BYTES: usize = 64 * 1024;
/// ...or when its first line is this old.
pub const SEGMENT_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// The name this bastion writes recordings under: its replica's, or `local`
/// when it runs alone. What it left `live` is found by it at its next start.
pub fn replica_name(fleet: &crate::agents::Fleet) -> String {
    fleet
        .replicas()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| "local".into())
}

/// Marks what `replica` left live as interrupted (it was killed, or its host
/// lost, mid-session): what reached the store is all there is. Run by the
/// bastion at its start, whichever doors it serves.
pub async fn recover_interrupted(store: &Store, replica: &str) {
    match store
        .interrupt_recordings(replica, crate::clock::now_ms())
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            n,
            "recordings left live by this replica's last run are marked interrupted"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot mark interrupted recordings"),
    }
}

/// Starts recordings; one per door that terminates sessions.
#[derive(Debug, Clone)]
pub struct Recorder {
    store: Store,
    /// Which replica writes: a recording its replica left `live` when it
    /// stopped is marked `interrupted` when it starts again.
    replica: String,
    tasks: tokio_util::task::TaskTracker,
    /// The most one recording may hold, in bytes of cast.
    max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the recording could not be started (the store refused it: {0})")]
    Store(#[from] crate::store::StoreError),
}

impl Recorder {
    pub fn new(
        store: Store,
        replica: String,
        tasks: tokio_util::task::TaskTracker,
        max_bytes: u64,
    ) -> Arc<Recorder> {
        Arc::new(Recorder {
            store,
            replica,
            tasks,
            max_bytes,
        })
    }

    /// Starts recording a session under `level` (never `off`): the row is
    /// written first, so a strict session is refused when the store cannot
    /// take it. `cut` ends the session; a strict recording that cannot write
    /// cancels it.
    pub async fn start(
        &self,
        meta: Meta,
        level: RecordingLevel,
        cut: tokio_util::sync::CancellationToken,
    ) -> Result<Tape, RecordError> {
        tape::start(self, meta, level, cut).await
    }

    /// Ends a recording of a session that never ran (the far end refused
    /// it) and deletes it: there is nothing to keep, and the audit log has
    /// the refusal.
    pub async fn discard(&self, tape: Tape) {
        let id = tape.id.clone();
        tape.finish().await;
        if let Err(e) = self.store.delete_recording(&id).await {
            tracing::warn!(error = %e, recording = %id, "cannot delete the empty recording of a refused session");
        }
    }

    /// A row for a `ssh -J` session, which the bastion cannot see into: the
    /// listing shows it, "not recorded: end-to-end encrypted". Best effort:
    /// the audit log has the session either way.
    pub async fn relayed(&self, meta: &Meta) -> Option<String> {
        let id = uuid::Uuid::now_v7().to_string();
        let row = meta.row(
            &id,
            postern_api::recordings::NOT_RECORDED,
            &self.replica,
            crate::clock::now_ms(),
        );
        match self.store.create_recording(&row).await {
            Ok(()) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list a relayed session among recordings");
                None
            }
        }
    }

    /// Ends a relayed session's row with the bytes it moved.
    pub async fn relay_ended(&self, id: &str, bytes: u64) {
        if let Err(e) = self
            .store
            .finish_recording(id, crate::clock::now_ms(), "ended", Some(bytes as i64))
            .await
        {
            tracing::warn!(error = %e, "cannot end a relayed session's row");
        }
    }
}
