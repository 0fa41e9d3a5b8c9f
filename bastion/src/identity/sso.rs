//! Single sign-on, after the provider has answered: who the person is here
//! (a user linked to the provider's subject, made at their first sign-in),
//! whether the org admits them (allowed email domains, MFA asserted by `amr`
//! or `acr` when the org requires it, not disabled), and what roles their
//! groups grant now: recomputed at every sign-in, so a person removed from a
//! group loses the role at their next sign-in (and an admin can end their
//! sessions at once). Also the relying parties, cached per provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_api::admin::Role;
use serde_json::{Value, json};

use super::IdentityError;
use super::oidc::{Asserted, OidcHttp, RelyingParty};
use super::sessions::{self, NewSession};
use crate::access::{AccessChange, Change};
use crate::clock::now_ms;
use crate::state::Shared;
use crate::store::{BindingRow, OidcProviderRow, UserRow, stronger};

/// How long a provider's discovery document (and JWKS) is kept.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);

/// Relying parties by provider id, each read from discovery at most every
/// [`DISCOVERY_TTL`] after it was fetched (a sign-in does not extend it, so a
/// key the provider dropped is dropped here within the TTL), and its JWKS
/// again on an unknown `kid`. An entry is for one version of the provider's
/// row (its fingerprint): an admin's change applies at the next sign-in on
/// every replica, with nothing to broadcast.
#[derive(Debug)]
pub struct Providers {
    http: OidcHttp,
    cache: Mutex<HashMap<String, Cached>>,
}

#[derive(Debug)]
struct Cached {
    fetched: Instant,
    row: String,
    rp: RelyingParty,
}

/// What of a provider's row the relying party is made from.
fn fingerprint(p: &OidcProviderRow) -> String {
    crate::secrets::sha256_hex(
        format!(
            "{}\n{}\n{}\n{}\n{}",
            p.issuer, p.client_id, p.client_secret_sealed, p.redirect_url, p.groups_claim
        )
        .as_bytes(),
    )
}

