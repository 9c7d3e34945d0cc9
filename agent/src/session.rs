//! The agent's side of the conversation with the server: register with the inventory, then
//! hold one session stream and do what comes down it. Reconnects with jittered back-off,
//! across every configured server address, until shut down. Commands go to the
//! [`Executor`], which runs them apart from the session and answers every command ID from
//! its table: one seen before is answered again (with its final ack) but not run again.
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
use tonic::transport::Channel;

use crate::commands::{Executor, Routed};

/// What the agent needs to find and talk to its server.
#[derive(Debug, Clone)]
pub struct Config {
    /// HOST:PORT of each server replica, tried in turn.
    pub servers: Vec<String>,
    /// The server's CA, by digest (`siderite.ca=`). Without it the agent talks to no one:
    /// a server it cannot check could hand it any command.
    pub ca: Option<siderite::tls::CaPin>,
    /// The join token (`siderite.token=`), presented at registration only.
    pub join_token: Secret,
    pub boot_id: String,
    pub connect_timeout: Duration,
    pub heartbeat: Duration,
    pub max_backoff: Duration,
    /// What happened before the session (modules, network, command line problems): sent
    /// up as log lines each time a session opens, so the server shows it in one place.
    pub boot_log: Vec<String>,
}

/// A secret whose `Debug` never shows it, so configs can be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<none>"
        } else {
            "<redacted>"
        })
    }
}

