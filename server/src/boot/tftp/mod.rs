//! A read-only TFTP server for network boot: RFC 1350 with option negotiation
//! (RFC 2347), blksize (2348), timeout and tsize (2349) and windowsize (7440).
//!
//! The listener only reads requests; each transfer runs in its own task on its own
//! ephemeral UDP socket (its TID), bounded in number overall and per client address.
//! Files come from a [`FileSource`]: a directory ([`DirSource`]), memory
//! ([`MemSource`]) or both ([`Layered`]).
//!
//! Known limits: a transfer socket is connected to its client, so strays from other
//! ports are dropped by the kernel rather than answered with ERROR 5; on a wildcard
//! listen address the reply's source address is the route's choice (bind the boot
//! interface's address on multi-homed hosts); like any TFTP server, a spoofed RRQ
//! makes it send a block (and its retransmissions) to the spoofed address, which the
//! per-address session limit bounds.
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub mod client;
mod options;
pub mod packet;
mod session;
pub mod source;
mod window;

#[cfg(test)]
mod tests;

pub use options::{negotiate, Limits, Negotiated, OptionError};
pub use packet::{parse, ErrorCode, Packet, ParseError};
pub use source::{
    normalize_path, DirSource, FileContent, FileSource, Layered, MemSource, SourceError,
};

use packet::{error_packet, OP_RRQ, OP_WRQ};
use session::{Ctx, ReadRequest};

#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Where requests arrive; port 69 in production, 127.0.0.1:0 in tests.
    pub listen: SocketAddr,
    /// Transfers running at once, all clients together.
    pub max_sessions: usize,
    /// Transfers running at once from one client IP address.
    pub per_client_sessions: usize,
    /// Retransmission timeout when the client does not negotiate one.
    pub timeout: Duration,
    /// Retransmissions of one window before the transfer is abandoned.
    pub retries: u32,
    /// Largest blksize granted (clients asking for more get this).
    pub max_blksize: u16,
    /// Largest windowsize granted.
    pub max_windowsize: u16,
    /// Largest windowsize x blksize granted: the unacknowledged window is in memory.
    pub max_window_bytes: usize,
}