impl Providers {
    /// `private_networks`: providers may be on loopback or private networks
    /// (see `Settings::sso_private_networks`).
    pub fn new(private_networks: bool) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
        Providers {
            http: OidcHttp::new(Arc::new(tls)).private_networks(private_networks),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The relying party of `p` (a copy: a sign-in's JWKS refresh is kept
    /// with [`Providers::keep`]).
    pub async fn relying_party(
        &self,
        p: &OidcProviderRow,
        client_secret: &str,
    ) -> Result<RelyingParty, IdentityError> {
        let row = fingerprint(p);
        if let Some(c) = self.lock().get(&p.id)
            && c.fetched.elapsed() < DISCOVERY_TTL
            && c.row == row
        {
            return Ok(c.rp.clone());
        }
        let rp = RelyingParty::discover(
            self.http.clone(),
            &p.issuer,
            &p.client_id,
            Some(client_secret),
            &p.redirect_url,
            &p.groups_claim,
        )
        .await?;
        let mut c = self.lock();
        if c.len() > 1024 {
            c.clear();
        }
        c.insert(
            p.id.clone(),
            Cached {
                fetched: Instant::now(),
                row,
                rp: rp.clone(),
            },
        );
        Ok(rp)
    }

    /// Keeps a relying party whose JWKS a sign-in fetched again, for the
    /// next sign-ins; its discovery keeps its age, and a copy made from
    /// another version of the row is not kept.
    pub fn keep(&self, p: &OidcProviderRow, rp: RelyingParty) {
        let row = fingerprint(p);
        if let Some(c) = self.lock().get_mut(&p.id)
            && c.row == row
        {
            c.rp = rp;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A user name from what the provider asserted: its preferred username, else
/// the email's local part, lowered and made a valid name.
pub fn user_name_for(who: &Asserted) -> Option<String> {
    let raw = who.preferred_username.clone().or_else(|| {
        who.email
            .as_ref()
            .and_then(|e| e.split('@').next().map(str::to_string))
    })?;
    let mut name: String = raw
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    name = name.trim_matches('-').to_string();
    postern_api::validate::name("user", &name).ok()?;
    Some(name)
}

/// Refuses a person the org does not admit; says why.
fn admitted(
    p: &OidcProviderRow,
    who: &Asserted,
    mfa_values: &[String],
    require_mfa: bool,
) -> Result<bool, IdentityError> {
    if !p.allowed_domains.is_empty() {
        let email = who.email.as_deref().unwrap_or_default();
        let domain = email.rsplit_once('@').map(|(_, d)| d.to_lowercase());
        // Verified, said so: a provider that lets people edit their email
        // and says nothing must not let anyone pick a domain.
        let ok = who.email_verified == Some(true)
            && domain.is_some_and(|d| p.allowed_domains.iter().any(|a| a.eq_ignore_ascii_case(&d)));
        if !ok {
            return Err(IdentityError::Refused(format!(
                "your email ({}) is not in a domain this org admits through {}",
                postern_api::validate::peer_line(email, 120),
                p.name
            )));
        }
    }
    let asserted_mfa = who
        .amr
        .iter()
        .chain(who.acr.iter())
        .any(|v| mfa_values.iter().any(|m| m == v));
    if require_mfa && !asserted_mfa {
        return Err(IdentityError::Refused(format!(
            "your org requires MFA, and {} did not say you used it (amr/acr: {}); sign in there with a second factor",
            p.name,
            postern_api::validate::peer_line(&who.amr.join(","), 120)
        )));
    }
    Ok(asserted_mfa)
}

/// The bindings `groups` grant under the org's mappings: per scope the
/// strongest role, with the logins and Kubernetes groups of every mapping
/// that grants it.
pub fn bindings_for(
    mappings: &[crate::store::GroupMappingRow],
    groups: &[String],
) -> Vec<BindingRow> {
    let mut by_scope: Vec<BindingRow> = Vec::new();
    for m in mappings.iter().filter(|m| groups.contains(&m.group)) {
        let b = &m.binding;
        match by_scope.iter_mut().find(|x| x.project_id == b.project_id) {
            Some(x) => {
                x.role = stronger(x.role, b.role);
                for l in &b.logins {
                    if !x.logins.contains(l) {
                        x.logins.push(l.clone());
                    }
                }
                x.kube_groups = match (x.kube_groups.take(), &b.kube_groups) {
                    (Some(mut a), Some(more)) => {
                        for g in more {
                            if !a.contains(g) {
                                a.push(g.clone());
                            }
                        }
                        Some(a)
                    }
                    (a, b) => a.or_else(|| b.clone()),
                };
            }
            None => by_scope.push(b.clone()),
        }
    }
    // org_admin is org-wide only; a mapping cannot make it per project.
    by_scope.retain(|b| (b.role == Role::OrgAdmin) == b.project_id.is_none());
    for b in &mut by_scope {
        b.logins.sort();
    }
    by_scope
}

/// The person the provider asserted, admitted or refused; on admission their
/// SSO roles are recomputed and a session made. Answers the audit detail too.
pub async fn admit(
    shared: &Shared,
    p: &OidcProviderRow,
    who: &Asserted,
    source: Option<&str>,
    ttl_seconds: Option<i64>,
) -> Result<(UserRow, NewSession, Value), IdentityError> {
    let store = &shared.store;
    let policy = store.org_policy(&p.org_id).await?;
    let mfa = admitted(p, who, &policy.sso_mfa_values, policy.require_mfa)?;
    let now = now_ms();
    let user = match store.sso_user(&p.id, &who.subject).await? {
        Some(id) => store.user_by_id(&id).await?.ok_or_else(|| {
            IdentityError::Refused("your user was deleted: ask an org admin".into())
        })?,
        None => {
            let name = user_name_for(who).ok_or_else(|| {
                IdentityError::Refused(format!(
                    "{} gave no usable name (preferred_username or email): ask an org admin",
                    p.name
                ))
            })?;
            // Names are unique across orgs: a name taken (by anyone, in any
            // org) gets a suffix rather than refusing the person for good.
            let mut made = None;
            for n in 1..=9 {
                let candidate = if n == 1 {
                    name.clone()
                } else {
                    format!("{}-{n}", &name[..name.len().min(60)])
                };
                match store.create_user(&p.org_id, &candidate, now).await {
                    Ok(u) => {
                        made = Some(u);
                        break;
                    }
                    Err(crate::store::StoreError::Conflict(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let user = made.ok_or_else(|| {
                IdentityError::Refused(format!("no free user name near {name}: ask an org admin"))
            })?;
            store
                .link_sso_user(&p.id, &who.subject, &user.id, now)
                .await?;
            user
        }
    };
    if user.org_id != p.org_id {
        return Err(IdentityError::Refused(
            "your account is in another org".into(),
        ));
    }
    if user.disabled_at.is_some() {
        return Err(IdentityError::Refused(
            "this user is disabled: ask an org admin".into(),
        ));
    }
    if user.is_bot() {
        return Err(IdentityError::Refused("a bot does not sign in".into()));
    }
    if let Some(email) = &who.email
        && user.email.as_deref() != Some(email.as_str())
        && email.len() <= 254
    {
        store.set_user_email(&user.id, Some(email)).await?;
    }
    let mappings = store.group_mappings(&p.id).await?;
    let granted = bindings_for(&mappings, &who.groups);
    let lost = store.replace_sso_bindings(&user.id, &granted, now).await?;
    // A role a group no longer grants ends what it held, at once.
    for project_id in &lost {
        shared
            .access
            .publish(AccessChange {
                org_id: user.org_id.clone(),
                user_id: user.id.clone(),
                what: Change::RoleChanged {
                    project_id: project_id.clone(),
                },
            })
            .await;
    }
    let method = format!("sso:{}", p.name);
    let session = sessions::issue(store, &user, &method, mfa, source, ttl_seconds).await?;
    let roles: Vec<Value> = granted
        .iter()
        .map(|b| json!({ "role": b.role, "project_id": b.project_id, "logins": b.logins }))
        .collect();
    let detail = json!({
        "method": method, "provider": p.name, "subject": postern_api::validate::peer_line(&who.subject, 120),
        "groups": who.groups.iter().take(64).map(|g| postern_api::validate::peer_line(g, 120)).collect::<Vec<_>>(),
        "roles": roles, "roles_lost": lost.len(), "mfa": mfa,
        "amr": who.amr, "session_id": session.row.id,
    });
    Ok((user, session, detail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::GroupMappingRow;

    fn m(group: &str, project: Option<&str>, role: Role, logins: &[&str]) -> GroupMappingRow {
        GroupMappingRow {
            id: "x".into(),
            org_id: "o".into(),
            group: group.into(),
            binding: BindingRow {
                project_id: project.map(str::to_string),
                role,
                logins: logins.iter().map(|s| s.to_string()).collect(),
                forward_to: vec![],
                kube_groups: None,
            },
        }
    }

    #[test]
    fn groups_grant_the_strongest_role_per_project_with_all_logins() {
        let maps = [
            m("dev", Some("p1"), Role::ProjectMember, &["deploy"]),
            m("ops", Some("p1"), Role::ProjectAdmin, &["root"]),
            m("ops", Some("p2"), Role::ReadOnly, &[]),
            m("admins", None, Role::OrgAdmin, &[]),
        ];
        let b = bindings_for(&maps, &["dev".into(), "ops".into()]);
        assert_eq!(b.len(), 2);
        let p1 = b
            .iter()
            .find(|x| x.project_id.as_deref() == Some("p1"))
            .unwrap();
        assert_eq!(p1.role, Role::ProjectAdmin);
        assert_eq!(p1.logins, ["deploy", "root"]);
        assert!(bindings_for(&maps, &["nobody".into()]).is_empty());
        assert_eq!(
            bindings_for(&maps, &["admins".into()])[0].role,
            Role::OrgAdmin
        );
    }

    #[test]
    fn names_come_from_what_the_provider_asserted() {
        let who = |u: Option<&str>, e: Option<&str>| Asserted {
            subject: "s".into(),
            email: e.map(str::to_string),
            email_verified: Some(true),
            preferred_username: u.map(str::to_string),
            groups: vec![],
            amr: vec![],
            acr: None,
        };
        assert_eq!(
            user_name_for(&who(Some("Ann.Lee"), None)).as_deref(),
            Some("ann-lee")
        );
        assert_eq!(
            user_name_for(&who(None, Some("bob@x.org"))).as_deref(),
            Some("bob")
        );
        assert_eq!(user_name_for(&who(Some("---"), None)), None);
        assert_eq!(user_name_for(&who(None, None)), None);
        assert_eq!(user_name_for(&who(Some(&"é".repeat(500)), None)), None);
    }
}
