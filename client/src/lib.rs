//! A typed client of Postern's REST API: the paths come from
//! `postern_api::routes` and the bodies from `postern_api`, so it speaks exactly
//! what the bastion serves. Used by the `postern` CLI.

mod conn;
mod error;
mod events;
mod recordings;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use postern_api::admin::{
    ApproveNode, AuditPage, AuditQuery, CreateEdge, CreateEnrollmentToken, CreateProject,
    CreateUser, Edge, EnrollmentTokenCreated, Node, Project, RoleBinding, User,
};
use postern_api::cmdexec::{CancelResponse, ExecuteRequest, ExecuteResponse, Execution, History};
use postern_api::labels::Labels;
use postern_api::routes::{self, API, CMDEXEC, path, query};
use postern_api::ssh::{AddSshKey, SshEndpoint, SshKey};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use conn::{Endpoint, tls_config};
pub use error::ClientError;
pub use events::{Event, EventStream, MAX_EVENT_BYTES, STREAM_IDLE};
pub use rustls::ClientConfig as TlsConfig;

/// The largest answer read into memory: a page of an execution holds at most
/// `PAGE_OUTPUT_BUDGET` of output, escaped.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct Client {
    conn: Arc<conn::Conn>,
    token: Option<String>,
    stream_idle: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client")
            .field("url", &self.conn.endpoint.url)
            .finish()
    }
}