impl Default for TftpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            max_sessions: 256,
            per_client_sessions: 8,
            timeout: Duration::from_secs(1),
            retries: 5,
            max_blksize: packet::MAX_BLKSIZE,
            max_windowsize: 64,
            max_window_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("invalid TFTP configuration: {0}")]
    Config(&'static str),
    #[error("binding TFTP on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Bind, then serve until `shutdown` resolves.
pub async fn serve(
    config: TftpConfig,
    source: Arc<dyn FileSource>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TftpError> {
    TftpServer::bind(config, source).await?.run(shutdown).await
}

pub struct TftpServer {
    socket: UdpSocket,
    local_addr: SocketAddr,
    config: Arc<TftpConfig>,
    source: Arc<dyn FileSource>,
}

impl TftpServer {
    pub async fn bind(config: TftpConfig, source: Arc<dyn FileSource>) -> Result<Self, TftpError> {
        if config.max_sessions == 0 || config.per_client_sessions == 0 {
            return Err(TftpError::Config("session limits must be at least 1"));
        }
        if config.timeout.is_zero() {
            return Err(TftpError::Config("timeout must be positive"));
        }
        if config.max_blksize < 8 || config.max_windowsize == 0 {
            return Err(TftpError::Config(
                "max_blksize must be at least 8 and max_windowsize at least 1",
            ));
        }
        let bind_err = |source| TftpError::Bind {
            addr: config.listen,
            source,
        };
        let socket = UdpSocket::bind(config.listen).await.map_err(bind_err)?;
        let local_addr = socket.local_addr().map_err(bind_err)?;
        Ok(Self {
            socket,
            local_addr,
            config: Arc::new(config),
            source,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops every transfer (each client gets
    /// an ERROR) and waits for their tasks.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), TftpError> {
        tracing::info!(addr = %self.local_addr, "TFTP listening");
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut listener = Listener {
            socket: self.socket,
            config: self.config,
            source: self.source,
            stop: stop_rx,
            admission: Arc::new(Mutex::new(Admission::default())),
            logs: Arc::new(LogBudget::new(
                20,
                "log lines about refused or failed TFTP requests",
            )),
            replies: LogBudget::new(200, "TFTP error replies from the listening port"),
            tasks: JoinSet::new(),
        };
        // RRQs are at most 512 bytes; a larger datagram is still read far enough to refuse.
        let mut buf = vec![0u8; 2048];
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = listener.tasks.join_next(), if !listener.tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            tracing::error!("a TFTP transfer task panicked");
                        }
                    }
                }
                r = listener.socket.recv_from(&mut buf) => match r {
                    Ok((n, peer)) => listener.on_datagram(&buf[..n], peer).await,
                    Err(e) => {
                        if listener.logs.allow() {
                            tracing::warn!(error = %e, "TFTP receive failed");
                        }
                        // Never spin on a persistent socket error.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
        tracing::info!(transfers = listener.tasks.len(), "TFTP shutting down");
        let _ = stop_tx.send(true);
        while listener.tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// Who is being served, for the session limits and to spot retransmitted RRQs.
#[derive(Default)]
struct Admission {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// The RRQ that started each running transfer (and the transfer's id), by client TID.
    active: HashMap<SocketAddr, (u64, Vec<u8>)>,
    next_id: u64,
}

/// Releases a transfer's slot when its task ends, however it ends.
struct Slot {
    admission: Arc<Mutex<Admission>>,
    peer: SocketAddr,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        a.total = a.total.saturating_sub(1);
        if let Some(n) = a.per_ip.get_mut(&self.peer.ip()) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                a.per_ip.remove(&self.peer.ip());
            }
        }
        // A newer transfer from the same TID may have taken the entry over.
        if a.active
            .get(&self.peer)
            .is_some_and(|(id, _)| *id == self.id)
        {
            a.active.remove(&self.peer);
        }
    }
}

/// A budget of events per second (log lines, error replies) caused by what clients
/// send, so a flood of bad packets floods neither the log nor the network.
pub(crate) struct LogBudget {
    per_second: u32,
    what: &'static str,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogBudget {
    fn new(per_second: u32, what: &'static str) -> Self {
        Self {
            per_second,
            what,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    pub(crate) fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, used, suppressed) = &mut *s;
        if start.elapsed() >= Duration::from_secs(1) {
            if *suppressed > 0 {
                tracing::info!(suppressed = *suppressed, "suppressed {}", self.what);
            }
            *start = Instant::now();
            *used = 0;
            *suppressed = 0;
        }
        if *used < self.per_second {
            *used += 1;
            true
        } else {
            *suppressed += 1;
            false
        }
    }
}

struct Listener {
    socket: UdpSocket,
    config: Arc<TftpConfig>,
    source: Arc<dyn FileSource>,
    stop: watch::Receiver<bool>,
    admission: Arc<Mutex<Admission>>,
    logs: Arc<LogBudget>,
    replies: LogBudget,
    tasks: JoinSet<()>,
}

impl Listener {
    async fn on_datagram(&mut self, pkt: &[u8], peer: SocketAddr) {
        match packet::parse(pkt) {
            Ok(Packet::Rrq(req)) => {
                let req = ReadRequest {
                    filename: req.filename.to_string(),
                    mode: req.mode.to_string(),
                    options: req
                        .options
                        .iter()
                        .map(|o| (o.name.to_string(), o.value.to_string()))
                        .collect(),
                };
                self.admit(pkt, peer, req).await;
            }
            Ok(Packet::Wrq(req)) => {
                if self.logs.allow() {
                    tracing::info!(client = %peer, file = req.filename, "TFTP write refused");
                }
                self.reply(peer, ErrorCode::AccessViolation, "read-only server")
                    .await;
            }
            // Stray DATA/ACK/ERROR/OACK (old transfers, scans): never answered, so two
            // confused peers cannot loop.
            Ok(other) => {
                if self.logs.allow() {
                    tracing::debug!(client = %peer, kind = other.kind(), "TFTP: ignoring a stray packet");
                }
            }
            Err(e) => {
                if self.logs.allow() {
                    tracing::debug!(client = %peer, error = %e, "TFTP: malformed packet");
                }
                // Answer what tried to be a request; drop the rest (no amplification).
                let op = pkt.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                if matches!(op, Some(OP_RRQ | OP_WRQ)) {
                    let msg = format!("malformed request: {e}");
                    self.reply(peer, ErrorCode::IllegalOperation, &msg).await;
                }
            }
        }
    }

    /// Answers from the listening socket, within a budget: these answers go to
    /// whatever address a datagram claims to come from.
    async fn reply(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        if !self.replies.allow() {
            return;
        }
        if let Err(e) = self
            .socket
            .send_to(&error_packet(code, message), peer)
            .await
        {
            tracing::debug!(client = %peer, error = %e, "TFTP: sending an error failed");
        }
    }

    async fn admit(&mut self, pkt: &[u8], peer: SocketAddr, req: ReadRequest) {
        let admitted = {
            let mut a = self.admission.lock().unwrap_or_else(|e| e.into_inner());
            if a.active.get(&peer).is_some_and(|(_, first)| first == pkt) {
                // The client resent its RRQ before our first reply reached it.
                return;
            }
            let from_ip = a.per_ip.get(&peer.ip()).copied().unwrap_or(0);
            if a.total >= self.config.max_sessions {
                Err("server busy: too many transfers")
            } else if from_ip >= self.config.per_client_sessions {
                Err("too many transfers from this address")
            } else {
                a.total += 1;
                *a.per_ip.entry(peer.ip()).or_default() += 1;
                a.next_id += 1;
                let id = a.next_id;
                a.active.insert(peer, (id, pkt.to_vec()));
                Ok(id)
            }
        };
        let id = match admitted {
            Ok(id) => id,
            Err(msg) => {
                if self.logs.allow() {
                    tracing::info!(client = %peer, file = %req.filename, reason = msg, "TFTP request refused");
                }
                self.reply(peer, ErrorCode::NotDefined, msg).await;
                return;
            }
        };
        let slot = Slot {
            admission: self.admission.clone(),
            peer,
            id,
        };
        let ctx = Ctx {
            peer,
            config: self.config.clone(),
            source: self.source.clone(),
            stop: self.stop.clone(),
            logs: self.logs.clone(),
        };
        self.tasks.spawn(async move {
            let _slot = slot;
            session::run(ctx, req).await;
        });
    }
}
