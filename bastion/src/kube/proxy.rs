//! One Kubernetes API request: authenticated with the caller's API token,
//! authorized against their role in the edge's project, sent over the channel of
//! one of the edge's granted gateway nodes with the Kubernetes identity the role
//! grants (and nothing the client claimed), streamed back, and audited with what
//! it touched, the node that served it, its status, its bytes and its duration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use postern_api::kube::{self as contract, RequestInfo};
use serde_json::{Value, json};

use super::Door;
use super::gateways::{self, ServedBy};
use super::{KubeBody, status};
use crate::access::{self, Denied};
use crate::agents::{AgentBody, BoxError, NodeLink};
use crate::audit::Event;
use crate::authz::{self, Decision, Principal};
use crate::metrics::inc;
use crate::store::{EdgeRow, ProjectRow};

/// How long a gateway may take to answer with headers. Watches and exec streams
/// answer at once and then stream; a list that needs longer is refused with 504.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

/// What a request was authorized as, carried to its audit entry.
#[derive(Debug, Clone)]
pub(super) struct Authorized {
    pub principal: Principal,
    pub token_id: String,
    pub project: ProjectRow,
    pub edge: EdgeRow,
    pub groups: Vec<String>,
    /// When the caller's API token expires (ms since the epoch): what it holds
    /// open ends then.
    pub expires_at_ms: i64,
    pub info: RequestInfo,
    pub peer: SocketAddr,
    pub started: Instant,
    /// The gateway node the request is sent to, once one is chosen: every entry
    /// from then on names it.
    pub gateway: Option<ServedBy>,
}

impl Authorized {
    /// A request answered here, not sent on (or no longer): its
    /// `kube.request` entry, with the status and the reason the client reads.
    pub(super) async fn refused(
        &self,
        door: &Door,
        outcome: &str,
        code: StatusCode,
        msg: &str,
    ) -> Response<KubeBody> {
        door.audit
            .batched(self.event(
                "kube.request",
                outcome,
                json!({ "status": code.as_u16(), "reason": msg }),
            ))
            .await;
        status::response(code, msg)
    }

    pub(super) fn event(&self, action: &str, outcome: &str, mut detail: Value) -> Event {
        let i = &self.info;
        let base = json!({
            "edge": self.edge.name,
            "verb": i.verb,
            "api_group": i.api_group,
            "resource": i.resource,
            "subresource": i.subresource,
            "namespace": i.namespace,
            "name": i.name,
            "path": if i.is_resource { Value::Null } else { json!(i.path) },
            "kube_groups": self.groups,
            "gateway": self.gateway.as_ref().map(|g| json!({
                "node_id": g.node_id,
                "hostname": g.hostname,
            })),
        });
        if let (Some(d), Value::Object(b)) = (detail.as_object_mut(), base) {
            d.extend(b);
        }
        let mut ev = Event::new(action, outcome)
            .org(&self.principal.org_id)
            .actor(&self.principal.user_name)
            .source(Some(self.peer.ip().to_string()))
            .project(&self.project.name)
            .target(format!("edge:{}", self.edge.name));
        if let Some(g) = &self.gateway {
            ev = ev.target(format!("node:{}", g.hostname));
        }
        ev.detail(detail)
    }
}

/// `/k8s/{project}/{edge}{rest}` → (project, edge, rest), rest starting with `/`.
pub(super) fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let tail = path.strip_prefix(contract::PATH_PREFIX)?;
    let (project, tail) = tail.split_once('/').unwrap_or((tail, ""));
    let (edge, _) = tail.split_once('/').unwrap_or((tail, ""));
    if project.is_empty() || edge.is_empty() {
        return None;
    }
    let rest = &tail[edge.len()..];
    Some((project, edge, if rest.is_empty() { "/" } else { rest }))
}

/// Which edge a request is for: the connection's TLS server name, or the path.
pub(super) fn route<'a>(
    sni: Option<&'a (String, String)>,
    path: &'a str,
) -> Option<(&'a str, &'a str, &'a str)> {
    match sni {
        Some((project, edge)) => Some((project, edge, path)),
        None => split_path(path),
    }
}