impl Client {
    /// A client of the bastion at `url`; `tls` is used for `https://` (default:
    /// the system's roots).
    pub fn new(
        url: &str,
        token: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Client, ClientError> {
        Ok(Client {
            conn: Arc::new(conn::Conn {
                endpoint: Endpoint::parse(url)?,
                tls,
                timeout: Duration::from_secs(30),
            }),
            token: token.map(|t| t.trim().to_string()),
            stream_idle: events::STREAM_IDLE,
        })
    }

    /// How long an event stream may send nothing at all (not even a
    /// keep-alive) before it is taken for dead.
    pub fn with_stream_idle(mut self, idle: Duration) -> Client {
        self.stream_idle = idle;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.conn.endpoint
    }

    fn headers(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut h = Vec::with_capacity(extra.len() + 1);
        if let Some(t) = &self.token {
            h.push(("authorization", format!("Bearer {t}")));
        }
        h.extend(extra.iter().cloned());
        h
    }

    /// One request; a 2xx answer's body is parsed as `T`, anything else is
    /// [`ClientError::Api`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let (_, value) = self.call_with(method, path, &[], body).await?;
        Ok(value)
    }

    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        extra: &[(&'static str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<(http::HeaderMap, T), ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| ClientError::Decode {
                url: self.conn.endpoint.url.clone(),
                why: format!("cannot encode the request: {e}"),
            })?;
        let (parts, bytes) = self
            .conn
            .send_read(method, path, &self.headers(extra), body, MAX_ANSWER_BYTES)
            .await?;
        let status = parts.status.as_u16();
        if !parts.status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        let value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.conn.endpoint.url.clone(),
            why: format!("{status} with a body that is not the expected JSON: {e}"),
        })?;
        Ok((parts.headers, value))
    }

    /// Signs in with a name and password (and code); needs no token.
    pub async fn login(
        &self,
        body: &postern_api::identity::Login,
    ) -> Result<postern_api::identity::SessionCreated, ClientError> {
        self.call(
            Method::POST,
            &path(API, routes::AUTH_LOGIN, &[]),
            Some(body),
        )
        .await
    }

    /// Starts a headless SSO sign-in; needs no token.
    pub async fn sso_device(
        &self,
        org: &str,
        provider: &str,
    ) -> Result<postern_api::identity::DeviceStarted, ClientError> {
        let body = postern_api::identity::StartDevice {
            org: org.to_string(),
            provider: provider.to_string(),
        };
        self.call(
            Method::POST,
            &path(API, routes::AUTH_SSO_DEVICE, &[]),
            Some(&body),
        )
        .await
    }

    /// Collects a finished SSO sign-in (`pending` until it is).
    pub async fn sso_collect(
        &self,
        code: &str,
        verifier: Option<&str>,
    ) -> Result<postern_api::identity::Collected, ClientError> {
        let body = postern_api::identity::Collect {
            code: code.to_string(),
            verifier: verifier.map(str::to_string),
        };
        self.call(
            Method::POST,
            &path(API, routes::AUTH_SSO_COLLECT, &[]),
            Some(&body),
        )
        .await
    }

    /// A client certificate for the Kubernetes door, for this client's session.
    pub async fn kube_certificate(
        &self,
        csr_pem: &str,
    ) -> Result<postern_api::identity::KubeCertificate, ClientError> {
        let body = postern_api::identity::KubeCsr {
            csr: csr_pem.to_string(),
        };
        self.call(
            Method::POST,
            &path(API, routes::AUTH_KUBE_CERT, &[]),
            Some(&body),
        )
        .await
    }

    /// The kubeconfig (YAML) for the edges this client may reach.
    pub async fn kubeconfig(&self, project: Option<&str>) -> Result<String, ClientError> {
        let mut p = path(API, routes::KUBECONFIG, &[]);
        if let Some(project) = project {
            p.push_str(&format!("?project={project}"));
        }
        let (parts, bytes) = self
            .conn
            .send_read(Method::GET, &p, &self.headers(&[]), None, MAX_ANSWER_BYTES)
            .await?;
        if !parts.status.is_success() {
            return Err(api_error(parts.status.as_u16(), &bytes));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Makes a bot in a project.
    pub async fn create_bot(
        &self,
        project: &str,
        body: &postern_api::identity::CreateBot,
    ) -> Result<postern_api::identity::Bot, ClientError> {
        self.call(
            Method::POST,
            &path(API, routes::BOTS, &[project]),
            Some(body),
        )
        .await
    }

    /// A project's bots.
    pub async fn bots(
        &self,
        project: &str,
    ) -> Result<Vec<postern_api::identity::Bot>, ClientError> {
        self.call(
            Method::GET,
            &path(API, routes::BOTS, &[project]),
            None::<&()>,
        )
        .await
    }

    /// Deletes a bot.
    pub async fn delete_bot(&self, project: &str, name: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                Method::DELETE,
                &path(API, routes::BOT, &[project, name]),
                None::<&()>,
            )
            .await?;
        Ok(())
    }

    /// Ends the session this client holds.
    pub async fn logout(&self) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                &path(API, routes::AUTH_LOGOUT, &[]),
                None::<&()>,
            )
            .await?;
        Ok(())
    }

    /// Certifies an SSH public key for this client's session.
    pub async fn ssh_certificate(
        &self,
        public_key: &str,
    ) -> Result<postern_api::identity::SshCertificate, ClientError> {
        let body = postern_api::identity::CertifyKey {
            public_key: public_key.to_string(),
        };
        self.call(
            Method::POST,
            &path(API, routes::AUTH_SSH_CERT, &[]),
            Some(&body),
        )
        .await
    }

    /// Accepts an invitation; needs no token.
    pub async fn accept_invitation(
        &self,
        body: &postern_api::identity::AcceptInvitation,
    ) -> Result<postern_api::identity::InvitationAccepted, ClientError> {
        self.call(
            Method::POST,
            &path(API, routes::AUTH_INVITATION, &[]),
            Some(body),
        )
        .await
    }

    /// Makes an invitation for a local user (org admins).
    pub async fn create_invitation(
        &self,
        user: &str,
    ) -> Result<postern_api::identity::InvitationCreated, ClientError> {
        let body = postern_api::identity::CreateInvitation::default();
        self.call(
            Method::POST,
            &path(API, routes::USER_INVITATION, &[user]),
            Some(&body),
        )
        .await
    }

    pub async fn whoami(&self) -> Result<User, ClientError> {
        self.call(Method::GET, &path(API, routes::WHOAMI, &[]), None::<&()>)
            .await
    }

    pub async fn projects(&self) -> Result<Vec<Project>, ClientError> {
        self.call(Method::GET, &path(API, routes::PROJECTS, &[]), None::<&()>)
            .await
    }

    pub async fn create_project(&self, name: &str) -> Result<Project, ClientError> {
        let body = CreateProject {
            name: name.to_string(),
        };
        self.call(Method::POST, &path(API, routes::PROJECTS, &[]), Some(&body))
            .await
    }

    pub async fn edges(&self, project: &str) -> Result<Vec<Edge>, ClientError> {
        self.call(
            Method::GET,
            &path(API, routes::EDGES, &[project]),
            None::<&()>,
        )
        .await
    }

    pub async fn create_edge(&self, project: &str, name: &str) -> Result<Edge, ClientError> {
        let body = CreateEdge {
            name: name.to_string(),
        };
        self.call(
            Method::POST,
            &path(API, routes::EDGES, &[project]),
            Some(&body),
        )
        .await
    }

    pub async fn nodes(&self, project: &str, edge: &str) -> Result<Vec<Node>, ClientError> {
        let p = path(API, routes::NODES, &[project, edge]);
        self.call(Method::GET, &p, None::<&()>).await
    }

    pub async fn node(&self, project: &str, edge: &str, node: &str) -> Result<Node, ClientError> {
        let p = path(API, routes::NODE, &[project, edge, node]);
        self.call(Method::GET, &p, None::<&()>).await
    }

    /// Approves the node (when pending) and, when given, the labels its agent
    /// reports, exactly as the caller saw them: the bastion refuses (409) if
    /// the agent reports others by then.
    pub async fn approve_node(
        &self,
        project: &str,
        edge: &str,
        node: &str,
        labels: Option<&Labels>,
    ) -> Result<Node, ClientError> {
        let p = path(API, routes::NODE_APPROVE, &[project, edge, node]);
        let body = ApproveNode {
            labels: labels.cloned(),
        };
        self.call(Method::POST, &p, Some(&body)).await
    }

    /// Grants (`grant`) or takes back a node's Kubernetes gateway role; answers
    /// the node as it is now.
    pub async fn set_kube_gateway(
        &self,
        project: &str,
        edge: &str,
        node: &str,
        grant: bool,
    ) -> Result<Node, ClientError> {
        let p = path(API, routes::NODE_KUBE_GATEWAY, &[project, edge, node]);
        let method = if grant { Method::PUT } else { Method::DELETE };
        self.call(method, &p, None::<&()>).await
    }

    pub async fn create_enrollment_token(
        &self,
        project: &str,
        edge: &str,
        body: &CreateEnrollmentToken,
    ) -> Result<EnrollmentTokenCreated, ClientError> {
        let p = path(API, routes::ENROLLMENT_TOKENS, &[project, edge]);
        self.call(Method::POST, &p, Some(body)).await
    }

    pub async fn users(&self) -> Result<Vec<User>, ClientError> {
        self.call(Method::GET, &path(API, routes::USERS, &[]), None::<&()>)
            .await
    }

    pub async fn create_user(&self, name: &str) -> Result<User, ClientError> {
        let body = CreateUser {
            name: name.to_string(),
        };
        self.call(Method::POST, &path(API, routes::USERS, &[]), Some(&body))
            .await
    }

    pub async fn set_role(&self, user: &str, binding: &RoleBinding) -> Result<User, ClientError> {
        let p = path(API, routes::USER_ROLES, &[user]);
        self.call(Method::PUT, &p, Some(binding)).await
    }

    pub async fn create_token(
        &self,
        user: &str,
        body: &postern_api::admin::CreateToken,
    ) -> Result<postern_api::admin::TokenCreated, ClientError> {
        let p = path(API, routes::USER_TOKENS, &[user]);
        self.call(Method::POST, &p, Some(body)).await
    }

    pub async fn ssh_keys(&self, user: &str) -> Result<Vec<SshKey>, ClientError> {
        let p = path(API, routes::SSH_KEYS, &[user]);
        self.call(Method::GET, &p, None::<&()>).await
    }

    pub async fn add_ssh_key(&self, user: &str, public_key: &str) -> Result<SshKey, ClientError> {
        let body = AddSshKey {
            public_key: public_key.to_string(),
        };
        let p = path(API, routes::SSH_KEYS, &[user]);
        self.call(Method::POST, &p, Some(&body)).await
    }

    pub async fn delete_ssh_key(&self, user: &str, key_id: &str) -> Result<(), ClientError> {
        let p = path(API, routes::SSH_KEY, &[user, key_id]);
        let _: serde_json::Value = self.call(Method::DELETE, &p, None::<&()>).await?;
        Ok(())
    }

    pub async fn ssh_endpoint(&self) -> Result<SshEndpoint, ClientError> {
        self.call(
            Method::GET,
            &path(API, routes::SSH_ENDPOINT, &[]),
            None::<&()>,
        )
        .await
    }

    pub async fn audit(&self, f: &AuditQuery) -> Result<AuditPage, ClientError> {
        let q = query(&[
            ("limit", f.limit.map(|v| v.to_string())),
            ("offset", f.offset.map(|v| v.to_string())),
            ("action", f.action.clone()),
            ("actor", f.actor.clone()),
            ("outcome", f.outcome.clone()),
            ("since", f.since.clone()),
            ("until", f.until.clone()),
        ]);
        let p = format!("{}{q}", path(API, routes::AUDIT, &[]));
        self.call(Method::GET, &p, None::<&()>).await
    }

    /// Submits a command; `idempotency_key` makes a retried submit run it once.
    pub async fn execute(
        &self,
        project: &str,
        edge: &str,
        req: &ExecuteRequest,
        idempotency_key: Option<&str>,
    ) -> Result<ExecuteResponse, ClientError> {
        let p = path(CMDEXEC, routes::EXECUTE, &[project, edge]);
        let extra: Vec<(&'static str, String)> = idempotency_key
            .map(|k| ("idempotency-key", k.to_string()))
            .into_iter()
            .collect();
        let (_, v) = self.call_with(Method::POST, &p, &extra, Some(req)).await?;
        Ok(v)
    }

    /// One page of an execution's nodes (`node_offset`, `node_limit`).
    pub async fn execution(
        &self,
        project: &str,
        edge: &str,
        exec_id: &str,
        node_offset: i64,
        node_limit: i64,
    ) -> Result<Execution, ClientError> {
        let q = query(&[
            ("node_offset", Some(node_offset.to_string())),
            ("node_limit", Some(node_limit.to_string())),
        ]);
        let p = format!(
            "{}{q}",
            path(CMDEXEC, routes::EXECUTION, &[project, edge, exec_id])
        );
        self.call(Method::GET, &p, None::<&()>).await
    }

    pub async fn history(
        &self,
        project: &str,
        limit: i64,
        offset: i64,
    ) -> Result<History, ClientError> {
        let q = query(&[
            ("limit", Some(limit.to_string())),
            ("offset", Some(offset.to_string())),
        ]);
        let p = format!("{}{q}", path(CMDEXEC, routes::HISTORY, &[project]));
        self.call(Method::GET, &p, None::<&()>).await
    }

    pub async fn cancel(
        &self,
        project: &str,
        edge: &str,
        exec_id: &str,
    ) -> Result<CancelResponse, ClientError> {
        let p = path(CMDEXEC, routes::EXECUTION_CANCEL, &[project, edge, exec_id]);
        self.call(Method::POST, &p, None::<&()>).await
    }

    /// The execution's events from the start, or after `last_event_id`.
    /// `Ok(None)`: nothing follows that event (the execution is finished).
    pub async fn events(
        &self,
        project: &str,
        edge: &str,
        exec_id: &str,
        last_event_id: Option<&str>,
    ) -> Result<Option<EventStream>, ClientError> {
        let p = path(CMDEXEC, routes::EXECUTION_EVENTS, &[project, edge, exec_id]);
        let mut extra = vec![("accept", "text/event-stream".to_string())];
        if let Some(id) = last_event_id {
            extra.push(("last-event-id", id.to_string()));
        }
        let resp = self
            .conn
            .send(Method::GET, &p, &self.headers(&extra), None)
            .await?;
        let status = resp.status().as_u16();
        if status == 204 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024);
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(Some(EventStream::new(
            resp.into_body(),
            self.conn.endpoint.url.clone(),
            self.stream_idle,
        )))
    }
}

/// An error answer: the API's `{"error": {code, message}}`, or whatever a
/// proxy in front said, cut short.
fn api_error(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<postern_api::ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status,
            code: e.error.code,
            message: clamp(&e.error.message),
        },
        Err(_) => ClientError::Api {
            status,
            code: String::new(),
            message: clamp(&String::from_utf8_lossy(body)),
        },
    }
}

/// A server's text as shown to a person: one line of at most 500 printable
/// characters.
fn clamp(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    if s.chars().count() > 500 {
        out.push('…');
    }
    let out = out.trim().to_string();
    if out.is_empty() {
        "(no details)".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests;
