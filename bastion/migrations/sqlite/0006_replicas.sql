-- Several bastion replicas on one database.
-- Each live replica beats its heartbeat (database time, ms) every second; one
-- whose heartbeat is older than the lease is dead, and its nodes unreachable.
CREATE TABLE replicas (
    name TEXT PRIMARY KEY,
    peer_addr TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
-- Which replica holds each node's channel; the newest channel's row wins.
CREATE TABLE node_presence (
    node_id TEXT PRIMARY KEY,
    replica TEXT NOT NULL,
    conn_id BIGINT NOT NULL,
    since BIGINT NOT NULL
);
CREATE INDEX node_presence_replica ON node_presence (replica);
-- The replica that runs an execution holds it by a lease it renews; another
-- takes over an unfinished execution whose lease ran out.
ALTER TABLE executions ADD COLUMN owner TEXT;
ALTER TABLE executions ADD COLUMN lease_until BIGINT;
CREATE INDEX executions_open ON executions (finished_at, lease_until);
-- Keys sealed with the master key, shared by every replica (the SSH host key).
CREATE TABLE sealed_keys (
    id TEXT PRIMARY KEY,
    key_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- What every replica must apply, in order: access changes to cut and nodes to
-- cut off. Kept a while so that a replica whose listener was away replays
-- what it missed; NOTIFY only wakes the others.
CREATE TABLE replica_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX replica_events_at ON replica_events (created_at);
