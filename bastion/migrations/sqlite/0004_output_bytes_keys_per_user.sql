-- Command output is bytes: stored as BLOBs so that any byte round-trips.
UPDATE exec_results SET stdout = CAST(stdout AS BLOB), stderr = CAST(stderr AS BLOB);

-- A public key is unique per user, not across the bastion: registering a key
-- proves nothing about possessing it, so a global uniqueness would let anyone
-- block another org's user from registering theirs. The SSH front door looks a
-- key up for the user named in the login, never by the key alone.
CREATE TABLE ssh_keys_new (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, fingerprint)
);
INSERT INTO ssh_keys_new SELECT id, user_id, fingerprint, algorithm, public_key, comment, created_at FROM ssh_keys;
DROP TABLE ssh_keys;
ALTER TABLE ssh_keys_new RENAME TO ssh_keys;
CREATE INDEX ssh_keys_user ON ssh_keys (user_id);
CREATE INDEX ssh_keys_fingerprint ON ssh_keys (fingerprint);
