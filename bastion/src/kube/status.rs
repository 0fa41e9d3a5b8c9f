//! Refusals in the Kubernetes API's own shape, a `Status` object, so kubectl and
//! client libraries print the bastion's reason as they print the API server's
//! ("Error from server (Forbidden): …").

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::KubeBody;
use crate::access::Denied;

/// What a user reads when the bastion cannot reach the edge's gateway agent.
/// The cause (a peer replica's name and address, a channel or TLS error) is
/// the operators' business and goes to the bastion's log only.
pub const GATEWAY_UNREACHABLE: &str = "the edge's Kubernetes gateway agent could not be reached; retry, and if it persists an operator finds the cause in the bastion's log";

pub fn response(code: StatusCode, message: &str) -> Response<KubeBody> {
    let reason = match code {
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => "ServiceUnavailable",
        StatusCode::GATEWAY_TIMEOUT => "Timeout",
        _ => "InternalError",
    };
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The Kubernetes door's reading of the shared outcome.
pub fn denied(d: &Denied) -> Response<KubeBody> {
    match d {
        Denied::Unauthenticated(m) => response(StatusCode::UNAUTHORIZED, m),
        Denied::NotFound(m) => response(StatusCode::NOT_FOUND, m),
        Denied::Forbidden { reason, .. } => response(StatusCode::FORBIDDEN, reason),
        Denied::Unavailable(m) => response(StatusCode::SERVICE_UNAVAILABLE, m),
        Denied::Internal(_) => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the bastion's log has the details",
        ),
    }
}
