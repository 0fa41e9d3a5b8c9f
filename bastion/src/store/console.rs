//! The web console's sessions: the last use of a login session whose bearer
//! lives in a cookie, and the sealed key its browser terminals log in with.
//! The idle timeout itself is the bastion's setting (`console::session`), so
//! a new `--console-idle` applies to the sessions already open.

use sqlx::Row;

use super::{Result, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleRow {
    pub session_id: String,
    /// When the session was last used, as written: a use less than the write
    /// interval after the last write is not written (see `touch`).
    pub last_used_at: i64,
    /// The terminal's private key (OpenSSH), sealed with the master key.
    pub terminal_key_sealed: String,
}

impl Store {
    pub async fn insert_console_session(&self, row: &ConsoleRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO console_sessions (session_id, last_used_at, terminal_key_sealed)
             VALUES ($1, $2, $3)",
        )
        .bind(&row.session_id)
        .bind(row.last_used_at)
        .bind(&row.terminal_key_sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn console_session(&self, session_id: &str) -> Result<Option<ConsoleRow>> {
        let row = sqlx::query(
            "SELECT session_id, last_used_at, terminal_key_sealed
             FROM console_sessions WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConsoleRow {
                session_id: r.try_get(0)?,
                last_used_at: r.try_get(1)?,
                terminal_key_sealed: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Records a use at `now` when the last one written is older than
    /// `every_ms` (so a busy page is not a write a request) and no older than
    /// `alive_ms`: a session idle past that stays idle, whatever arrives.
    pub async fn touch_console_session(
        &self,
        session_id: &str,
        now: i64,
        every_ms: i64,
        alive_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE console_sessions SET last_used_at = $2
             WHERE session_id = $1 AND last_used_at < $3 AND last_used_at >= $4",
        )
        .bind(session_id)
        .bind(now)
        .bind(now - every_ms)
        .bind(now - alive_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
