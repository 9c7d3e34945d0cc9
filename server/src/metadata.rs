//! The Talos metadata service: a machine's rendered config, to that machine only.
//!
//! `GET /configdata/{server}?token=T` (the URL the install passes as `talos.config=`).
//! The token is the per-machine secret written with the server's ServerBinding and
//! deleted when it is released. Anyone else — no token, another machine's token, a token
//! of a released binding, an unknown server — gets the same bare 403, so the answer does
//! not even tell whether the server exists. The first authorized fetch during an install
//! is what moves the server to `installed`.
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use siderite::ServerId;

use crate::binding::{self, ServerBinding};
use crate::controller::Controller;
use crate::machineconfig::MachineConfig;
use crate::model;

pub const PATH_PREFIX: &str = "/configdata/";
pub const MACHINE_CONFIGS: &str = "machineconfigs/";

pub fn machine_config_key(name: &str) -> String {
    format!("{MACHINE_CONFIGS}{name}")
}

/// The URL a machine fetches its config from.
pub fn config_url(base: &str, id: ServerId, token: &str) -> String {
    format!("{base}{PATH_PREFIX}{id}?token={token}")
}

pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/configdata/{server}", get(config))
        .with_state(controller)
}

fn forbidden() -> Response {
    (StatusCode::FORBIDDEN, "forbidden\n").into_response()
}

/// The token from `?token=` or `Authorization: Bearer`.
fn presented(q: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = q.get("token") {
        return Some(t.clone());
    }
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

async fn config(
    State(c): State<Arc<Controller>>,
    Path(server): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = server.parse::<ServerId>() else {
        return forbidden();
    };
    let Some(token) = presented(&q, &headers) else {
        return forbidden();
    };
    let stored = match c.store.get(&binding::token_key(&id.to_string())).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(server_id = %id, error = %e, "metadata: reading the token");
            return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response();
        }
    };
    let authorized = stored
        .as_ref()
        .is_some_and(|v| binding::secret_eq(&String::from_utf8_lossy(&v.value), &token));
    if !authorized {
        tracing::info!(server_id = %id, "metadata: refused a caller without this machine's token");
        return forbidden();
    }
    match render(&c, id).await {
        Ok(text) => {
            if let Err(e) = c.on_config_fetched(id).await {
                tracing::warn!(server_id = %id, error = %e, "metadata: recording the fetch");
            }
            tracing::info!(server_id = %id, bytes = text.len(), "metadata: config served");
            ([(header::CONTENT_TYPE, "application/yaml")], text).into_response()
        }
        Err(reason) => {
            tracing::warn!(server_id = %id, %reason, "metadata: no config");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{reason}\n")).into_response()
        }
    }
}

/// The server's config: its binding's MachineConfig rendered for its hardware.
pub async fn render(c: &Controller, id: ServerId) -> Result<String, String> {
    let stored = model::load(c.store.as_ref(), id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("server not found")?;
    let st = stored.server.status.clone().unwrap_or_default();
    if st.binding.is_empty() {
        return Err("the server has no binding".into());
    }
    let b = c
        .store
        .get(&binding::key(&st.binding))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("ServerBinding {} not found", st.binding))?;
    let b = ServerBinding::decode(&b.value, b.revision).map_err(|e| e.to_string())?;
    let mc = c
        .store
        .get(&machine_config_key(&b.spec.machine_config))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("MachineConfig {} not found", b.spec.machine_config))?;
    let mc = MachineConfig::parse(&String::from_utf8_lossy(&mc.value))
        .map_err(|e| format!("MachineConfig {}: {e}", b.spec.machine_config))?;
    let hw = st.hardware.unwrap_or_default();
    mc.render(&id.to_string(), &hw)
        .map_err(|e| format!("MachineConfig {}: {e}", b.spec.machine_config))
}
