-- Command output is bytes: a NUL or any non-UTF-8 byte must round-trip, and
-- PostgreSQL refuses NUL in text columns.
ALTER TABLE exec_results
    ALTER COLUMN stdout DROP DEFAULT,
    ALTER COLUMN stdout TYPE BYTEA USING convert_to(stdout, 'UTF8'),
    ALTER COLUMN stdout SET DEFAULT ''::bytea,
    ALTER COLUMN stderr DROP DEFAULT,
    ALTER COLUMN stderr TYPE BYTEA USING convert_to(stderr, 'UTF8'),
    ALTER COLUMN stderr SET DEFAULT ''::bytea;

-- A public key is unique per user, not across the bastion: registering a key
-- proves nothing about possessing it, so a global uniqueness would let anyone
-- block another org's user from registering theirs. The SSH front door looks a
-- key up for the user named in the login, never by the key alone.
ALTER TABLE ssh_keys DROP CONSTRAINT ssh_keys_fingerprint_key;
CREATE UNIQUE INDEX ssh_keys_user_fingerprint ON ssh_keys (user_id, fingerprint);
CREATE INDEX ssh_keys_fingerprint ON ssh_keys (fingerprint);
