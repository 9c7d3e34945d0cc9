//! Connection admission for the server's TCP listeners, against connection floods and
//! slow-loris clients: caps on live connections in total and per source address, and a
//! deadline on each connection's handshake that runs off the accept path.
//!
//! A connection holds a [`Permit`] from accept until it is dropped, so the counts include
//! connections still in their handshake. A refused connection is closed at once.
//!
//! Two ways in: [`incoming`], a stream of handshaken connections for tonic's
//! `serve_with_incoming`, and [`GuardedListener`], an [`axum::serve::Listener`]
//! (admission only, no handshake).
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tonic::transport::server::Connected;

/// At most one log line per this long for refusals, and one for accept errors; the
/// lines carry how many were not logged in between.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// Accept errors other than a client giving up (EMFILE, ENFILE, ENOBUFS) would repeat at
/// once: accepting pauses this long so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Live connections on the whole listener, handshakes included.
    pub max_connections: usize,
    /// Live connections from one source address. The exact address, also for IPv6: the
    /// machines of a rack share one /64.
    pub max_per_source: usize,
    /// From accept until the handshake completes; a slower client is dropped. Only
    /// [`incoming`] runs handshakes.
    pub handshake_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            max_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerSource,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Total => "total",
            Refused::PerSource => "per-source",
        })
    }
}

/// Counts live connections per source address and in total, for one listener.
pub struct ConnGuard {
    limits: ConnLimits,
    live: Mutex<Live>,
    refused: AtomicU64,
    timed_out: AtomicU64,
    refusal_log: Mutex<LogGate>,
    accept_error_log: Mutex<LogGate>,
}

#[derive(Default)]
struct Live {
    total: usize,
    /// Only sources with a live connection: bounded by `max_connections`.
    per_source: HashMap<IpAddr, usize>,
}

impl ConnGuard {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(ConnGuard {
            limits,
            live: Mutex::default(),
            refused: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            refusal_log: Mutex::default(),
            accept_error_log: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// A slot for a connection from `peer`; none when that would exceed a limit.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Permit> {
        self.try_admit(peer).ok()
    }

    /// As [`ConnGuard::admit`], saying which limit refused. A refusal is counted and
    /// logged (rate-limited).
    pub fn try_admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refused> {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
        let peer = peer.to_canonical();
        let refused = {
            let mut live = self.live.lock().expect("guard lock");
            let from_peer = live.per_source.get(&peer).copied().unwrap_or(0);
            if live.total >= self.limits.max_connections {
                Refused::Total
            } else if from_peer >= self.limits.max_per_source {
                Refused::PerSource
            } else {
                live.total += 1;
                live.per_source.insert(peer, from_peer + 1);
                return Ok(Permit {
                    guard: self.clone(),
                    peer,
                });
            }
        };
        self.refused.fetch_add(1, Ordering::Relaxed);
        let logged = self.refusal_log.lock().expect("guard lock").pass();
        if let Some(suppressed) = logged {
            let max = match refused {
                Refused::Total => self.limits.max_connections,
                Refused::PerSource => self.limits.max_per_source,
            };
            tracing::warn!(
                source = %peer, limit = %refused, max, suppressed,
                "connection refused: over the {refused} connection limit"
            );
        }
        Err(refused)
    }

    fn release(&self, peer: IpAddr) {
        let mut live = self.live.lock().expect("guard lock");
        live.total = live.total.saturating_sub(1);
        if let Some(n) = live.per_source.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                live.per_source.remove(&peer);
            }
        }
    }

    /// Live connections, handshakes included.
    pub fn live(&self) -> usize {
        self.live.lock().expect("guard lock").total
    }

    /// Live connections from `ip`, handshakes included.
    pub fn live_from(&self, ip: IpAddr) -> usize {
        let live = self.live.lock().expect("guard lock");
        live.per_source
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    /// Connections refused by either limit since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections dropped for not finishing their handshake in time since the start.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// How long to pause accepting after `e`, if at all.
    fn accept_error(&self, e: &io::Error) -> Option<Duration> {
        use io::ErrorKind::*;
        // The client gave up between SYN and accept: nothing to do with us.
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        ) {
            tracing::debug!(error = %e, "accept failed");
            return None;
        }
        let logged = self.accept_error_log.lock().expect("guard lock").pass();
        if let Some(suppressed) = logged {
            tracing::error!(
                error = %e, suppressed,
                "accept failed; pausing {} ms", ACCEPT_BACKOFF.as_millis()
            );
        }
        Some(ACCEPT_BACKOFF)
    }
}

