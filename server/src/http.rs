//! Plain HTTP: health, readiness and Prometheus metrics.
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::model::SERVERS_PREFIX;
use crate::sessions::Sessions;
use crate::store::Store;

#[derive(Clone)]
struct AppState {
    store: Arc<dyn Store>,
    sessions: Arc<Sessions>,
}

pub fn router(store: Arc<dyn Store>, sessions: Arc<Sessions>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { store, sessions })
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.store.get("readyz-probe").await {
        Ok(_) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")),
    }
}

async fn metrics(State(s): State<AppState>) -> (StatusCode, String) {
    let servers = match s.store.list(SERVERS_PREFIX).await {
        Ok(v) => v.len(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")),
    };
    let body = format!(
        "# HELP siderite_servers Server resources in the store.\n# TYPE siderite_servers gauge\nsiderite_servers {servers}\n\
         # HELP siderite_sessions Agent sessions held by this replica.\n# TYPE siderite_sessions gauge\nsiderite_sessions {}\n",
        s.sessions.count()
    );
    (StatusCode::OK, body)
}
