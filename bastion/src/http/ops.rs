//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::AppState;

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")),
)]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store answers and, for a replica, when every live peer it has
/// needed is reachable; a bastion that cannot reach its database should be taken
/// out of a load balancer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain"),
        (status = 503, description = "The database does not answer, or a live peer replica cannot be reached", body = String, content_type = "text/plain"),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => match state.fleet.replicas() {
            Some(r) => match r.peers.unreachable(&r.live_peers()).await {
                unreachable if unreachable.is_empty() => (StatusCode::OK, "ready\n".to_string()),
                unreachable => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("peer replicas unreachable: {}\n", unreachable.join(", ")),
                ),
            },
            None => (StatusCode::OK, "ready\n".to_string()),
        },
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store did not answer within 2s\n".to_string(),
        ),
    }
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state.fleet, state.tasks.len()),
    )
}
