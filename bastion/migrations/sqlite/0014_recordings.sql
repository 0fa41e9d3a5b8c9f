-- Session recording (the terminating SSH mode). A project's policy says, per
-- role and per node label, whether sessions are recorded: off, best_effort
-- (a failed write leaves a gap marker) or strict (no store, no session; and
-- `ssh -J`, which the bastion cannot see into, is refused). JSON, see
-- postern_api::recordings::RecordingPolicy.
CREATE TABLE recording_policies (
    project_id TEXT PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    policy TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One recorded channel (a shell, an exec, a subsystem) of a terminated SSH
-- connection. The cast itself is in recording_chunks; last_hash is the chain's
-- head, also written into the session's final audit entry.
CREATE TABLE recordings (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    login TEXT NOT NULL,
    kind TEXT NOT NULL,
    command TEXT NOT NULL,
    policy TEXT NOT NULL,
    replica TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    status TEXT NOT NULL,
    chunks BIGINT NOT NULL DEFAULT 0,
    cast_bytes BIGINT NOT NULL DEFAULT 0,
    stored_bytes BIGINT NOT NULL DEFAULT 0,
    gaps BIGINT NOT NULL DEFAULT 0,
    last_hash TEXT NOT NULL,
    -- kubectl exec and attach: the pod, as NAMESPACE/NAME (the container is
    -- the login, the gateway node the node).
    pod TEXT
);
CREATE INDEX recordings_by_org_time ON recordings (org_id, started_at);
CREATE INDEX recordings_by_project_time ON recordings (project_id, started_at);

-- A segment of a cast: up to 64 KiB or 1 s of asciicast v2 lines, compressed
-- (zstd). at_offset is where its lines start in the whole cast, so a
-- byte range maps to segments; at_ms where its first event is. sha256 chains:
-- hex(SHA-256(previous segment's sha256 || lines)), the first's previous being
-- the recording's id.
CREATE TABLE recording_chunks (
    recording_id TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at_offset BIGINT NOT NULL,
    raw_len BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    data BLOB NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (recording_id, seq)
);

-- The terminating mode's login names a node, not a user: a session's
-- certified key is looked up by itself.
CREATE INDEX login_sessions_ssh_fingerprint ON login_sessions (ssh_fingerprint);

-- Per-org retention: recordings (and relayed sessions' rows) are deleted this
-- many days after they ended, each deletion audited; 0 keeps them.
ALTER TABLE org_policies ADD COLUMN recording_retention_days BIGINT NOT NULL DEFAULT 0;
CREATE INDEX recordings_by_org_end ON recordings (org_id, ended_at);
