//! The web console's sessions: the idle clock of a login session whose bearer
//! lives in a cookie, and the sealed key its browser terminals log in with.

use sqlx::Row;

use super::{Result, Store};

/// How often a console session's last use is written at most: a request
/// within this long of the last write changes nothing (the idle timeout is
/// minutes). Shorter idle timeouts write a quarter of theirs.
pub const TOUCH_EVERY_MS: i64 = 30_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleRow {
    pub session_id: String,
    pub idle_ms: i64,
    pub last_used_at: i64,
    /// The terminal's private key (OpenSSH), sealed with the master key.
    pub terminal_key_sealed: String,
}

impl Store {
    pub async fn insert_console_session(&self, row: &ConsoleRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO console_sessions (session_id, idle_ms, last_used_at, terminal_key_sealed)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&row.session_id)
        .bind(row.idle_ms)
        .bind(row.last_used_at)
        .bind(&row.terminal_key_sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn console_session(&self, session_id: &str) -> Result<Option<ConsoleRow>> {
        let row = sqlx::query(
            "SELECT session_id, idle_ms, last_used_at, terminal_key_sealed
             FROM console_sessions WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConsoleRow {
                session_id: r.try_get(0)?,
                idle_ms: r.try_get(1)?,
                last_used_at: r.try_get(2)?,
                terminal_key_sealed: r.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Records a use at `now`, unless one was recorded less than
    /// [`TOUCH_EVERY_MS`] (or a quarter of `idle_ms`) before, so a busy page
    /// is not a write a request.
    pub async fn touch_console_session(
        &self,
        session_id: &str,
        now: i64,
        idle_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE console_sessions SET last_used_at = $2
             WHERE session_id = $1 AND last_used_at < $3",
        )
        .bind(session_id)
        .bind(now)
        .bind(now - TOUCH_EVERY_MS.min(idle_ms / 4))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