impl fmt::Debug for ConnGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnGuard")
            .field("limits", &self.limits)
            .field("live", &self.live())
            .field("refused", &self.refused())
            .field("timed_out", &self.timed_out())
            .finish()
    }
}

/// Lets one event through per [`LOG_EVERY`] (for log lines a flood could multiply).
#[derive(Default)]
pub struct LogGate {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    /// Some(events suppressed since the last one let through) when this one may be logged.
    pub fn pass(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// One connection's slot in a [`ConnGuard`]; dropping it frees the slot.
pub struct Permit {
    guard: Arc<ConnGuard>,
    peer: IpAddr,
}

impl Permit {
    /// The source address the slot is counted against.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.guard.release(self.peer);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("peer", &self.peer).finish()
    }
}

/// A connection with its slot: the slot is freed when the connection is dropped.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    permit: Permit,
}

impl<IO> Guarded<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// The source address the connection is counted against.
    pub fn peer(&self) -> IpAddr {
        self.permit.peer()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepts on `listener` until the stream is dropped. Each accepted socket is admitted by
/// `guard` (or closed at once; the guard logs the refusal), then `handshake(tcp)` runs in
/// a task of its own under the guard's `handshake_timeout`, so a slow client blocks
/// neither accept nor other handshakes. Connections whose handshake succeeded come out
/// with their permit; failed and late ones are logged at debug and dropped.
///
/// The stream never yields an error (nor ends): accept errors are logged, and those that
/// would repeat at once (EMFILE) pause accepting briefly. Accepting happens while the
/// stream is polled; dropping it closes the listener and drops handshakes in progress.
pub fn incoming<IO, F, Fut>(
    listener: TcpListener,
    guard: Arc<ConnGuard>,
    handshake: F,
) -> impl Stream<Item = io::Result<Guarded<IO>>> + Send + 'static
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
    IO: Send + 'static,
{
    let state = Incoming {
        listener,
        guard,
        handshake,
        handshakes: JoinSet::new(),
        resume_accept: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        let conn = state.next().await;
        Some((Ok(conn), state))
    })
}

struct Incoming<F, IO> {
    listener: TcpListener,
    guard: Arc<ConnGuard>,
    handshake: F,
    /// Dropping the set (with the stream) aborts the handshakes and frees their permits.
    handshakes: JoinSet<Option<Guarded<IO>>>,
    /// After an accept error: no accepting before then.
    resume_accept: Option<tokio::time::Instant>,
}

impl<F, Fut, IO> Incoming<F, IO>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
    IO: Send + 'static,
{
    async fn next(&mut self) -> Guarded<IO> {
        loop {
            // Both branches are cancel-safe: accept and join_next lose nothing.
            tokio::select! {
                accepted = accept_after(&self.listener, self.resume_accept) => match accepted {
                    Ok((tcp, peer)) => {
                        self.resume_accept = None;
                        self.start(tcp, peer);
                    }
                    Err(e) => {
                        self.resume_accept = self
                            .guard
                            .accept_error(&e)
                            .map(|pause| tokio::time::Instant::now() + pause);
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn start(&mut self, tcp: TcpStream, peer: SocketAddr) {
        // Refused: dropping `tcp` closes it.
        let Some(permit) = self.guard.admit(peer.ip()) else {
            return;
        };
        let handshake = (self.handshake)(tcp);
        let timeout = self.guard.limits.handshake_timeout;
        let guard = self.guard.clone();
        self.handshakes.spawn(async move {
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(io)) => Some(Guarded { io, permit }),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "handshake failed");
                    None
                }
                Err(_) => {
                    guard.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, ?timeout, "handshake timed out");
                    None
                }
            }
        });
    }
}

