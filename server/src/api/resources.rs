//! ServerClass, MachineConfig and ServerBinding through the admin API. Resources travel
//! as text (YAML or JSON) and are checked by their own schemas, which refuse unknown
//! fields; a bad resource is refused whole and nothing is stored.
use std::sync::Arc;

use serde::Serialize;
use siderite::proto::admin::v1::{ListResourcesResponse, ResourceReply};
use tonic::Status;

use super::store_status;
use crate::binding::{self, ServerBinding};
use crate::controller::state_of;
use crate::lifecycle;
use crate::machineconfig::MachineConfig;
use crate::metadata::{machine_config_key, MACHINE_CONFIGS};
use crate::model;
use crate::serverclass::ServerClass;
use crate::store::{Precondition, Store, Txn, TxnOutcome};

pub const SERVER_CLASSES: &str = "serverclasses/";

pub fn server_class_key(name: &str) -> String {
    format!("{SERVER_CLASSES}{name}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ServerClass,
    MachineConfig,
    ServerBinding,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Kind, Status> {
        match s.to_ascii_lowercase().as_str() {
            "serverclass" | "serverclasses" | "sc" => Ok(Kind::ServerClass),
            "machineconfig" | "machineconfigs" | "mc" => Ok(Kind::MachineConfig),
            "serverbinding" | "serverbindings" | "binding" | "bindings" => Ok(Kind::ServerBinding),
            _ => Err(Status::invalid_argument(format!(
                "unknown kind {s:?} (ServerClass, MachineConfig, ServerBinding)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServerClass => "ServerClass",
            Kind::MachineConfig => "MachineConfig",
            Kind::ServerBinding => "ServerBinding",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::ServerClass => SERVER_CLASSES,
            Kind::MachineConfig => MACHINE_CONFIGS,
            Kind::ServerBinding => binding::PREFIX,
        }
    }
}

#[derive(Clone)]
pub struct ResourcesApi {
    pub store: Arc<dyn Store>,
}

fn json<T: Serialize>(v: &T) -> Result<serde_json::Value, Status> {
    serde_json::to_value(v).map_err(|e| Status::internal(format!("encoding: {e}")))
}

/// How many servers a class matches, and how many of those could be allocated now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    pub matching: usize,
    pub free: usize,
}

impl ResourcesApi {
    pub async fn apply(&self, manifest: &str) -> Result<ResourceReply, Status> {
        let head: serde_yaml_ng::Value = serde_yaml_ng::from_str(manifest)
            .map_err(|e| Status::invalid_argument(format!("not YAML or JSON: {e}")))?;
        let kind = head
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| Status::invalid_argument("the resource has no kind"))?;
        let (kind, name, mut value) = match Kind::parse(kind)? {
            Kind::ServerClass => {
                let c = ServerClass::parse(manifest)
                    .map_err(|e| Status::invalid_argument(format!("ServerClass: {e}")))?;
                (Kind::ServerClass, c.metadata.name.clone(), json(&c)?)
            }
            Kind::MachineConfig => {
                let c = MachineConfig::parse(manifest)
                    .map_err(|e| Status::invalid_argument(format!("MachineConfig: {e}")))?;
                (Kind::MachineConfig, c.metadata.name.clone(), json(&c)?)
            }
            Kind::ServerBinding => {
                return Err(Status::invalid_argument(
                    "ServerBindings are made by `siderite allocate`, not applied",
                ))
            }
        };
        // Stored without the revision: the store's revision is the truth.
        if let Some(m) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.remove("resourceVersion");
        }
        if let Some(o) = value.as_object_mut() {
            o.remove("status");
        }
        let key = format!("{}{name}", kind.prefix());
        let bytes = serde_json::to_vec(&value).map_err(|e| Status::internal(e.to_string()))?;
        let rev = match self
            .store
            .txn(Txn::new().put(key, bytes))
            .await
            .map_err(store_status)?
        {
            TxnOutcome::Committed(r) => r,
            TxnOutcome::Conflict(k) => return Err(Status::aborted(format!("{k} changed; retry"))),
        };
        tracing::info!(kind = kind.as_str(), %name, "resource applied");
        self.reply(kind, &name, value, rev).await
    }

    async fn reply(
        &self,
        kind: Kind,
        name: &str,
        mut value: serde_json::Value,
        rev: u64,
    ) -> Result<ResourceReply, Status> {
        if let Some(m) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.insert("resourceVersion".into(), rev.into());
        }
        if kind == Kind::ServerClass {
            let text = value.to_string();
            let class = ServerClass::parse(&text)
                .map_err(|e| Status::data_loss(format!("stored ServerClass {name}: {e}")))?;
            let counts = self.count(&class).await?;
            value["status"] = json(&counts)?;
        }
        Ok(ResourceReply {
            kind: kind.as_str().into(),
            json: value.to_string(),
        })
    }

    /// Counts the servers `class` matches and those of them that are free.
    pub async fn count(&self, class: &ServerClass) -> Result<ClassCounts, Status> {
        let mut counts = ClassCounts::default();
        for (_, v) in self
            .store
            .list(model::SERVERS_PREFIX)
            .await
            .map_err(store_status)?
        {
            let Ok(s) = model::decode(&v.value, v.revision) else {
                continue;
            };
            let (hw, labels) = model::class_inputs(&s);
            if class.matches(&hw, &labels) {
                counts.matching += 1;
                if state_of(&s).is_ok_and(|st| lifecycle::allocatable(&st)) {
                    counts.free += 1;
                }
            }
        }
        Ok(counts)
    }

    pub async fn get(&self, kind: &str, name: &str) -> Result<ResourceReply, Status> {
        let kind = Kind::parse(kind)?;
        let v = self
            .store
            .get(&format!("{}{name}", kind.prefix()))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("{} {name} not found", kind.as_str())))?;
        let value: serde_json::Value = serde_json::from_slice(&v.value)
            .map_err(|e| Status::data_loss(format!("stored {} {name}: {e}", kind.as_str())))?;
        self.reply(kind, name, value, v.revision).await
    }

    pub async fn list(&self, kind: &str) -> Result<ListResourcesResponse, Status> {
        let kind = Kind::parse(kind)?;
        let rows = self.store.list(kind.prefix()).await.map_err(store_status)?;
        let mut json = Vec::with_capacity(rows.len());
        for (key, v) in rows {
            let name = key.trim_start_matches(kind.prefix()).to_string();
            match serde_json::from_slice::<serde_json::Value>(&v.value) {
                Ok(value) => json.push(self.reply(kind, &name, value, v.revision).await?.json),
                Err(e) => tracing::error!(%key, error = %e, "corrupt resource skipped"),
            }
        }
        Ok(ListResourcesResponse { json })
    }

    pub async fn delete(&self, kind: &str, name: &str) -> Result<(), Status> {
        let kind = Kind::parse(kind)?;
        if kind == Kind::ServerBinding {
            return Err(Status::invalid_argument(
                "a ServerBinding goes with `siderite release`, which also wipes the server",
            ));
        }
        let key = format!("{}{name}", kind.prefix());
        let v = self
            .store
            .get(&key)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("{} {name} not found", kind.as_str())))?;
        if kind == Kind::MachineConfig {
            for (_, b) in self
                .store
                .list(binding::PREFIX)
                .await
                .map_err(store_status)?
            {
                if let Ok(b) = ServerBinding::decode(&b.value, b.revision) {
                    if b.spec.machine_config == name {
                        return Err(Status::failed_precondition(format!(
                            "MachineConfig {name} is used by ServerBinding {} (server {}); release it first",
                            b.metadata.name, b.spec.server
                        )));
                    }
                }
            }
        }
        let txn = Txn::new()
            .require(Precondition::At(key.clone(), v.revision))
            .delete(key);
        match self.store.txn(txn).await.map_err(store_status)? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::Conflict(k) => Err(Status::aborted(format!("{k} changed; retry"))),
        }
    }

    /// Every ServerClass and whether `s` is in it, with the failed selectors.
    pub async fn class_matches(
        &self,
        s: &siderite::proto::admin::v1::Server,
    ) -> Result<Vec<siderite::proto::admin::v1::ClassMatch>, Status> {
        let (hw, labels) = model::class_inputs(s);
        let mut out = Vec::new();
        for (key, v) in self
            .store
            .list(SERVER_CLASSES)
            .await
            .map_err(store_status)?
        {
            let Ok(class) = ServerClass::parse(&String::from_utf8_lossy(&v.value)) else {
                tracing::error!(%key, "corrupt ServerClass skipped");
                continue;
            };
            let reasons = class.explain(&hw, &labels);
            out.push(siderite::proto::admin::v1::ClassMatch {
                name: class.metadata.name.clone(),
                matches: reasons.is_empty(),
                reasons,
            });
        }
        Ok(out)
    }

    pub async fn server_class(&self, name: &str) -> Result<ServerClass, Status> {
        let v = self
            .store
            .get(&server_class_key(name))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("ServerClass {name} not found")))?;
        ServerClass::parse(&String::from_utf8_lossy(&v.value))
            .map_err(|e| Status::data_loss(format!("stored ServerClass {name}: {e}")))
    }

    pub async fn exists(&self, kind: Kind, name: &str) -> Result<bool, Status> {
        let key = match kind {
            Kind::MachineConfig => machine_config_key(name),
            other => format!("{}{name}", other.prefix()),
        };
        Ok(self.store.get(&key).await.map_err(store_status)?.is_some())
    }
}

/// A resource's JSON with its secrets replaced by what they are: a MachineConfig's base
/// config and patches (Talos machine secrets live there). Other kinds carry none.
pub fn redact(kind: &str, json: &str) -> String {
    if !kind.eq_ignore_ascii_case(crate::machineconfig::KIND) {
        return json.to_string();
    }
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(json) else {
        return "{\"error\":\"unreadable MachineConfig, redacted\"}".into();
    };
    if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
        if let Some(base) = spec.get_mut("base") {
            let n = base.as_str().map(str::len).unwrap_or_default();
            *base = serde_json::Value::String(format!(
                "<redacted: {n} bytes; --show-secrets as an admin>"
            ));
        }
        if let Some(serde_json::Value::Array(patches)) = spec.get_mut("patches") {
            for p in patches.iter_mut() {
                *p = serde_json::Value::String("<redacted>".into());
            }
        }
    }
    v.to_string()
}
