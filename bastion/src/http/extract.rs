//! Request extractors that turn every kind of bad input into a clear `ApiError`:
//! the bearer token (`Caller`), JSON bodies (`ApiJson`), path parameters
//! (`ApiPath`) and query strings (`ApiQuery`). Each also fills in the request's
//! audit context.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::path::ErrorKind;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use http::request::Parts;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use crate::authz::Principal;

pub use crate::access::authn::TOKEN_PREFIX;

/// What the audit middleware records about a request, filled in by extractors and
/// handlers as they learn who asked and what it touched.
#[derive(Debug, Clone, Default)]
pub struct AuditCtx(pub Arc<Mutex<AuditInfo>>);

#[derive(Debug, Default)]
pub struct AuditInfo {
    pub actor: Option<String>,
    pub org_id: Option<String>,
    pub project: Option<String>,
    pub targets: Vec<String>,
    pub exec_id: Option<String>,
    pub detail: Option<Value>,
    pub error: Option<String>,
    /// Set for mutations of the admin API: the caller's request is audited as
    /// soon as they are known, and refused (503) if that entry cannot be written.
    pub audit_first: bool,
}

impl AuditCtx {
    pub fn with<R>(&self, f: impl FnOnce(&mut AuditInfo) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

pub fn audit_ctx(parts: &Parts) -> AuditCtx {
    parts
        .extensions
        .get::<AuditCtx>()
        .cloned()
        .unwrap_or_default()
}

pub fn source_ip(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_string())
}

/// The client's address: the peer's, or, when the peer is one of the
/// `trusted` proxies, the last address in `X-Forwarded-For` that is not one of
/// them (what the outermost trusted proxy saw). A header from anyone else is
/// ignored, so a client cannot choose its own address.
pub fn client_ip(
    headers: &http::HeaderMap,
    peer: Option<std::net::IpAddr>,
    trusted: &[String],
) -> Option<std::net::IpAddr> {
    use crate::access::authn::in_cidr;
    let peer = peer?;
    let is_proxy = |ip: std::net::IpAddr| trusted.iter().any(|c| in_cidr(ip, c));
    if !is_proxy(peer) {
        return Some(peer);
    }
    let mut hops: Vec<std::net::IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for").iter().take(16) {
        let Ok(v) = v.to_str() else { return Some(peer) };
        for part in v.split(',').take(32) {
            match part.trim().parse() {
                Ok(ip) => hops.push(ip),
                Err(_) => return Some(peer),
            }
        }
    }
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !is_proxy(*ip))
            .unwrap_or(peer),
    )
}

/// An authenticated caller, established from `Authorization: Bearer pst_…`.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The session or token the call came with.
    pub credential: crate::access::authn::Credential,
    pub source_ip: Option<String>,
    pub audit: AuditCtx,
    /// The call came from the web console, its session in a cookie.
    pub console: Option<super::console::session::ConsoleAuth>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let audit = audit_ctx(parts);
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip());
        let source = client_ip(&parts.headers, peer, &state.settings.trusted_proxies);
        // A request with no Authorization header may come from the console,
        // with its session in a cookie (CSRF and Origin checked there).
        let cookie = match header {
            None => {
                let tls = super::console::session::over_tls(
                    &state.settings.trusted_proxies,
                    &parts.headers,
                    peer,
                );
                super::console::session::cookie_token(&parts.headers, tls)
            }
            Some(_) => None,
        };
        let (principal, credential, console) = match cookie {
            Some(token) => {
                let (p, c, console) =
                    super::console::session::authenticate(state, parts, &token).await?;
                (p, c, Some(console))
            }
            None => {
                let (p, c) = crate::access::authn::bearer(&state.store, header, source).await?;
                (p, c, None)
            }
        };
        let audit_first = audit.with(|a| {
            a.actor = Some(principal.user_name.clone());
            a.org_id = Some(principal.org_id.clone());
            a.audit_first
        });
        if audit_first {
            // Fail closed: a change nobody could later see in the audit log must
            // not happen. The outcome is audited again once the request is answered.
            let route = parts
                .extensions
                .get::<axum::extract::MatchedPath>()
                .map_or_else(|| parts.uri.path().to_string(), |m| m.as_str().to_string());
            let ev = crate::audit::Event::new(format!("api {} {route}", parts.method), "requested")
                .org(&principal.org_id)
                .actor(&principal.user_name)
                .source(source_ip(parts))
                .detail(serde_json::json!({ "path": parts.uri.path() }));
            state
                .audit
                .before(ev)
                .await
                .map_err(ApiError::audit_refused)?;
        }
        Ok(Caller {
            principal,
            credential,
            source_ip: source.map(|s| s.to_string()),
            audit,
            console,
        })
    }
}

