//! The agent's side of the conversation with the server: register with the inventory, then
//! hold one session stream and do what comes down it. Reconnects with jittered back-off,
//! across every configured server address, until shut down. Commands carry IDs; one seen
//! before is acknowledged again but not run again.
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use siderite::proto::agent::v1::{
    agent_message, agent_service_client::AgentServiceClient, command, server_message, AgentMessage,
    Command, CommandAck, Hardware, Heartbeat, Hello, LogLine, RegisterRequest, RegisterResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// What the agent needs to find and talk to its server.
#[derive(Debug, Clone)]
pub struct Config {
    /// HOST:PORT of each server replica, tried in turn.
    pub servers: Vec<String>,
    pub boot_id: String,
    pub connect_timeout: Duration,
    pub heartbeat: Duration,
    pub max_backoff: Duration,
    /// What happened before the session (modules, network, command line problems): sent
    /// up as log lines each time a session opens, so the server shows it in one place.
    pub boot_log: Vec<String>,
}

impl Config {
    pub fn new(servers: Vec<String>, boot_id: String) -> Self {
        Self {
            servers,
            boot_id,
            connect_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
            boot_log: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid server address {0:?}")]
    Address(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("registering: {0}")]
    Register(tonic::Status),
    #[error("opening the session: {0}")]
    Open(tonic::Status),
    #[error("session stream: {0}")]
    Stream(tonic::Status),
    #[error("the server closed the session")]
    Closed,
}

/// The kernel's boot ID under `root`, else a fresh random one (not on Linux, or a test).
pub fn boot_id(root: &Path) -> String {
    std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| uuid::Uuid::try_parse(s).is_ok())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// This process's resident memory, for the log line that says it registered.
fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Opens a channel to one server address (`HOST:PORT` or a full `http://` URL).
pub async fn connect(addr: &str, timeout: Duration) -> Result<Channel, SessionError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(url)
        .map_err(|_| SessionError::Address(addr.to_string()))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| SessionError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// One registration call.
pub async fn register(
    channel: Channel,
    boot_id: &str,
    server_id: Option<&str>,
    hardware: Hardware,
) -> Result<RegisterResponse, SessionError> {
    let req = RegisterRequest {
        boot_id: boot_id.to_string(),
        agent_version: siderite::VERSION.to_string(),
        hardware: Some(hardware),
        server_id: server_id.unwrap_or_default().to_string(),
    };
    AgentServiceClient::new(channel)
        .register(req)
        .await
        .map(|r| r.into_inner())
        .map_err(SessionError::Register)
}

/// Command IDs already run, bounded so a long-lived agent does not grow.
struct SeenCommands {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl SeenCommands {
    const CAP: usize = 1024;
    fn new() -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }
    /// True the first time an ID is seen.
    fn first_time(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

pub type Inventory = Arc<dyn Fn() -> Hardware + Send + Sync>;

/// Runs the agent until `shutdown` resolves: register, hold the session, reconnect.
pub async fn run<F>(
    config: Config,
    inventory: F,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()>
where
    F: Fn() -> Hardware + Send + Sync + 'static,
{
    let inventory: Inventory = Arc::new(inventory);
    let mut agent = Agent {
        config,
        inventory,
        server_id: None,
        seen: SeenCommands::new(),
    };
    tokio::pin!(shutdown);
    if agent.config.servers.is_empty() {
        anyhow::bail!("no server address to register with");
    }
    let mut failures: u32 = 0;
    let mut turn = 0usize;
    loop {
        let addr = agent.config.servers[turn % agent.config.servers.len()].clone();
        turn += 1;
        let outcome = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = agent.serve_once(&addr) => r,
        };
        match outcome {
            Ok(held) => {
                tracing::warn!(server = %addr, "session ended; reconnecting");
                if held {
                    failures = 0;
                }
            }
            Err(e) => {
                tracing::warn!(server = %addr, error = %e, "no session");
                failures = failures.saturating_add(1);
            }
        }
        let delay = backoff(failures, agent.config.max_backoff);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(delay) => {},
        }
    }
}

/// Exponential back-off from 250 ms with full jitter in its upper half.
fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(250)
        .saturating_mul(1u32 << failures.min(10))
        .min(max);
    let half = base / 2;
    half + half.mul_f64(rand::random::<f64>())
}

struct Agent {
    config: Config,
    inventory: Inventory,
    server_id: Option<String>,
    seen: SeenCommands,
}

impl Agent {
    async fn collect(&self) -> Hardware {
        let inv = self.inventory.clone();
        tokio::task::spawn_blocking(move || inv())
            .await
            .unwrap_or_default()
    }

    /// Registers and holds one session. `Ok(true)` once the session was established and
    /// then ended; errors before that are `Err`.
    async fn serve_once(&mut self, addr: &str) -> Result<bool, SessionError> {
        let channel = connect(addr, self.config.connect_timeout).await?;
        let hw = self.collect().await;
        let resp = register(
            channel.clone(),
            &self.config.boot_id,
            self.server_id.as_deref(),
            hw,
        )
        .await?;
        tracing::info!(
            server_id = %resp.server_id,
            accepted = resp.accepted,
            identity_issued = resp.identity_issued,
            reason = %resp.identity_reason,
            rss_kib = self_rss_kib(),
            "registered"
        );
        self.server_id = Some(resp.server_id.clone());

        let (tx, rx) = mpsc::channel::<AgentMessage>(64);
        let hello = AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                server_id: resp.server_id.clone(),
                boot_id: self.config.boot_id.clone(),
                session_token: resp.session_token.clone(),
            })),
        };
        tx.send(hello).await.map_err(|_| SessionError::Closed)?;
        let mut client = AgentServiceClient::new(channel.clone());
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(SessionError::Open)?
            .into_inner();
        tracing::info!(server_id = %resp.server_id, "session open");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        for line in &self.config.boot_log {
            let log = AgentMessage {
                msg: Some(agent_message::Msg::Log(LogLine {
                    unix_millis: now_ms,
                    level: "info".into(),
                    message: line.clone(),
                })),
            };
            if tx.send(log).await.is_err() {
                return Ok(true);
            }
        }

        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    let beat = AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat {})) };
                    if tx.send(beat).await.is_err() {
                        return Ok(true);
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Some(server_message::Msg::Command(cmd)) = m.msg {
                            let ack = self.handle(&channel, cmd).await;
                            if tx.send(ack).await.is_err() {
                                return Ok(true);
                            }
                        }
                    }
                    Ok(None) => return Ok(true),
                    Err(status) => {
                        tracing::warn!(error = %status, "session stream failed");
                        return Ok(true);
                    }
                }
            }
        }
    }

    async fn handle(&mut self, channel: &Channel, cmd: Command) -> AgentMessage {
        let ack = |state: &str, message: String| AgentMessage {
            msg: Some(agent_message::Msg::Ack(CommandAck {
                command_id: cmd.id.clone(),
                state: state.to_string(),
                message,
            })),
        };
        if !self.seen.first_time(&cmd.id) {
            return ack("done", "already handled".into());
        }
        match &cmd.kind {
            Some(command::Kind::Wait(w)) => {
                tracing::info!(command = %cmd.id, reason = %w.reason, "waiting for work");
                ack("done", String::new())
            }
            Some(command::Kind::ReportInventory(_)) => {
                let hw = self.collect().await;
                match register(
                    channel.clone(),
                    &self.config.boot_id,
                    self.server_id.as_deref(),
                    hw,
                )
                .await
                {
                    Ok(_) => ack("done", "inventory reported".into()),
                    Err(e) => ack("failed", e.to_string()),
                }
            }
            None => ack(
                "failed",
                "command of a kind this agent does not know".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_commands_are_bounded_and_remembered() {
        let mut seen = SeenCommands::new();
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        for i in 0..SeenCommands::CAP {
            seen.first_time(&i.to_string());
        }
        assert_eq!(seen.set.len(), SeenCommands::CAP);
        assert!(
            seen.first_time("a"),
            "the oldest ID was forgotten to stay bounded"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(30);
        assert!(backoff(0, max) <= Duration::from_millis(250));
        assert!(backoff(3, max) >= Duration::from_secs(1));
        assert!(backoff(40, max) <= max);
    }
}
