//! Resources as stored: the `Server` resource and the keys of the indexes beside it.
use prost::Message;
use siderite::proto::admin::v1::{Condition, Event, ObjectMeta, Server, ServerSpec, ServerStatus};
use siderite::ServerId;

pub const API_VERSION: &str = "metal.siderite.dev/v1alpha1";
/// Events kept per server; older ones are dropped.
pub const MAX_EVENTS: usize = 32;

pub fn server_key(id: &str) -> String {
    format!("servers/{id}")
}
pub const SERVERS_PREFIX: &str = "servers/";
pub fn uuid_index_key(uuid: &str) -> String {
    format!("index/uuid/{uuid}")
}
pub fn mac_index_key(mac: &str) -> String {
    format!("index/mac/{mac}")
}
/// Present exactly while the server is allocatable (clean, uncordoned): allocation
/// reads this short list instead of every server.
pub fn free_index_key(id: &str) -> String {
    format!("{FREE_PREFIX}{id}")
}
pub const FREE_PREFIX: &str = "index/free/";
/// The per-boot session secret of a server; never part of the resource.
pub fn session_key(id: &str) -> String {
    format!("secrets/session/{id}")
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn new_server(id: ServerId) -> Server {
    Server {
        api_version: API_VERSION.into(),
        kind: "Server".into(),
        metadata: Some(ObjectMeta {
            name: id.to_string(),
            uid: uuid::Uuid::new_v4().to_string(),
            resource_version: 0,
            creation_timestamp: now_rfc3339(),
            labels: Default::default(),
        }),
        spec: Some(ServerSpec::default()),
        status: Some(ServerStatus::default()),
    }
}

pub fn encode(server: &Server) -> Vec<u8> {
    server.encode_to_vec()
}

pub fn decode(bytes: &[u8], revision: u64) -> Result<Server, prost::DecodeError> {
    let mut s = Server::decode(bytes)?;
    if let Some(m) = s.metadata.as_mut() {
        m.resource_version = revision;
    }
    Ok(s)
}

pub fn push_event(status: &mut ServerStatus, reason: &str, message: impl Into<String>) {
    status.events.push(Event {
        time: now_rfc3339(),
        reason: reason.into(),
        message: message.into(),
    });
    let excess = status.events.len().saturating_sub(MAX_EVENTS);
    status.events.drain(..excess);
}

/// Sets a condition, keeping its transition time when the status does not change.
pub fn set_condition(
    status: &mut ServerStatus,
    kind: &str,
    value: bool,
    reason: &str,
    message: &str,
) {
    let value = if value { "True" } else { "False" };
    if let Some(c) = status.conditions.iter_mut().find(|c| c.r#type == kind) {
        if c.status != value {
            c.last_transition_time = now_rfc3339();
        }
        c.status = value.into();
        c.reason = reason.into();
        c.message = message.into();
    } else {
        status.conditions.push(Condition {
            r#type: kind.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now_rfc3339(),
        });
    }
}

/// What a ServerClass selects on: the server's reported hardware and its labels.
pub fn class_inputs(
    server: &Server,
) -> (
    siderite::proto::agent::v1::Hardware,
    std::collections::BTreeMap<String, String>,
) {
    let hw = server
        .status
        .as_ref()
        .and_then(|st| st.hardware.clone())
        .unwrap_or_default();
    let labels = server
        .metadata
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    (hw, labels)
}

pub fn name(server: &Server) -> &str {
    server
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default()
}

/// A Server as read from the store, with the revision a write must start from.
pub struct Stored {
    pub id: ServerId,
    pub read: crate::store::Versioned,
    pub server: Server,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("stored server {0} is corrupt: {1}")]
    Corrupt(String, String),
}

/// The Server named `id`, if there is one.
pub async fn load(
    store: &dyn crate::store::Store,
    id: ServerId,
) -> Result<Option<Stored>, LoadError> {
    let Some(read) = store.get(&server_key(&id.to_string())).await? else {
        return Ok(None);
    };
    let server = decode(&read.value, read.revision)
        .map_err(|e| LoadError::Corrupt(id.to_string(), e.to_string()))?;
    Ok(Some(Stored { id, read, server }))
}

/// The Server an index entry (`index/uuid/..`, `index/mac/..`) points at, if any.
pub async fn load_indexed(
    store: &dyn crate::store::Store,
    key: &str,
) -> Result<Option<Stored>, LoadError> {
    let Some(ix) = store.get(key).await? else {
        return Ok(None);
    };
    match String::from_utf8_lossy(&ix.value).parse::<ServerId>() {
        Ok(id) => load(store, id).await,
        Err(_) => Ok(None),
    }
}
