//! The routes the agent serves to the bastion over the channel.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use postern_api::ErrorBody;
use postern_api::agent::{CsrResponse, Health, InstallCert, routes};
use serde_json::{Value, json};

use crate::identity::Identity;

type Reply<T> = Result<Json<T>, (StatusCode, Json<ErrorBody>)>;

pub fn router(identity: Arc<Identity>) -> Router {
    Router::new()
        .route(routes::HEALTH, get(health))
        .route(routes::CSR, post(csr))
        .route(routes::CERT, put(cert))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(identity)
}

fn fail(status: StatusCode, e: impl std::fmt::Display) -> (StatusCode, Json<ErrorBody>) {
    (status, Json(ErrorBody::new("agent_error", e.to_string())))
}

async fn health(State(id): State<Arc<Identity>>) -> Json<Health> {
    Json(Health {
        node_id: id.meta.node_id.clone(),
        hostname: id.meta.hostname.clone(),
        agent_version: postern_api::VERSION.to_string(),
    })
}

async fn csr(State(id): State<Arc<Identity>>) -> Reply<CsrResponse> {
    // Key generation is CPU work; keep it off the runtime's I/O threads.
    let id2 = id.clone();
    let csr = tokio::task::spawn_blocking(move || id2.new_csr())
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(CsrResponse { csr_pem: csr }))
}

async fn cert(State(id): State<Arc<Identity>>, Json(body): Json<InstallCert>) -> Reply<Value> {
    let id2 = id.clone();
    tokio::task::spawn_blocking(move || id2.install_cert(&body.cert_pem))
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e))?;
    tracing::info!("installed a rotated node certificate");
    Ok(Json(json!({ "installed": true })))
}