pub async fn handle(
    shared: Arc<Door>,
    peer: SocketAddr,
    sni: Option<Arc<(String, String)>>,
    session: Option<Arc<String>>,
    req: Request<Incoming>,
) -> Response<KubeBody> {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let Some((project, edge, rest)) = route(sni.as_deref(), &path) else {
        inc(&shared.metrics.kube_denied);
        return status::response(
            StatusCode::NOT_FOUND,
            "the bastion serves Kubernetes at /k8s/{project}/{edge}/…: use a kubeconfig from GET /api/v1/kubeconfig",
        );
    };
    let mut auth = match authorize(
        &shared,
        peer,
        session.as_deref(),
        &req,
        project,
        edge,
        rest,
        started,
    )
    .await
    {
        Ok(a) => a,
        Err(d) => {
            inc(&shared.metrics.kube_denied);
            return status::denied(&d);
        }
    };
    // Chosen before anything is recorded, so that every entry of the request
    // names the node that serves it.
    let picked = match gateways::pick(&shared, &auth.edge).await {
        Ok(p) => p,
        Err((code, msg)) => {
            inc(&shared.metrics.kube_denied);
            return auth.refused(&shared, "error", code, &msg).await;
        }
    };
    auth.gateway = Some(picked.served_by.clone());
    // Every request ends in an entry written from a drop; during a long
    // database outage those wait in memory. Past a bound, in all or for this
    // user, no new request is taken (nor audited: that entry would wait too)
    // until the log catches up.
    if shared.audit.behind(&auth.principal.user_id) {
        inc(&shared.metrics.kube_denied);
        return status::response(
            StatusCode::SERVICE_UNAVAILABLE,
            "the bastion's audit log is behind, so no request is sent until it catches up; retry shortly",
        );
    }
    let upgrade = is_upgrade(req.headers());
    // Registered before it is sent, so an access change or the node's gateway
    // role taken back from now on ends it; and before the fail-closed entry
    // below, so one user's share of open requests also bounds how many of
    // those writes they hold waiting at once.
    let long = upgrade || auth.info.verb == "watch";
    let live = match shared.live.register(
        &auth.principal.user_id,
        &auth.token_id,
        &auth.project.id,
        &picked.served_by.node_id,
        long,
    ) {
        Ok(l) => l,
        Err(why) => {
            inc(&shared.metrics.kube_denied);
            return auth
                .refused(&shared, "denied", StatusCode::TOO_MANY_REQUESTS, &why)
                .await;
        }
    };
    if upgrade || contract::is_mutation(&auth.info.verb) {
        // Fail closed: a change, or a shell, nobody could find in the audit log
        // does not happen.
        if let Err(e) = shared
            .audit
            .before(auth.event("kube.request", "requested", json!({})))
            .await
        {
            tracing::error!(error = %e, "audit log unwritable; refusing a Kubernetes request");
            return status::response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the bastion cannot write its audit log, so the request was not sent; retry shortly",
            );
        }
    }
    let refused = match gateways::still_granted(&shared, &auth.edge, &picked).await {
        Ok(true) => None,
        Ok(false) => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "the edge's Kubernetes gateways changed while the request was opening; send it again"
                .to_string(),
        )),
        Err(r) => Some(r),
    };
    if let Some((code, msg)) = refused {
        inc(&shared.metrics.kube_denied);
        return auth.refused(&shared, "error", code, &msg).await;
    }
    let link = picked.link;
    if long {
        // A change committed between the authorization above and the
        // registration cut nothing here: for what may stay open for hours,
        // authorize again now that any later change will reach it.
        if let Err(d) = reauthorize(&shared, &auth, &req).await {
            inc(&shared.metrics.kube_denied);
            return status::denied(&d);
        }
    }
    inc(&shared.metrics.kube_requests);
    if upgrade {
        return super::upgrade::relay(shared, auth, live, link, req, rest.to_string()).await;
    }
    forward(shared, auth, live, link, req, rest.to_string()).await
}