async fn accept_after(
    listener: &TcpListener,
    resume: Option<tokio::time::Instant>,
) -> io::Result<(TcpStream, SocketAddr)> {
    if let Some(at) = resume {
        tokio::time::sleep_until(at).await;
    }
    listener.accept().await
}

/// A TCP listener for `axum::serve` whose connections are admitted by a [`ConnGuard`]
/// (no handshake: its `handshake_timeout` is unused). Refused connections are closed at
/// once. Axum's `ConnectInfo<SocketAddr>` is not available through it.
pub struct GuardedListener {
    listener: TcpListener,
    guard: Arc<ConnGuard>,
}

impl GuardedListener {
    pub fn new(listener: TcpListener, guard: Arc<ConnGuard>) -> Self {
        GuardedListener { listener, guard }
    }

    pub fn guard(&self) -> &Arc<ConnGuard> {
        &self.guard
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    if let Some(permit) = self.guard.admit(peer.ip()) {
                        return (Guarded { io: tcp, permit }, peer);
                    }
                }
                Err(e) => {
                    if let Some(pause) = self.guard.accept_error(&e) {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    use super::*;

    /// 127.0.0.0/8 is all loopback: each last octet is a source of its own.
    fn source(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
    }

    async fn connect_from(n: u8, server: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source(n), 0)).unwrap();
        socket.connect(server).await.unwrap()
    }

