-- Where a role's SSH sessions may forward ports (ssh -L), as a JSON array of
-- host:port; empty (the default, and every role before this) allows none.
ALTER TABLE role_bindings ADD COLUMN forward_to TEXT NOT NULL DEFAULT '[]';
