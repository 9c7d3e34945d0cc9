//! The operator API.
use std::sync::Arc;

use siderite::proto::admin::v1::{
    admin_service_server::AdminService, AcceptServerRequest, ApplyEnvironmentRequest,
    DeleteEnvironmentRequest, DeleteEnvironmentResponse, DeleteServerRequest, DeleteServerResponse,
    EnvironmentReply, GetServerRequest, ListEnvironmentsRequest, ListEnvironmentsResponse,
    ListServersRequest, ListServersResponse, Server,
};
use siderite::ServerId;
use tonic::{Request, Response, Status};

use super::store_status;
use crate::model::{self, mac_index_key, server_key, session_key, uuid_index_key, SERVERS_PREFIX};
use crate::sessions::Sessions;
use crate::store::{Precondition, Store, Txn, TxnOutcome, Versioned};

pub struct AdminApi {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    pub environments: super::environments::EnvironmentsApi,
}

fn parse_name(name: &str) -> Result<ServerId, Status> {
    name.parse::<ServerId>()
        .map_err(|e| Status::invalid_argument(format!("server name: {e}")))
}

impl AdminApi {
    fn decorate(&self, mut s: Server) -> Server {
        let connected = model::name(&s)
            .parse::<ServerId>()
            .is_ok_and(|id| self.sessions.is_connected(id));
        if let Some(st) = s.status.as_mut() {
            st.connected = connected;
        }
        s
    }

    async fn read(&self, id: ServerId) -> Result<(Versioned, Server), Status> {
        let v = self
            .store
            .get(&server_key(&id.to_string()))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("server {id} not found")))?;
        let s = model::decode(&v.value, v.revision)
            .map_err(|e| Status::data_loss(format!("server {id} is corrupt: {e}")))?;
        Ok((v, s))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_servers(
        &self,
        _req: Request<ListServersRequest>,
    ) -> Result<Response<ListServersResponse>, Status> {
        let rows = self
            .store
            .list(SERVERS_PREFIX)
            .await
            .map_err(store_status)?;
        let mut servers = Vec::with_capacity(rows.len());
        for (key, v) in rows {
            match model::decode(&v.value, v.revision) {
                Ok(s) => servers.push(self.decorate(s)),
                Err(e) => tracing::error!(%key, error = %e, "corrupt server record skipped"),
            }
        }
        Ok(Response::new(ListServersResponse { servers }))
    }

    async fn get_server(&self, req: Request<GetServerRequest>) -> Result<Response<Server>, Status> {
        let id = parse_name(&req.get_ref().name)?;
        let (_, s) = self.read(id).await?;
        let mut s = self.decorate(s);
        if let Some(st) = s.status.as_mut() {
            st.recent_logs = self.sessions.recent_logs(id);
        }
        Ok(Response::new(s))
    }

    async fn accept_server(
        &self,
        req: Request<AcceptServerRequest>,
    ) -> Result<Response<Server>, Status> {
        let id = parse_name(&req.get_ref().name)?;
        for _ in 0..16 {
            let (v, mut s) = self.read(id).await?;
            let spec = s.spec.get_or_insert_with(Default::default);
            if spec.accepted {
                return Ok(Response::new(self.decorate(s)));
            }
            spec.accepted = true;
            let st = s.status.get_or_insert_with(Default::default);
            st.phase = "accepted".into();
            model::push_event(st, "Accepted", "accepted by an operator");
            let key = server_key(&id.to_string());
            let txn = Txn::new()
                .require(Precondition::At(key.clone(), v.revision))
                .put(key, model::encode(&s));
            match self.store.txn(txn).await.map_err(store_status)? {
                TxnOutcome::Committed(rev) => {
                    if let Some(m) = s.metadata.as_mut() {
                        m.resource_version = rev;
                    }
                    tracing::info!(server_id = %id, "accepted");
                    return Ok(Response::new(self.decorate(s)));
                }
                TxnOutcome::Conflict(_) => continue,
            }
        }
        Err(Status::aborted("server kept changing; retry"))
    }

    async fn delete_server(
        &self,
        req: Request<DeleteServerRequest>,
    ) -> Result<Response<DeleteServerResponse>, Status> {
        let id = parse_name(&req.get_ref().name)?;
        let name = id.to_string();
        for _ in 0..16 {
            let (v, s) = self.read(id).await?;
            let key = server_key(&name);
            let mut txn = Txn::new()
                .require(Precondition::At(key.clone(), v.revision))
                .delete(key)
                .delete(session_key(&name));
            let st = s.status.unwrap_or_default();
            let mut index_keys = vec![uuid_index_key(&st.smbios_uuid)];
            if let Some(hw) = &st.hardware {
                index_keys.extend(
                    hw.nics
                        .iter()
                        .map(|n| mac_index_key(&n.mac.to_ascii_lowercase())),
                );
            }
            // Only indexes that still point at this server are removed.
            for k in index_keys {
                if let Some(ix) = self.store.get(&k).await.map_err(store_status)? {
                    if ix.value == name.as_bytes() {
                        txn = txn
                            .require(Precondition::At(k.clone(), ix.revision))
                            .delete(k);
                    }
                }
            }
            match self.store.txn(txn).await.map_err(store_status)? {
                TxnOutcome::Committed(_) => {
                    self.sessions.kick(id);
                    self.sessions.forget(id);
                    tracing::info!(server_id = %id, "deleted");
                    return Ok(Response::new(DeleteServerResponse {}));
                }
                TxnOutcome::Conflict(_) => continue,
            }
        }
        Err(Status::aborted("server kept changing; retry"))
    }

    async fn apply_environment(
        &self,
        req: Request<ApplyEnvironmentRequest>,
    ) -> Result<Response<EnvironmentReply>, Status> {
        self.environments
            .apply(req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_environments(
        &self,
        _req: Request<ListEnvironmentsRequest>,
    ) -> Result<Response<ListEnvironmentsResponse>, Status> {
        self.environments.list().await.map(Response::new)
    }

    async fn delete_environment(
        &self,
        req: Request<DeleteEnvironmentRequest>,
    ) -> Result<Response<DeleteEnvironmentResponse>, Status> {
        self.environments.delete(req.into_inner()).await?;
        Ok(Response::new(DeleteEnvironmentResponse {}))
    }
}
