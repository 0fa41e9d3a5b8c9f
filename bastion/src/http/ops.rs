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

/// Ready when the store answers: a bastion that cannot reach its database should
/// be taken out of a load balancer. A replica also says which live peers it
/// cannot reach.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain"),
        (status = 503, description = "The database does not answer", body = String, content_type = "text/plain"),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => match state.fleet.replicas() {
            // A peer this replica cannot reach is said, not made a reason to be
            // taken out: the replica still serves its own nodes, and the peer at
            // fault may be the other one (which would then take both out).
            Some(r) => match r.peers.unreachable(&r.live_peers()).await {
                unreachable if unreachable.is_empty() => (StatusCode::OK, "ready\n".to_string()),
                unreachable => (
                    StatusCode::OK,
                    format!(
                        "ready, but these live peer replicas cannot be reached (their nodes are unreachable from here): {}\n",
                        unreachable.join(", ")
                    ),
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
        state
            .metrics
            .render(&live_gauges(&state.fleet), state.tasks.len()),
    )
}

/// What the fleet reads now, for the metrics page.
fn live_gauges(fleet: &crate::agents::Fleet) -> crate::metrics::LiveGauges {
    use std::sync::atomic::Ordering;
    crate::metrics::LiveGauges {
        agents_connected: fleet.local_count() as u64,
        replica: fleet.replicas().map(|r| crate::metrics::ReplicaGauges {
            peers_live: r.live_peers().len() as u64,
            remote_agents: r.remote_count() as u64,
            connections_out: r.peers.connections_out.load(Ordering::Relaxed),
            connections_in: r.peers.connections_in.load(Ordering::Relaxed),
            routed_out: r.routed_out.load(Ordering::Relaxed),
            routed_in: r.routed_in.load(Ordering::Relaxed),
        }),
        heap: crate::metrics::heap(),
    }
}
