-- Identity: people sign in (a password and TOTP, or an OpenID provider) and get
-- a login session; every door's short-lived credential comes from that session
-- and ends with it. Timestamps are unix milliseconds, flags 0/1 BIGINTs.

-- 'person' or 'bot'. A bot is a project's service account: it holds API tokens
-- (with an expiry and optional source networks) and never signs in.
ALTER TABLE users ADD COLUMN kind TEXT NOT NULL DEFAULT 'person';
-- A disabled user's sessions are ended and it cannot sign in or use tokens.
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
ALTER TABLE users ADD COLUMN email TEXT;
-- For a bot: the networks (JSON array of CIDRs) its tokens work from; NULL: any.
ALTER TABLE users ADD COLUMN source_cidrs TEXT;

-- 'manual' (an admin made it) or 'sso' (recomputed from the provider's groups at
-- every sign-in). Rows before this column are an admin's.
ALTER TABLE role_bindings ADD COLUMN source TEXT NOT NULL DEFAULT 'manual';

-- An org's sign-in rules.
CREATE TABLE org_policies (
    org_id TEXT PRIMARY KEY REFERENCES orgs(id) ON DELETE CASCADE,
    require_mfa BIGINT NOT NULL,
    session_max_seconds BIGINT NOT NULL,
    -- JSON array: the amr/acr values an SSO sign-in must carry when MFA is required.
    sso_mfa_values TEXT NOT NULL,
    -- 1: people's registered SSH keys are refused (bots keep theirs).
    refuse_person_keys BIGINT NOT NULL,
    bot_token_max_seconds BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A local user's password (argon2id PHC string) and TOTP secret (sealed with
-- the master key); failures count towards a lock-out.
CREATE TABLE local_credentials (
    user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    password_hash TEXT,
    totp_sealed TEXT,
    -- The last TOTP time step accepted: a code is good once.
    totp_last_step BIGINT,
    failures BIGINT NOT NULL DEFAULT 0,
    locked_until BIGINT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

-- A one-time link with which a new local user sets their password and TOTP.
CREATE TABLE invitations (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE login_sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    -- 'password', 'password+totp', 'recovery_code' or 'sso:<provider>'.
    method TEXT NOT NULL,
    mfa BIGINT NOT NULL,
    source_ip TEXT,
    -- The SSH key certified for this session, once it asked for a certificate.
    ssh_fingerprint TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT
);
CREATE INDEX login_sessions_user ON login_sessions (user_id);

CREATE TABLE oidc_providers (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret_sealed TEXT NOT NULL,
    -- Where the provider sends the browser back: the bastion's public URL
    -- and /api/v1/auth/sso/callback, as registered at the provider.
    redirect_url TEXT NOT NULL,
    scopes TEXT NOT NULL,
    groups_claim TEXT NOT NULL,
    allowed_domains TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

-- Who a provider's subject is here.
CREATE TABLE sso_identities (
    provider_id TEXT NOT NULL REFERENCES oidc_providers(id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (provider_id, subject)
);

-- A group of one provider grants a role in a project ('' scope: org-wide).
-- Per provider: a weaker provider's "admins" is not a stronger one's.
CREATE TABLE group_mappings (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    provider_id TEXT NOT NULL REFERENCES oidc_providers(id) ON DELETE CASCADE,
    group_name TEXT NOT NULL,
    scope TEXT NOT NULL,
    role TEXT NOT NULL,
    logins TEXT NOT NULL,
    kube_groups TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (provider_id, group_name, scope)
);

-- A sign-in under way: an SSO round trip (state, nonce and PKCE verifier, kept
-- by the bastion so any replica can finish it) or a headless device code.
-- Single use: finished_at is set once, in the statement that claims it.
CREATE TABLE pending_logins (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    org_id TEXT,
    provider_id TEXT,
    state_hash TEXT UNIQUE,
    user_code TEXT UNIQUE,
    poll_hash TEXT,
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    finished_at BIGINT,
    session_sealed TEXT
);