#[allow(clippy::too_many_arguments)]
async fn authorize(
    shared: &Door,
    peer: SocketAddr,
    session: Option<&String>,
    req: &Request<Incoming>,
    project: &str,
    edge: &str,
    rest: &str,
    started: Instant,
) -> Result<Authorized, Denied> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let info = contract::request_info(req.method().as_str(), rest, req.uri().query());
    // A bearer, when sent, decides; else the client certificate's session. Its
    // cache key starts with a NUL, which no header value can hold, so no
    // header can pass for it.
    let certified = match (header, session) {
        (None, Some(s)) => Some(s.as_str()),
        _ => None,
    };
    let cert_key = certified.map(|s| format!("\0mtls:{s}"));
    let key = super::live::CacheKey::new(
        cert_key.as_deref().or(header).unwrap_or_default(),
        project,
        edge,
    );
    let epoch = shared.live.epoch();
    if let Some(hit) = shared.live.cached(&key) {
        return Ok(Authorized {
            principal: hit.principal,
            token_id: hit.token_id,
            project: hit.project,
            edge: hit.edge,
            groups: hit.groups,
            expires_at_ms: hit.expires_at_ms,
            info,
            peer,
            started,
            gateway: None,
        });
    }
    let found = match certified {
        Some(s) => access::authn::certified_session(&shared.store, s).await,
        None => access::authn::bearer(&shared.store, header, Some(peer.ip())).await,
    };
    let (principal, credential) = match found {
        Ok(p) => p,
        Err(d) => {
            if matches!(d, Denied::Unauthenticated(_)) {
                shared.audit.best_effort(
                    Event::new("kube.auth", "denied")
                        .source(Some(peer.ip().to_string()))
                        .detail(json!({ "reason": d.to_string(), "path": postern_api::validate::peer_line(req.uri().path(), 200) })),
                );
            }
            return Err(d);
        }
    };
    // What the request is held under: a session or a token, cut when it ends.
    let (token_id, expires_at_ms) = (credential.id, credential.expires_at);
    let refuse = |d: Denied, project: Option<&ProjectRow>| {
        let mut ev = Event::new("kube.request", "denied")
            .org(&principal.org_id)
            .actor(&principal.user_name)
            .source(Some(peer.ip().to_string()))
            .target(format!("edge:{}", postern_api::validate::peer_line(edge, 64)))
            .detail(json!({ "reason": d.to_string(), "verb": info.verb, "resource": info.resource, "namespace": info.namespace, "name": info.name }));
        if let Some(p) = project {
            ev = ev.project(&p.name);
        }
        (d, ev)
    };
    // An authenticated caller's refusals are written before the answer, never
    // dropped from a full queue: the caller waits for its own audit entries.
    let audited = |(d, ev): (Denied, Event)| async move {
        shared.audit.batched(ev).await;
        d
    };
    let project = match access::resolve::visible_project(&shared.store, &principal, project).await {
        Ok(p) => p,
        Err(d) => return Err(audited(refuse(d, None)).await),
    };
    let groups = match authz::kube_groups(&principal, &project) {
        Ok(g) => g,
        Err(Decision::Forbidden(why)) => {
            return Err(audited(refuse(
                Denied::forbidden(why, Some(&project.name)),
                Some(&project),
            ))
            .await);
        }
        Err(_) => {
            return Err(audited(refuse(
                access::resolve::project_not_found(&project.name),
                None,
            ))
            .await);
        }
    };
    let edge = match access::resolve::edge(&shared.store, &project, edge).await {
        Ok(e) => e,
        Err(d) => return Err(audited(refuse(d, Some(&project))).await),
    };
    shared.live.remember(
        key,
        super::live::Cached {
            principal: principal.clone(),
            token_id: token_id.clone(),
            project: project.clone(),
            edge: edge.clone(),
            groups: groups.clone(),
            expires_at_ms,
        },
        epoch,
    );
    Ok(Authorized {
        principal,
        token_id,
        project,
        edge,
        groups,
        expires_at_ms,
        info,
        peer,
        started,
        gateway: None,
    })
}

/// What ends a request before it is done: an access change, the serving node's
/// gateway role taken back, the expiry of the caller's token, the bastion's stop.
pub(super) fn ends(
    shared: &Door,
    auth: &Authorized,
    cuts: super::live::Cuts,
) -> super::stream::Ends {
    let left = auth
        .expires_at_ms
        .saturating_sub(crate::clock::now_ms())
        .max(0);
    super::stream::Ends {
        cut: cuts.access,
        gateway_cut: cuts.gateway,
        expires: Some(
            tokio::time::Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0)),
        ),
        shutdown: shared.shutdown.clone(),
    }
}

/// A request's registration among the open ones, and what ends it.
pub(super) type Registration = (super::live::OwnedRegistration, super::live::Cuts);

