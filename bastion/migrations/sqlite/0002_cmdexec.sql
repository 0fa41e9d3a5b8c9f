-- cmdexec: one row per execution, one per (execution, node).
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    project_name TEXT NOT NULL,
    edge_id TEXT NOT NULL,
    edge_name TEXT NOT NULL,
    username TEXT NOT NULL,
    source_ip TEXT,
    command TEXT NOT NULL,
    content_type TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target TEXT,
    timeout_secs BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX executions_project ON executions (project_id, id);
CREATE TABLE exec_results (
    exec_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code BIGINT,
    error TEXT,
    stdout TEXT NOT NULL DEFAULT '',
    stdout_truncated BIGINT NOT NULL DEFAULT 0,
    stdout_bytes BIGINT NOT NULL DEFAULT 0,
    stdout_sha256 TEXT,
    stderr TEXT NOT NULL DEFAULT '',
    stderr_truncated BIGINT NOT NULL DEFAULT 0,
    stderr_bytes BIGINT NOT NULL DEFAULT 0,
    stderr_sha256 TEXT,
    started_at BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (exec_id, node_id)
);
CREATE INDEX exec_results_open ON exec_results (status);
