//! The agent API: registration and the session stream.
use std::sync::Arc;
use std::time::Duration;

use siderite::proto::agent::v1::{
    agent_message, agent_service_server::AgentService, command, server_message, AgentMessage,
    Command, RegisterRequest, RegisterResponse, ServerMessage, Wait,
};
use siderite::ServerId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::register_status;
use crate::controller::Controller;
use crate::registry::{validate, Limits, Registry};
use crate::sessions::Sessions;

/// How long an agent has to say hello after opening a session.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentApi {
    pub registry: Arc<Registry>,
    pub sessions: Arc<Sessions>,
    pub limits: Limits,
    pub controller: Arc<Controller>,
    pub auth: crate::auth::Auth,
    /// Live sessions per source address (`max_per_source`; the other limits unused).
    pub sources: Arc<crate::guard::ConnGuard>,
    /// Refused registrations are logged at most once a second (a flood would multiply them).
    pub refusals: std::sync::Mutex<crate::guard::LogGate>,
}

pub fn wait_command(reason: &str) -> ServerMessage {
    ServerMessage {
        msg: Some(server_message::Msg::Command(Command {
            id: format!("wait-{}", uuid::Uuid::new_v4().simple()),
            kind: Some(command::Kind::Wait(Wait {
                reason: reason.to_string(),
            })),
        })),
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let peer = req.remote_addr().map(|a| a.to_string());
        let mut req = req.into_inner();
        // The token is checked first and then dropped: nothing after this sees it.
        let join_token = std::mem::take(&mut req.join_token);
        let token_id = self
            .auth
            .check_join_token(&join_token)
            .await
            .map_err(|(status, why)| {
                let pass = self
                    .refusals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pass();
                if let Some(suppressed) = pass {
                    tracing::warn!(peer = ?peer, reason = %why, suppressed, "registration refused: join token");
                }
                status
            })?;
        drop(join_token);
        let v = validate(req, &self.limits).map_err(|e| {
            tracing::info!(peer = ?peer, error = %e, "registration refused");
            register_status(e)
        })?;
        let r = self
            .registry
            .register(&v, peer)
            .await
            .map_err(register_status)?;
        tracing::info!(server_id = %r.server_id, created = r.created, issued = r.identity_issued, new_boot = r.new_boot, join_token = %token_id, "registered");
        if r.new_boot {
            self.controller.on_new_boot(r.server_id).await;
        }
        Ok(Response::new(RegisterResponse {
            server_id: r.server_id.to_string(),
            identity_issued: r.identity_issued,
            identity_reason: r.identity_reason,
            accepted: r.accepted,
            session_token: r.session_token,
            created: r.created,
        }))
    }

    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let source = req.remote_addr().map(|a| a.ip());
        let permit = match source {
            Some(ip) => Some(self.sources.admit(ip).ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "too many sessions from {ip} (at most {})",
                    self.sources.limits().max_per_source
                ))
            })?),
            None => None,
        };
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??
            .ok_or_else(|| Status::invalid_argument("session closed before hello"))?;
        let Some(agent_message::Msg::Hello(hello)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first session message must be hello",
            ));
        };
        let id: ServerId = hello
            .server_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("hello.server_id: {e}")))?;
        let known = self
            .registry
            .check_session(id, &hello.boot_id, &hello.session_token)
            .await
            .map_err(register_status)?;
        if !known {
            return Err(Status::permission_denied(
                "no registration matches this session: register first",
            ));
        }
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(wait_command("waiting for work")))
            .await
            .map_err(|_| Status::internal("session closed at once"))?;
        // The map holds the only sender: dropping the entry (detach or kick) ends the stream.
        let handle = self.sessions.attach(id, hello.boot_id, tx);
        let sessions = self.sessions.clone();
        let controller = self.controller.clone();
        controller.on_session(id).await;
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => match m.msg {
                        Some(agent_message::Msg::Ack(a)) => {
                            tracing::info!(server_id = %id, command = %a.command_id, state = %a.state, message = %a.message, "ack");
                            controller.on_ack(id, a).await;
                        }
                        Some(agent_message::Msg::Log(l)) => {
                            tracing::debug!(server_id = %id, level = %l.level, "agent: {}", l.message);
                            sessions.push_log(id, l);
                        }
                        Some(agent_message::Msg::Progress(p)) => {
                            tracing::debug!(server_id = %id, command = %p.command_id, done = p.done_bytes, "progress");
                            sessions.set_progress(id, p);
                        }
                        Some(agent_message::Msg::Heartbeat(_)) | None => {}
                        Some(agent_message::Msg::Hello(_)) => {
                            tracing::warn!(server_id = %id, "second hello ignored")
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(server_id = %id, error = %e, "session stream error");
                        break;
                    }
                }
            }
            sessions.detach(handle);
            tracing::info!(server_id = %id, "session closed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
