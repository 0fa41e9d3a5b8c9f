-- Users' SSH public keys. A fingerprint is unique across the whole bastion, so a
-- key proven at the SSH front door names exactly one user.
CREATE TABLE ssh_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL UNIQUE,
    algorithm TEXT NOT NULL,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ssh_keys_user ON ssh_keys (user_id);
