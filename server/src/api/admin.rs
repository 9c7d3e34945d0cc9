//! The operator API.
use std::sync::Arc;

use siderite::proto::admin::v1::{
    admin_service_server::AdminService, AcceptServerRequest, AllocateRequest,
    ApplyEnvironmentRequest, ApplyResourceRequest, CordonServerRequest, DeleteEnvironmentRequest,
    DeleteEnvironmentResponse, DeleteResourceRequest, DeleteResourceResponse, DeleteServerRequest,
    DeleteServerResponse, EnvironmentReply, GetResourceRequest, GetServerRequest,
    ListEnvironmentsRequest, ListEnvironmentsResponse, ListResourcesRequest, ListResourcesResponse,
    ListServersRequest, ListServersResponse, PowerServerRequest, ReleaseRequest, ResourceReply,
    Server, WipeServerRequest,
};
use siderite::proto::admin::v1::{
    CreateJoinTokenRequest, CreateOperatorRequest, JoinToken, ListJoinTokensRequest,
    ListJoinTokensResponse, ListOperatorsRequest, ListOperatorsResponse, Operator,
    RevokeJoinTokenRequest, RevokeOperatorRequest, RevokeServerRequest, WhoAmIRequest,
    WhoAmIResponse,
};
use siderite::ServerId;
use tonic::{Request, Response, Status};

use super::resources::{Kind, ResourcesApi};
use super::{control_status, store_status};
use crate::binding::{self, BindingSpec, ServerBinding};
use crate::controller::Controller;
use crate::lifecycle::Event as LifecycleEvent;
use crate::model::{self, mac_index_key, server_key, session_key, uuid_index_key, SERVERS_PREFIX};
use crate::sessions::Sessions;
use crate::store::{Precondition, Store, Txn, TxnOutcome, Versioned};

pub struct AdminApi {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    pub environments: super::environments::EnvironmentsApi,
    pub resources: ResourcesApi,
    pub controller: Arc<Controller>,
    pub auth: crate::auth::Auth,
}

/// Whether a caller may see secrets: only an admin who asked. A read-only caller who asks
/// is told so rather than quietly given the redacted form.
fn show_secrets<T>(req: &Request<T>, asked: bool) -> Result<bool, Status> {
    if !asked {
        return Ok(false);
    }
    let caller = crate::auth::caller(req)?;
    if caller.role != crate::auth::Role::Admin {
        return Err(Status::permission_denied(format!(
            "showing secrets needs the admin role; operator {} is {}",
            caller.name,
            caller.role.as_str()
        )));
    }
    tracing::info!(operator = %caller.name, "secrets shown on request");
    Ok(true)
}

fn join_token_reply(t: crate::auth::StoredJoinToken, with_secret: bool) -> JoinToken {
    JoinToken {
        token: if with_secret { t.text() } else { String::new() },
        id: t.id,
        description: t.description,
        created: t.created,
        expires: t.expires.unwrap_or_default(),
        revoked: t.revoked.unwrap_or_default(),
        boot: t.boot,
    }
}

