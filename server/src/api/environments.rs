//! Environments through the admin API: validate -> verify (sha512 before anything is
//! served) -> store -> catalog. The built-in `agent` Environment is not replaceable.
use std::sync::Arc;

use siderite::proto::admin::v1::{
    ApplyEnvironmentRequest, DeleteEnvironmentRequest, EnvironmentReply, ListEnvironmentsResponse,
};
use tonic::Status;

use super::store_status;
use crate::environment::{Environment, Environments, AGENT_ENVIRONMENT};
use crate::fetch::HttpFetcher;
use crate::store::{Store, Txn};

pub const ENVIRONMENTS_PREFIX: &str = "environments/";

fn key(name: &str) -> String {
    format!("{ENVIRONMENTS_PREFIX}{name}")
}

/// What the admin API needs for Environments.
#[derive(Clone)]
pub struct EnvironmentsApi {
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Environments>,
    /// The store revision of each Environment the catalog holds, so that [`sync`] picks
    /// up what another replica applied or deleted.
    ///
    /// [`sync`]: EnvironmentsApi::sync
    pub loaded: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// file:// and http:// assets; downloads are cached by sha512.
    pub fetcher: Arc<HttpFetcher>,
}

fn to_json(env: &Environment) -> Result<String, Status> {
    serde_json::to_string(env)
        .map_err(|e| Status::internal(format!("encoding the environment: {e}")))
}

impl EnvironmentsApi {
    pub async fn apply(&self, req: ApplyEnvironmentRequest) -> Result<EnvironmentReply, Status> {
        let mut env: Environment = serde_yaml_ng::from_str(&req.manifest)
            .map_err(|e| Status::invalid_argument(format!("not an Environment: {e}")))?;
        env.validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if env.name() == AGENT_ENVIRONMENT {
            return Err(Status::invalid_argument(
                "the agent Environment is built in (siderite serve --boot-image); choose another name",
            ));
        }
        env.status = self
            .catalog
            .apply(env.clone(), &self.fetcher.expecting(&env))
            .await;
        let json = to_json(&env)?;
        let out = self
            .store
            .txn(Txn::new().put(key(env.name()), json.clone().into_bytes()))
            .await
            .map_err(store_status)?;
        if let crate::store::TxnOutcome::Committed(rev) = out {
            self.loaded_revs().insert(env.name().to_string(), rev);
        }
        tracing::info!(
            environment = env.name(),
            ready = env.status.ready,
            "environment applied"
        );
        Ok(EnvironmentReply { json })
    }

    pub async fn list(&self) -> Result<ListEnvironmentsResponse, Status> {
        let mut json = Vec::new();
        for name in {
            let mut n = self.catalog.names();
            n.sort();
            n
        } {
            if let Some(entry) = self.catalog.get(&name) {
                json.push(to_json(&entry.environment)?);
            }
        }
        Ok(ListEnvironmentsResponse { json })
    }

    pub async fn delete(&self, req: DeleteEnvironmentRequest) -> Result<(), Status> {
        if req.name == AGENT_ENVIRONMENT {
            return Err(Status::invalid_argument(
                "the agent Environment is built in",
            ));
        }
        if self
            .store
            .get(&key(&req.name))
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "environment {} not found",
                req.name
            )));
        }
        self.store
            .txn(Txn::new().delete(key(&req.name)))
            .await
            .map_err(store_status)?;
        self.catalog.remove(&req.name);
        self.loaded_revs().remove(&req.name);
        Ok(())
    }

    fn loaded_revs(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u64>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the catalog in line with the store: Environments applied (or changed) by
    /// another replica are verified and added, deleted ones removed. Returns how many
    /// changed.
    pub async fn sync(&self) -> anyhow::Result<usize> {
        let rows = self.store.list(ENVIRONMENTS_PREFIX).await?;
        let mut changed = 0;
        let mut present = std::collections::HashSet::new();
        for (k, v) in rows {
            let name = k.trim_start_matches(ENVIRONMENTS_PREFIX).to_string();
            present.insert(name.clone());
            if self.loaded_revs().get(&name) == Some(&v.revision) {
                continue;
            }
            match serde_json::from_slice::<Environment>(&v.value) {
                Ok(env) => {
                    let fetch = self.fetcher.expecting(&env);
                    self.catalog.apply(env.clone(), &fetch).await;
                    self.loaded_revs().insert(name, v.revision);
                    changed += 1;
                }
                Err(e) => {
                    tracing::error!(key = %k, error = %e, "stored environment unreadable; skipped")
                }
            }
        }
        for name in self.catalog.names() {
            if name != AGENT_ENVIRONMENT && !present.contains(&name) {
                self.catalog.remove(&name);
                self.loaded_revs().remove(&name);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Loads every stored Environment into the catalog, verifying each again.
    pub async fn load(&self) -> anyhow::Result<usize> {
        self.sync().await
    }
}