impl Config {
    pub fn new(servers: Vec<String>, boot_id: String) -> Self {
        Self {
            servers,
            ca: None,
            join_token: Secret::default(),
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
        source: siderite::tls::ConnectError,
    },
    #[error("no siderite.ca= on the command line: refusing to talk to a server whose certificate cannot be checked")]
    NoCa,
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

/// Opens a TLS channel to one server address (`HOST:PORT` or an `https://` URL), trusting
/// only the CA `ca` names.
pub async fn connect(
    addr: &str,
    ca: Option<siderite::tls::CaPin>,
    timeout: Duration,
) -> Result<Channel, SessionError> {
    let ca = ca.ok_or(SessionError::NoCa)?;
    siderite::tls::channel(addr, ca, timeout)
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
    join_token: &Secret,
) -> Result<RegisterResponse, SessionError> {
    let req = RegisterRequest {
        boot_id: boot_id.to_string(),
        agent_version: siderite::VERSION.to_string(),
        hardware: Some(hardware),
        server_id: server_id.unwrap_or_default().to_string(),
        join_token: join_token.0.clone(),
    };
    AgentServiceClient::new(channel)
        .register(req)
        .await
        .map(|r| r.into_inner())
        .map_err(SessionError::Register)
}

pub type Inventory = Arc<dyn Fn() -> Hardware + Send + Sync>;

/// Runs the agent until `shutdown` resolves: register, hold the session, reconnect.
/// `executor` owns the disks and the power: `Executor::linux("/")` on a machine, files and
/// fakes in tests (there is deliberately no default: a test must never reach real disks).
pub async fn run_with<F>(
    config: Config,
    inventory: F,
    executor: Executor,
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
        executor: executor.clone(),
    };
    let shutdown = async move {
        shutdown.await;
        executor.shutdown().await;
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
    executor: Executor,
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
        let channel = connect(addr, self.config.ca, self.config.connect_timeout).await?;
        let hw = self.collect().await;
        let resp = register(
            channel.clone(),
            &self.config.boot_id,
            self.server_id.as_deref(),
            hw,
            &self.config.join_token,
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
        // Acks, progress and logs of commands, running or finished, go to this session now.
        let _attached = self.executor.attach(tx.clone());
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
                            if let Routed::Session(cmd) = self.executor.submit(cmd).await {
                                let ack = self.handle(&channel, &cmd).await;
                                self.executor.finish(&cmd.id, ack).await;
                            }
                            if tx.is_closed() {
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

    /// The commands that need the session itself (the executor runs the rest).
    async fn handle(&mut self, channel: &Channel, cmd: &Command) -> CommandAck {
        let ack = |state: &str, message: String| CommandAck {
            command_id: cmd.id.clone(),
            state: state.to_string(),
            message,
            ..Default::default()
        };
        match &cmd.kind {
            Some(command::Kind::ReportInventory(_)) => {
                let hw = self.collect().await;
                match register(
                    channel.clone(),
                    &self.config.boot_id,
                    self.server_id.as_deref(),
                    hw,
                    &self.config.join_token,
                )
                .await
                {
                    Ok(_) => ack("done", "inventory reported".into()),
                    Err(e) => ack("failed", e.to_string()),
                }
            }
            _ => ack("failed", "not a command for the session".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(30);
        assert!(backoff(0, max) <= Duration::from_millis(250));
        assert!(backoff(3, max) >= Duration::from_secs(1));
        assert!(backoff(40, max) <= max);
    }

    use crate::commands::tests::{mem_disks, TestOpener};
    use crate::commands::Timing;
    use crate::install::FakePower;
    use siderite::proto::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
    use siderite::proto::agent::v1::{ServerMessage, Wipe, WipeDisk};
    use tonic::{Request, Response, Status, Streaming};

    type ToAgent = mpsc::Sender<Result<ServerMessage, Status>>;

    /// A server that hands each session to the test.
    struct TestServer {
        sessions: mpsc::Sender<(ToAgent, Streaming<AgentMessage>)>,
    }

    #[tonic::async_trait]
    impl AgentService for TestServer {
        async fn register(
            &self,
            _: Request<RegisterRequest>,
        ) -> Result<Response<RegisterResponse>, Status> {
            Ok(Response::new(RegisterResponse {
                server_id: "srv-1".into(),
                session_token: "token".into(),
                accepted: true,
                ..Default::default()
            }))
        }
        type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;
        async fn session(
            &self,
            req: Request<Streaming<AgentMessage>>,
        ) -> Result<Response<Self::SessionStream>, Status> {
            let (tx, rx) = mpsc::channel(16);
            let _ = self.sessions.send((tx, req.into_inner())).await;
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    async fn next_ack(inbound: &mut Streaming<AgentMessage>) -> CommandAck {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), inbound.message())
                .await
                .expect("a message in time")
                .expect("the stream intact")
                .expect("the stream open");
            if let Some(agent_message::Msg::Ack(a)) = m.msg {
                return a;
            }
        }
    }

    /// A CA and a server identity it signed, as the server makes them; the CA's pin.
    fn test_tls() -> (tonic::transport::ServerTlsConfig, siderite::tls::CaPin) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let pin = siderite::tls::CaPin::of(ca_cert.der());
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf.signed_by(&key, &Issuer::new(ca, ca_key)).unwrap();
        let identity = tonic::transport::Identity::from_pem(
            format!("{}{}", cert.pem(), ca_cert.pem()),
            key.serialize_pem(),
        );
        (
            tonic::transport::ServerTlsConfig::new().identity(identity),
            pin,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wipe_outlives_its_session_and_the_next_session_learns_the_outcome() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sessions_tx, mut sessions) = mpsc::channel(4);
        let (tls, pin) = test_tls();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(AgentServiceServer::new(TestServer {
                    sessions: sessions_tx,
                }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let opener = TestOpener::new(mem_disks());
        opener.hold();
        let executor = Executor::new(
            opener.clone(),
            Arc::new(FakePower::default()),
            Timing::default(),
        );
        let mut config = Config::new(vec![addr.to_string()], "boot-1".into());
        config.ca = Some(pin);
        config.max_backoff = Duration::from_millis(200);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(run_with(
            config,
            Hardware::default,
            executor.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));

        let wipe = Command {
            id: "wipe-1".into(),
            kind: Some(command::Kind::Wipe(Wipe {
                mode: "zero".into(),
                disks: vec![WipeDisk {
                    name: "sda".into(),
                    ..Default::default()
                }],
            })),
        };
        let send = |tx: &ToAgent, c: &Command| {
            let tx = tx.clone();
            let msg = ServerMessage {
                msg: Some(server_message::Msg::Command(c.clone())),
            };
            async move { tx.send(Ok(msg)).await.unwrap() }
        };

        let (to_agent, mut inbound) = sessions.recv().await.unwrap();
        send(&to_agent, &wipe).await;
        assert_eq!(next_ack(&mut inbound).await.state, "accepted");
        // The server goes away mid-wipe.
        drop((to_agent, inbound));
        opener.release();
        tokio::time::timeout(Duration::from_secs(20), executor.idle())
            .await
            .unwrap();

        // The agent reconnects; the server sends what it has no final ack for.
        let (to_agent, mut inbound) = sessions.recv().await.unwrap();
        send(&to_agent, &wipe).await;
        let done = next_ack(&mut inbound).await;
        assert_eq!(done.state, "done", "{done:?}");
        assert_eq!(done.disks.len(), 1);
        assert!(done.disks[0].ok);
        assert_eq!(opener.opens(), 1, "wiped once");

        let _ = stop_tx.send(());
        agent.await.unwrap().unwrap();
        server.abort();
    }
}
