-- The web console's sessions: a login session whose bearer lives only in an
-- HttpOnly cookie. It ends after the bastion's `--console-idle` without a
-- request or a keystroke in its terminal (`last_used_at` is written at most
-- every 30 s), and carries the key the browser terminal logs in to the SSH
-- door with (sealed with the master key, certified for the session like any
-- other session key).
CREATE TABLE console_sessions (
    session_id TEXT PRIMARY KEY REFERENCES login_sessions(id) ON DELETE CASCADE,
    last_used_at BIGINT NOT NULL,
    terminal_key_sealed TEXT NOT NULL
);