/// The same caller, token and Kubernetes groups as when `auth` was made.
async fn reauthorize(
    shared: &Door,
    auth: &Authorized,
    req: &Request<Incoming>,
) -> Result<(), Denied> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let (now, _) = match header {
        None => access::authn::certified_session(&shared.store, &auth.token_id).await?,
        Some(_) => access::authn::bearer(&shared.store, header, Some(auth.peer.ip())).await?,
    };
    match authz::kube_groups(&now, &auth.project) {
        Ok(groups) if groups == auth.groups && now.user_id == auth.principal.user_id => Ok(()),
        _ => Err(Denied::forbidden(
            "your access to this cluster changed while the request was opening; send it again",
            Some(&auth.project.name),
        )),
    }
}

pub(super) fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// The request to the gateway agent: the client's method, path and forwardable
/// headers, and who the bastion says the caller is.
pub(super) fn agent_request(
    auth: &Authorized,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    client: &HeaderMap,
    body: AgentBody,
) -> Result<Request<AgentBody>, http::Error> {
    let uri = match query {
        Some(q) => format!("http://agent{}{rest}?{q}", contract::AGENT_ROUTE_PREFIX),
        None => format!("http://agent{}{rest}", contract::AGENT_ROUTE_PREFIX),
    };
    let mut req = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(body)?;
    *req.headers_mut() = contract::forwardable_headers(client);
    let h = req.headers_mut();
    h.insert(
        HeaderName::from_static(contract::HDR_USER),
        HeaderValue::from_str(&auth.principal.user_name)?,
    );
    for g in &auth.groups {
        h.append(
            HeaderName::from_static(contract::HDR_GROUP),
            HeaderValue::from_str(g)?,
        );
    }
    Ok(req)
}

async fn forward(
    shared: Arc<Door>,
    auth: Authorized,
    live: Registration,
    link: NodeLink,
    req: Request<Incoming>,
    rest: String,
) -> Response<KubeBody> {
    let (parts, body) = req.into_parts();
    let bytes_in = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let body: AgentBody = body.map_err(|e| Box::new(e) as BoxError).boxed();
    let areq = match agent_request(
        &auth,
        &parts.method,
        &rest,
        parts.uri.query(),
        &parts.headers,
        body,
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot build a Kubernetes request for the gateway");
            return status::response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the bastion's log has the details",
            );
        }
    };
    let resp = match tokio::time::timeout(HEADERS_TIMEOUT, link.send(areq)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            // The error names replicas, addresses and TLS details: the log
            // has them, the user and the audit entry a fixed text.
            tracing::warn!(node = %link.node_id(), error = %e, "Kubernetes request: the gateway agent could not be reached");
            return auth
                .refused(
                    &shared,
                    "error",
                    StatusCode::SERVICE_UNAVAILABLE,
                    status::GATEWAY_UNREACHABLE,
                )
                .await;
        }
        Err(_) => {
            let msg = format!(
                "the edge's Kubernetes API server did not answer within {HEADERS_TIMEOUT:?}"
            );
            return auth
                .refused(&shared, "error", StatusCode::GATEWAY_TIMEOUT, &msg)
                .await;
        }
    };
    let (mut parts, body) = resp.into_parts();
    let agent_error = parts.headers.remove(contract::HDR_AGENT_ERROR).is_some();
    contract::retain_forwardable(&mut parts.headers);
    let code = parts.status;
    let (reg, cuts) = live;
    let ends = ends(&shared, &auth, cuts);
    let mut finish = super::stream::Finish::new(shared.clone(), auth, code, agent_error);
    finish.bytes_in = bytes_in;
    let body = super::stream::relay(&shared, body, ends, finish, reg, &link);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_name_project_edge_and_the_api_path() {
        assert_eq!(
            split_path("/k8s/prod/eu-1/api/v1/pods"),
            Some(("prod", "eu-1", "/api/v1/pods"))
        );
        assert_eq!(split_path("/k8s/prod/eu-1"), Some(("prod", "eu-1", "/")));
        assert_eq!(split_path("/k8s/prod/eu-1/"), Some(("prod", "eu-1", "/")));
        assert_eq!(split_path("/k8s/prod"), None);
        assert_eq!(split_path("/k8s//x/api"), None);
        assert_eq!(split_path("/api/v1/pods"), None);
    }
}