    /// The server closed `tcp` (EOF or reset) within a second.
    async fn closed_soon(tcp: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The handshake: the client says one byte.
    async fn hello(mut tcp: TcpStream) -> io::Result<TcpStream> {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await?;
        Ok(tcp)
    }

    /// `incoming` driven by a task of its own, as tonic would, its connections passed on.
    struct Server {
        addr: SocketAddr,
        guard: Arc<ConnGuard>,
        conns: mpsc::UnboundedReceiver<Guarded<TcpStream>>,
        task: JoinHandle<()>,
    }

    impl Server {
        async fn start(limits: ConnLimits) -> Self {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let guard = ConnGuard::new(limits);
            let (tx, conns) = mpsc::unbounded_channel();
            let stream = incoming(listener, guard.clone(), hello);
            let task = tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(conn) = stream.next().await {
                    if tx
                        .send(conn.expect("incoming never yields errors"))
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Server {
                addr,
                guard,
                conns,
                task,
            }
        }

        async fn next_conn(&mut self) -> Guarded<TcpStream> {
            tokio::time::timeout(Duration::from_secs(1), self.conns.recv())
                .await
                .expect("a connection within a second")
                .unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn limits(max_connections: usize, max_per_source: usize, handshake_ms: u64) -> ConnLimits {
        ConnLimits {
            max_connections,
            max_per_source,
            handshake_timeout: Duration::from_millis(handshake_ms),
        }
    }

    #[test]
    fn counts_per_source_and_in_total() {
        let guard = ConnGuard::new(limits(3, 2, 1000));
        let a = guard.admit(source(2)).unwrap();
        // An IPv4-mapped IPv6 peer is the same source.
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let b = guard.admit(mapped).unwrap();
        assert_eq!(b.peer(), source(2));
        assert_eq!(guard.try_admit(source(2)).unwrap_err(), Refused::PerSource);
        assert_eq!(guard.live_from(mapped), 2);
        let c = guard.admit(source(3)).unwrap();
        assert_eq!(guard.try_admit(source(4)).unwrap_err(), Refused::Total);
        assert_eq!((guard.live(), guard.refused()), (3, 2));
        drop(a);
        assert_eq!((guard.live(), guard.live_from(source(2))), (2, 1));
        drop((b, c));
        assert_eq!((guard.live(), guard.live_from(source(2))), (0, 0));
        assert!(guard.admit(source(4)).is_some());
    }

    #[test]
    fn only_accept_errors_that_would_repeat_pause_accepting() {
        let guard = ConnGuard::new(ConnLimits::default());
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(guard.accept_error(&aborted), None);
        let emfile = io::Error::from_raw_os_error(nix::libc::EMFILE);
        assert_eq!(guard.accept_error(&emfile), Some(ACCEPT_BACKOFF));
    }

    #[tokio::test]
    async fn a_source_over_its_cap_is_closed_and_others_get_through() {
        let mut server = Server::start(limits(100, 3, 5_000)).await;
        // Connected, never saying hello: all three sit in their handshake.
        let mut stalled = Vec::new();
        for _ in 0..3 {
            stalled.push(connect_from(2, server.addr).await);
        }
        let guard = server.guard.clone();
        eventually("3 live from .2", || guard.live_from(source(2)) == 3).await;

        let mut over = connect_from(2, server.addr).await;
        let t = Instant::now();
        assert!(closed_soon(&mut over).await, "the 4th from .2 is closed");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(server.guard.refused(), 1);

        let t = Instant::now();
        let mut other = connect_from(3, server.addr).await;
        other.write_all(b"h").await.unwrap();
        let conn = server.next_conn().await;
        assert_eq!(conn.peer(), source(3));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(server.guard.live_from(source(2)), 3);
        assert_eq!(server.guard.live(), 4);
        drop(stalled);
    }

    #[tokio::test]
    async fn a_slow_handshake_is_dropped_and_its_slot_freed() {
        let mut server = Server::start(limits(100, 1, 200)).await;
        let t = Instant::now();
        let mut slow = connect_from(2, server.addr).await;
        let guard = server.guard.clone();
        eventually("1 live from .2", || guard.live_from(source(2)) == 1).await;
        assert!(closed_soon(&mut slow).await, "the slow client is dropped");
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        eventually("the slot freed", || guard.live() == 0).await;
        assert_eq!((guard.timed_out(), guard.refused()), (1, 0));

        // The freed slot admits the same source again.
        let mut again = connect_from(2, server.addr).await;
        again.write_all(b"h").await.unwrap();
        assert_eq!(server.next_conn().await.peer(), source(2));
    }

    #[tokio::test]
    async fn the_total_cap_closes_any_source() {
        let mut server = Server::start(limits(3, 10, 5_000)).await;
        let mut stalled = Vec::new();
        for n in 2..5 {
            stalled.push(connect_from(n, server.addr).await);
        }
        let guard = server.guard.clone();
        eventually("3 live", || guard.live() == 3).await;
        let mut over = connect_from(5, server.addr).await;
        assert!(closed_soon(&mut over).await, "the 4th connection is closed");
        assert_eq!(guard.refused(), 1);

        // A client giving up in its handshake frees its slot.
        drop(stalled.remove(0));
        eventually("2 live", || guard.live() == 2).await;
        let mut fifth = connect_from(5, server.addr).await;
        fifth.write_all(b"h").await.unwrap();
        assert_eq!(server.next_conn().await.peer(), source(5));
    }

    #[tokio::test]
    async fn dropping_a_connection_releases_its_permit() {
        let mut server = Server::start(limits(10, 10, 1_000)).await;
        let mut client = connect_from(2, server.addr).await;
        client.write_all(b"h").await.unwrap();
        let mut conn = server.next_conn().await;
        assert_eq!(
            (server.guard.live(), server.guard.live_from(source(2))),
            (1, 1)
        );

        // The connection reads and writes through the wrapper.
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        let info = conn.connect_info();
        assert_eq!(info.remote_addr().map(|a| a.ip()), Some(source(2)));

        drop(conn);
        assert_eq!(
            (server.guard.live(), server.guard.live_from(source(2))),
            (0, 0)
        );
        assert!(closed_soon(&mut client).await);
    }

    #[tokio::test]
    async fn the_axum_listener_caps_a_source() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let guard = ConnGuard::new(limits(10, 1, 1_000));
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = GuardedListener::new(listener, guard.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });

        let idle = connect_from(2, addr).await;
        eventually("1 live from .2", || guard.live_from(source(2)) == 1).await;
        let mut over = connect_from(2, addr).await;
        assert!(closed_soon(&mut over).await, "the 2nd from .2 is closed");
        assert_eq!(guard.refused(), 1);

        let mut other = connect_from(3, addr).await;
        other
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        tokio::time::timeout(Duration::from_secs(1), other.read_to_string(&mut resp))
            .await
            .unwrap()
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("ok"), "{resp}");

        drop(idle);
        eventually("the slots freed", || guard.live() == 0).await;
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