fn operator_reply(o: crate::auth::StoredOperator, with_secret: bool) -> Operator {
    Operator {
        token: if with_secret { o.text() } else { String::new() },
        name: o.name,
        role: o.role,
        created: o.created,
        revoked: o.revoked.unwrap_or_default(),
    }
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
            st.progress = self.sessions.progress(id);
        }
        let classes = self.resources.class_matches(&s).await?;
        if let Some(st) = s.status.as_mut() {
            st.server_classes = classes;
        }
        Ok(Response::new(s))
    }

    async fn accept_server(
        &self,
        req: Request<AcceptServerRequest>,
    ) -> Result<Response<Server>, Status> {
        let id = parse_name(&req.get_ref().name)?;
        let (_, s) = self.read(id).await?;
        if s.spec.as_ref().is_some_and(|sp| sp.accepted) {
            return Ok(Response::new(self.decorate(s)));
        }
        let s = self
            .controller
            .apply(
                id,
                LifecycleEvent::Accept,
                |s| s.spec.get_or_insert_with(Default::default).accepted = true,
                |_| Default::default(),
            )
            .await
            .map_err(control_status)?;
        tracing::info!(server_id = %id, "accepted");
        // The first wipe starts now when the agent is connected here.
        self.controller.nudge(id).await;
        Ok(Response::new(self.decorate(
            self.read(id).await.map(|(_, s)| s).unwrap_or(s),
        )))
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
                .delete(session_key(&name))
                .delete(model::free_index_key(&name));
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

    async fn wipe_server(
        &self,
        req: Request<WipeServerRequest>,
    ) -> Result<Response<Server>, Status> {
        let r = req.into_inner();
        let id = parse_name(&r.name)?;
        let mode = (!r.mode.is_empty()).then_some(r.mode.as_str());
        let s = self
            .controller
            .start_wipe(id, mode)
            .await
            .map_err(control_status)?;
        Ok(Response::new(self.decorate(s)))
    }

    async fn cordon_server(
        &self,
        req: Request<CordonServerRequest>,
    ) -> Result<Response<Server>, Status> {
        let r = req.into_inner();
        let id = parse_name(&r.name)?;
        let ev = if r.cordon {
            LifecycleEvent::Cordon
        } else {
            LifecycleEvent::Uncordon
        };
        let s = self
            .controller
            .event(id, ev)
            .await
            .map_err(control_status)?;
        Ok(Response::new(self.decorate(s)))
    }

    async fn power_server(
        &self,
        req: Request<PowerServerRequest>,
    ) -> Result<Response<Server>, Status> {
        let r = req.into_inner();
        let id = parse_name(&r.name)?;
        let s = self
            .controller
            .power(id, &r.action)
            .await
            .map_err(control_status)?;
        Ok(Response::new(self.decorate(s)))
    }

    async fn apply_resource(
        &self,
        req: Request<ApplyResourceRequest>,
    ) -> Result<Response<ResourceReply>, Status> {
        let mut reply = self.resources.apply(&req.into_inner().manifest).await?;
        // The caller has the manifest; the reply need not carry its secrets back.
        reply.json = super::resources::redact(&reply.kind, &reply.json);
        Ok(Response::new(reply))
    }

    async fn get_resource(
        &self,
        req: Request<GetResourceRequest>,
    ) -> Result<Response<ResourceReply>, Status> {
        let show = show_secrets(&req, req.get_ref().show_secrets)?;
        let r = req.into_inner();
        let mut reply = self.resources.get(&r.kind, &r.name).await?;
        if !show {
            reply.json = super::resources::redact(&reply.kind, &reply.json);
        }
        Ok(Response::new(reply))
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let show = show_secrets(&req, req.get_ref().show_secrets)?;
        let r = req.into_inner();
        let mut reply = self.resources.list(&r.kind).await?;
        if !show {
            let kind = Kind::parse(&r.kind)?.as_str();
            for j in &mut reply.json {
                *j = super::resources::redact(kind, j);
            }
        }
        Ok(Response::new(reply))
    }

    async fn delete_resource(
        &self,
        req: Request<DeleteResourceRequest>,
    ) -> Result<Response<DeleteResourceResponse>, Status> {
        let r = req.into_inner();
        self.resources.delete(&r.kind, &r.name).await?;
        Ok(Response::new(DeleteResourceResponse {}))
    }

    async fn allocate(
        &self,
        req: Request<AllocateRequest>,
    ) -> Result<Response<ResourceReply>, Status> {
        let r = req.into_inner();
        if r.server_class.is_empty() || r.environment.is_empty() || r.machine_config.is_empty() {
            return Err(Status::invalid_argument(
                "allocate needs a ServerClass, an Environment and a MachineConfig",
            ));
        }
        let class = self.resources.server_class(&r.server_class).await?;
        if self.controller.environments.get(&r.environment).is_none() {
            return Err(Status::not_found(format!(
                "Environment {} not found",
                r.environment
            )));
        }
        if !self
            .resources
            .exists(Kind::MachineConfig, &r.machine_config)
            .await?
        {
            return Err(Status::not_found(format!(
                "MachineConfig {} not found",
                r.machine_config
            )));
        }
        let name = if r.name.is_empty() {
            binding::generate_name(&r.server_class)
        } else {
            crate::environment::validate_name(&r.name)
                .map_err(|e| Status::invalid_argument(format!("binding name: {e}")))?;
            r.name.clone()
        };
        let spec = BindingSpec {
            server: String::new(),
            server_class: r.server_class,
            environment: r.environment,
            machine_config: r.machine_config,
        };
        let (b, id) = self
            .controller
            .allocate(&class, spec, &name)
            .await
            .map_err(control_status)?;
        tracing::info!(binding = %name, server_id = %id, "allocated");
        Ok(Response::new(ResourceReply {
            kind: binding::KIND.into(),
            json: serde_json::to_string(&b).map_err(|e| Status::internal(e.to_string()))?,
        }))
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<Server>, Status> {
        let name = req.into_inner().name;
        let id = match name.parse::<ServerId>() {
            Ok(id)
                if self
                    .store
                    .get(&server_key(&id.to_string()))
                    .await
                    .map_err(store_status)?
                    .is_some() =>
            {
                id
            }
            _ => {
                let v = self
                    .store
                    .get(&binding::key(&name))
                    .await
                    .map_err(store_status)?
                    .ok_or_else(|| {
                        Status::not_found(format!("no server or ServerBinding named {name}"))
                    })?;
                let b = ServerBinding::decode(&v.value, v.revision)
                    .map_err(|e| Status::data_loss(format!("ServerBinding {name}: {e}")))?;
                parse_name(&b.spec.server)?
            }
        };
        let s = self
            .controller
            .event(id, LifecycleEvent::Release)
            .await
            .map_err(control_status)?;
        tracing::info!(server_id = %id, "released");
        self.controller.nudge(id).await;
        Ok(Response::new(self.decorate(s)))
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<JoinToken>, Status> {
        let caller = crate::auth::caller(&req)?;
        let r = req.into_inner();
        let ttl = (r.ttl_seconds > 0).then(|| std::time::Duration::from_secs(r.ttl_seconds));
        let t = self
            .auth
            .create_join_token(&r.description, ttl, !r.no_boot)
            .await?;
        tracing::info!(id = %t.id, operator = %caller.name, boot = t.boot, "join token created");
        Ok(Response::new(join_token_reply(t, true)))
    }

    async fn list_join_tokens(
        &self,
        req: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        let show = show_secrets(&req, req.get_ref().show_secrets)?;
        let tokens = self.auth.join_tokens().await?;
        Ok(Response::new(ListJoinTokensResponse {
            tokens: tokens
                .into_iter()
                .map(|t| join_token_reply(t, show))
                .collect(),
        }))
    }

    async fn revoke_join_token(
        &self,
        req: Request<RevokeJoinTokenRequest>,
    ) -> Result<Response<JoinToken>, Status> {
        let caller = crate::auth::caller(&req)?;
        let t = self.auth.revoke_join_token(&req.get_ref().id).await?;
        tracing::info!(id = %t.id, operator = %caller.name, "join token revoked");
        Ok(Response::new(join_token_reply(t, false)))
    }

    async fn create_operator(
        &self,
        req: Request<CreateOperatorRequest>,
    ) -> Result<Response<Operator>, Status> {
        let caller = crate::auth::caller(&req)?;
        let r = req.into_inner();
        let role = crate::auth::Role::parse(&r.role).map_err(Status::invalid_argument)?;
        let o = self.auth.create_operator(&r.name, role).await?;
        tracing::info!(name = %o.name, role = %o.role, operator = %caller.name, "operator created");
        Ok(Response::new(operator_reply(o, true)))
    }

    async fn list_operators(
        &self,
        _req: Request<ListOperatorsRequest>,
    ) -> Result<Response<ListOperatorsResponse>, Status> {
        let ops = self.auth.operators().await?;
        Ok(Response::new(ListOperatorsResponse {
            operators: ops.into_iter().map(|o| operator_reply(o, false)).collect(),
        }))
    }

    async fn revoke_operator(
        &self,
        req: Request<RevokeOperatorRequest>,
    ) -> Result<Response<Operator>, Status> {
        let caller = crate::auth::caller(&req)?;
        let o = self.auth.revoke_operator(&req.get_ref().name).await?;
        tracing::info!(name = %o.name, operator = %caller.name, "operator revoked");
        Ok(Response::new(operator_reply(o, false)))
    }

    async fn revoke_server(
        &self,
        req: Request<RevokeServerRequest>,
    ) -> Result<Response<Server>, Status> {
        let caller = crate::auth::caller(&req)?;
        let id = parse_name(&req.get_ref().name)?;
        let name = id.to_string();
        for _ in 0..16 {
            let (v, mut s) = self.read(id).await?;
            let st = s.status.get_or_insert_with(Default::default);
            model::push_event(
                st,
                "CredentialRevoked",
                format!(
                    "machine credential revoked by {}: the session is closed, metadata refused; \
                     the machine must register again with a join token",
                    caller.name
                ),
            );
            st.connected = false;
            let key = server_key(&name);
            let txn = Txn::new()
                .require(Precondition::At(key.clone(), v.revision))
                .delete(session_key(&name))
                .delete(binding::token_key(&name))
                .put(key, model::encode(&s));
            match self.store.txn(txn).await.map_err(store_status)? {
                TxnOutcome::Committed(_) => {
                    self.sessions.kick(id);
                    tracing::info!(server_id = %id, operator = %caller.name, "machine credential revoked");
                    let (_, s) = self.read(id).await?;
                    return Ok(Response::new(self.decorate(s)));
                }
                TxnOutcome::Conflict(_) => continue,
            }
        }
        Err(Status::aborted("server kept changing; try again"))
    }

    async fn who_am_i(
        &self,
        req: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let c = crate::auth::caller(&req)?;
        Ok(Response::new(WhoAmIResponse {
            name: c.name,
            role: c.role.as_str().into(),
        }))
    }
}
