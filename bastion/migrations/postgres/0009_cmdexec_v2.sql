-- cmdexec, second generation: rate control, cancel, labels, live events and
-- idempotent submits.

-- Rate control as resolved at submit (counts; NULL: all at once / no limit),
-- the selector as understood, and when a cancel was asked for (any replica
-- may take the request; the one running the execution acts on it).
ALTER TABLE executions ADD COLUMN max_concurrency BIGINT;
ALTER TABLE executions ADD COLUMN max_errors BIGINT;
ALTER TABLE executions ADD COLUMN selector TEXT;
ALTER TABLE executions ADD COLUMN cancel_requested_at BIGINT;

-- Node labels as JSON objects: those its agent reports (--label) and those a
-- project admin set through the API, which win on the same key. A change an
-- approved node's agent reports waits in agent_labels_pending until a project
-- admin approves it: a node must not move itself into a selector's targets.
ALTER TABLE nodes ADD COLUMN agent_labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN agent_labels_pending TEXT;

-- An execution's events, in the order its replica wrote them: what the live
-- stream replays (`id` is the SSE event ID a reader resumes from). `body` is
-- the event as the API sends it.
CREATE TABLE exec_events (
    id BIGSERIAL PRIMARY KEY,
    exec_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX exec_events_exec ON exec_events (exec_id, id);

-- Idempotency-Key on execute: the first execution per (user, key) for 24 h,
-- and a hash of the request it was for.
CREATE TABLE idempotency_keys (
    org_id TEXT NOT NULL,
    username TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    exec_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, username, idem_key)
);
CREATE INDEX idempotency_keys_at ON idempotency_keys (created_at);
