//! Signing in and what comes of it: the bodies of `/api/v1/auth/…` (sign-in,
//! sign-out, SSH certificates, invitations) and of an org's sign-in policy.
//! Every field a client sends is bounded here (`MAX_*`), checked again by
//! the bastion before it is used.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest name, password, code or token accepted in a sign-in body (bytes).
pub const MAX_FIELD: usize = 1024;
/// Longest SSH public key accepted (an RSA-16384 key fits).
pub const MAX_PUBLIC_KEY: usize = 8192;

/// `POST /api/v1/auth/login`: a local user's name and password, and a TOTP or
/// recovery code when they enrolled one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub name: String,
    pub password: String,
    /// A six-digit TOTP code, or a recovery code (`xxxx-xxxx-xxxx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Shorter than the org's maximum, if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// A public key (`ssh-ed25519 AAAA…`) to certify for the session at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
}

/// A session, made by a sign-in: its bearer is shown only now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionCreated {
    /// The session's id (for listing and ending it).
    pub id: String,
    /// `Authorization: Bearer pss_…`.
    pub token: String,
    pub user: String,
    pub org: String,
    /// How the person proved who they are (`password+totp`, `sso:corp`…).
    pub method: String,
    pub mfa: bool,
    /// RFC 3339.
    pub expires_at: String,
    /// The OpenSSH certificate for `ssh_public_key`, when one was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_certificate: Option<String>,
    /// Recovery codes left, when one was used to sign in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_codes_left: Option<i64>,
}

/// `POST /api/v1/auth/ssh-certificate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertifyKey {
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SshCertificate {
    /// `ssh-ed25519-cert-v01@openssh.com AAAA…`, for `id_ed25519-cert.pub`.
    pub certificate: String,
    /// The SSH user name the certificate is for (the Postern user).
    pub principal: String,
    /// RFC 3339: the session's end.
    pub valid_before: String,
}

/// `POST /api/v1/users/{user}/invitation`: returned once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvitationCreated {
    /// One-time secret (`piv_…`) the user accepts with `postern invitation accept`.
    pub invitation: String,
    /// RFC 3339.
    pub expires_at: String,
    /// What to send the user.
    pub accept_command: String,
}

/// `POST /api/v1/users/{user}/invitation`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// Default one day, at most a week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// `POST /api/v1/auth/invitation`: the invited user sets a password and, with
/// a TOTP secret their authenticator app now holds, proves it with a code.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    pub invitation: String,
    pub password: String,
    /// Base32 TOTP secret (made by the user's CLI, never by an admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
    /// The current code for `totp_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_code: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvitationAccepted {
    pub user: String,
    pub org: String,
    /// Single-use codes for when the authenticator is lost: shown only now.
    pub recovery_codes: Vec<String>,
}

/// An org's sign-in rules (`GET`/`PUT /api/v1/org/policy`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrgPolicy {
    /// Local users must use TOTP; SSO sign-ins must carry one of `sso_mfa_values`.
    pub require_mfa: bool,
    /// Longest session (60 s to 7 days; default 8 h).
    pub session_max_seconds: i64,
    /// `amr`/`acr` values that show an SSO sign-in used MFA (`otp`, `mfa`, `hwk`…).
    #[serde(default)]
    pub sso_mfa_values: Vec<String>,
    /// People's registered SSH keys are refused; bots keep theirs.
    #[serde(default)]
    pub refuse_person_keys: bool,
    /// Longest bot token (default 90 days).
    pub bot_token_max_seconds: i64,
}

/// A session as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    pub id: String,
    pub user: String,
    pub method: String,
    pub mfa: bool,
    pub source_ip: Option<String>,
    pub created_at: String,
    pub expires_at: String,
}

/// The refusal a sign-in gets when only the second factor is missing: the
/// client asks for a code and signs in again.
pub const NEED_CODE: &str =
    "a TOTP code from your authenticator app (or a recovery code) is required";

/// Invitations look like `piv_<id>_<secret>`.
pub const INVITATION_PREFIX: &str = "piv";

/// `PUT /api/v1/sso/providers/{name}`: an OpenID provider for the caller's org.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutOidcProvider {
    /// The issuer URL (`https://…`; `http://` only on loopback, for tests).
    pub issuer: String,
    pub client_id: String,
    /// Sealed at rest; never shown again (`postern sso add --client-secret-file`).
    pub client_secret: String,
    /// The bastion's public URL and `/api/v1/auth/sso/callback`, as registered
    /// at the provider.
    pub redirect_url: String,
    /// Default `openid email profile groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The ID token claim that lists the person's groups (default `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
    /// Only people whose verified email is in one of these domains; empty: any.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
}

/// A provider as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OidcProvider {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub redirect_url: String,
    pub scopes: Vec<String>,
    pub groups_claim: String,
    pub allowed_domains: Vec<String>,
}

/// A provider group and the role it grants (`GET /api/v1/sso/providers/{name}/groups`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupRole {
    pub group: String,
    pub role: crate::admin::Role,
    /// The project; absent for `org_admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub logins: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_groups: Option<Vec<String>>,
}

/// `POST /api/v1/auth/sso/device`: a headless sign-in.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartDevice {
    pub org: String,
    pub provider: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceStarted {
    /// Open on any device with a browser.
    pub verification_url: String,
    /// What that page asks for (typed: the link alone approves nothing).
    pub user_code: String,
    /// The CLI's secret for `POST /api/v1/auth/sso/collect`.
    pub poll_code: String,
    pub expires_in: i64,
    /// Seconds between polls.
    pub interval: i64,
}

/// `POST /api/v1/auth/sso/collect`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Collect {
    pub code: String,
    /// For a browser sign-in: the secret whose base64url SHA-256 the CLI sent
    /// to `/auth/sso/start` as `cli_challenge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
}

/// `pending` (poll again) or `done` with the session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Collected {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionCreated>,
}

/// Device codes: `ABCD-EFGH` from an alphabet without look-alikes.
pub const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ23456789";

/// `POST /api/v1/auth/kube-certificate`: a CSR (PEM) for the Kubernetes door.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeCsr {
    pub csr: String,
}

/// A client certificate for the Kubernetes door, naming the caller's session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KubeCertificate {
    /// PEM.
    pub certificate: String,
    /// RFC 3339: an hour at most, never past the session's end.
    pub expires_at: String,
}

/// Longest CSR accepted (PEM).
pub const MAX_CSR: usize = 8192;

/// `POST /api/v1/projects/{project}/bots`: a service account of the project
/// (Ansible in CI, cron jobs): it holds API tokens and never signs in.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBot {
    /// A user name (bots and people share the namespace).
    pub name: String,
    /// Its role in the project (`project_admin`, `project_member`, `read_only`).
    pub role: crate::admin::Role,
    /// Unix logins it may use over SSH.
    #[serde(default)]
    pub logins: Vec<String>,
    /// Networks (CIDRs) its tokens work from; absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cidrs: Option<Vec<String>>,
}

/// A bot as listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Bot {
    pub name: String,
    pub project: String,
    pub role: crate::admin::Role,
    pub logins: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cidrs: Option<Vec<String>>,
    /// Its tokens (never their secrets).
    pub tokens: Vec<crate::admin::TokenInfo>,
}