/// A JSON body; malformed JSON, unknown fields, a wrong content type and an
/// oversized body each get their own clear error. The body must be a JSON object.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<ObjectOnly<T>>::from_request(req, state).await {
            Ok(axum::Json(ObjectOnly(v))) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A JSON body that may be left out: a request with no body and no
/// `Content-Type` reads as `T::default()`, so that a bare `curl -XPOST` keeps
/// working on a route whose body was added later and only narrows what it
/// does. A body that is there is read as [`ApiJson`] reads it.
#[derive(Debug)]
pub struct OptionalApiJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if req.headers().contains_key(http::header::CONTENT_TYPE) {
            let ApiJson(v) = ApiJson::<T>::from_request(req, state).await?;
            return Ok(OptionalApiJson(v));
        }
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) if bytes.is_empty() => Ok(OptionalApiJson(T::default())),
            // Bytes without a type are not read as JSON: the client meant
            // something, and guessing what could approve more than it asked.
            Ok(_) => Err(ApiError::Unsupported(
                "send the body as JSON with `Content-Type: application/json` (or send no body)"
                    .into(),
            )),
            Err(r) if r.status() == http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge("request body too large".into()))
            }
            Err(r) => Err(ApiError::BadRequest(r.body_text())),
        }
    }
}

/// `T` read from a JSON object only. Serde also reads a struct from an array of
/// its fields in order, so without this `[null, null]` would be taken as a
/// request with every field left out, a body the API's schema does not allow.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(PhantomData)).map(ObjectOnly)
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => {
            ApiError::BadRequest(format!("invalid request body: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::Unsupported(
            "send the body as JSON with `Content-Type: application/json`".into(),
        ),
        other if other.status() == http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("request body too large".into())
        }
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// Path parameters. One that is not UTF-8 once percent-decoded names nothing
/// that can exist, so it is a JSON 404 like any unknown name (axum would answer
/// a plain-text 400).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(e))
                if matches!(e.kind(), ErrorKind::InvalidUtf8InPathParam { .. }) =>
            {
                Err(ApiError::NotFound(format!("not found: {}", e.body_text())))
            }
            // The route and the handler's parameters disagree: a bug, not bad input.
            Err(other) => Err(ApiError::Internal(other.body_text())),
        }
    }
}

/// A query string, with unknown parameters and non-numbers refused.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::BadRequest(
                format!("invalid query string: {}", e.body_text()),
            )),
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// A request that needs no credential (signing in), with where it came from
/// and its audit context.
#[derive(Debug, Clone)]
pub struct Anonymous {
    /// The client's address (from `X-Forwarded-For` when the peer is a
    /// trusted proxy); `None` only in tests that call the router directly,
    /// which then count as one source.
    pub source: Option<std::net::IpAddr>,
    /// The TCP peer itself (a trusted proxy's, when there is one).
    pub peer: Option<std::net::IpAddr>,
    pub audit: AuditCtx,
}

impl Anonymous {
    /// The source for per-source limits.
    pub fn source_or_local(&self) -> std::net::IpAddr {
        self.source
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }
}

impl FromRequestParts<AppState> for Anonymous {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip());
        Ok(Anonymous {
            source: client_ip(&parts.headers, peer, &state.settings.trusted_proxies),
            peer,
            audit: audit_ctx(parts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::client_ip;

    #[test]
    fn the_client_address_comes_from_a_trusted_proxy_only() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.5".parse().unwrap());
        let trusted = vec!["127.0.0.1".to_string(), "10.0.0.0/8".to_string()];
        // From the proxy: the last hop that is not a proxy.
        assert_eq!(
            client_ip(&h, Some(ip("127.0.0.1")), &trusted),
            Some(ip("203.0.113.9"))
        );
        // From anyone else: the header is the client's own words, ignored.
        assert_eq!(
            client_ip(&h, Some(ip("198.51.100.1")), &trusted),
            Some(ip("198.51.100.1"))
        );
        // No proxies configured: the peer.
        assert_eq!(
            client_ip(&h, Some(ip("127.0.0.1")), &[]),
            Some(ip("127.0.0.1"))
        );
        // Garbage in the header: the peer, never a guess.
        h.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(
            client_ip(&h, Some(ip("127.0.0.1")), &trusted),
            Some(ip("127.0.0.1"))
        );
    }
}
