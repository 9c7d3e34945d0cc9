//! The socket side: ports 67 and 4011, interface filtering, rate limiting, replies.
use std::collections::HashSet;
use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::Encodable;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::packet::{parse_request, MAX_PACKET};
use super::ratelimit::Limiter;
use super::{
    respond, BootFiles, Context, DhcpError, ListenPort, MacAddr, Mode, Pool, PoolConfig, RateLimit,
    ReplyTo,
};

/// How often dropped-packet counts are logged (one line, not one per packet).
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// How often named interfaces are looked up again (they may be created or re-created).
const INTERFACE_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum ModeConfig {
    Proxy,
    Full(PoolConfig),
}

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Address both sockets bind to; 0.0.0.0 to hear broadcasts.
    pub listen: Ipv4Addr,
    /// DHCP server port (67); also where relay agents get their replies.
    pub dhcp_port: u16,
    /// PXE port (4011) for the clients' second REQUEST.
    pub pxe_port: u16,
    /// DHCP client port (68): where broadcast and unicast replies go.
    pub client_port: u16,
    /// Answer only requests arriving on these interfaces; empty for all.
    pub interfaces: Vec<String>,
    /// Answer only requests arriving on an interface with one of these local
    /// addresses; empty for all.
    pub addresses: Vec<Ipv4Addr>,
    /// Port of the HTTP server serving the iPXE script.
    pub http_port: u16,
    /// Whether TFTP serves the boot files; without it PXE ROMs get no answer.
    pub tftp: bool,
    pub boot_files: BootFiles,
    pub mode: ModeConfig,
    pub rate_limit: RateLimit,
    /// Tests only: send every reply to the request's source address and port instead of
    /// broadcasting to port 68, so a client on 127.0.0.1 can hear it.
    pub reply_to_source: bool,
    /// Shared so that metrics (and tests) can read them.
    pub counters: Arc<DhcpCounters>,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        Self {
            listen: Ipv4Addr::UNSPECIFIED,
            dhcp_port: 67,
            pxe_port: 4011,
            client_port: 68,
            interfaces: Vec::new(),
            addresses: Vec::new(),
            http_port: 80,
            tftp: true,
            boot_files: BootFiles::default(),
            mode: ModeConfig::Proxy,
            rate_limit: RateLimit::default(),
            reply_to_source: false,
            counters: Arc::default(),
        }
    }
}

/// What happened to received datagrams, since start.
#[derive(Debug, Default)]
pub struct DhcpCounters {
    pub received: AtomicU64,
    /// Not a well-formed BOOTREQUEST (see [`Malformed`](super::Malformed)).
    pub malformed: AtomicU64,
    /// Over the per-MAC budget, or too many MACs this second.
    pub rate_limited: AtomicU64,
    /// Arrived on an interface or address we do not serve.
    pub filtered: AtomicU64,
    /// Well-formed but not answered (not a boot client, not for us...).
    pub ignored: AtomicU64,
    pub replied: AtomicU64,
    pub send_errors: AtomicU64,
}

impl DhcpCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bind, then serve until `shutdown` resolves.
pub async fn serve(
    config: DhcpConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DhcpError> {
    DhcpServer::bind(config).await?.run(shutdown).await
}

pub struct DhcpServer {
    dhcp: UdpSocket,
    pxe: UdpSocket,
    handler: Handler,
}

impl DhcpServer {
    pub async fn bind(config: DhcpConfig) -> Result<Self, DhcpError> {
        let handler = Handler::new(&config, Instant::now())?;
        if config.dhcp_port != 0 && config.dhcp_port == config.pxe_port {
            return Err(DhcpError::Config(format!(
                "DHCP and PXE ports are both {}",
                config.dhcp_port
            )));
        }
        let dhcp = bind_udp(SocketAddrV4::new(config.listen, config.dhcp_port))?;
        let pxe = bind_udp(SocketAddrV4::new(config.listen, config.pxe_port))?;
        let server = Self { dhcp, pxe, handler };
        let (d, p) = server.local_addrs();
        tracing::info!(
            dhcp = %d,
            pxe = %p,
            mode = if matches!(config.mode, ModeConfig::Proxy) { "proxy" } else { "full" },
            interfaces = ?config.interfaces,
            "DHCP listening"
        );
        Ok(server)
    }

    /// The bound DHCP and PXE addresses (useful with port 0).
    pub fn local_addrs(&self) -> (SocketAddr, SocketAddr) {
        let addr = |s: &UdpSocket| {
            s.local_addr()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
        };
        (addr(&self.dhcp), addr(&self.pxe))
    }

    /// Serves until `shutdown` resolves. Packets are handled one at a time: deciding is
    /// microseconds of work, and the per-MAC limit bounds how much of it one client gets.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), DhcpError> {
        let Self {
            dhcp,
            pxe,
            mut handler,
        } = self;
        tokio::pin!(shutdown);
        let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
        summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dhcp_buf = vec![0u8; MAX_PACKET + 1];
        let mut pxe_buf = vec![0u8; MAX_PACKET + 1];
        let mut last = Totals::default();
        loop {
            let (port, received) = tokio::select! {
                _ = &mut shutdown => break,
                _ = summary.tick() => {
                    last = log_summary(&handler.counters, last);
                    continue;
                }
                r = recv(&dhcp, &mut dhcp_buf) => (ListenPort::Dhcp, r),
                r = recv(&pxe, &mut pxe_buf) => (ListenPort::Pxe, r),
            };
            let (sock, buf) = match port {
                ListenPort::Dhcp => (&dhcp, &dhcp_buf),
                ListenPort::Pxe => (&pxe, &pxe_buf),
            };
            let meta = match received {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(?port, error = %e, "DHCP receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let meta = PacketMeta { port, ..meta };
            if let Some(out) = handler.handle(&buf[..meta.len], &meta, Instant::now()) {
                match send(sock, &out).await {
                    Ok(_) => DhcpCounters::bump(&handler.counters.replied),
                    Err(e) => {
                        DhcpCounters::bump(&handler.counters.send_errors);
                        tracing::debug!(dest = %out.dest, error = %e, "DHCP reply not sent");
                    }
                }
            }
        }
        tracing::info!("DHCP stopped");
        Ok(())
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    rate_limited: u64,
    malformed: u64,
    send_errors: u64,
}

fn log_summary(c: &DhcpCounters, last: Totals) -> Totals {
    let now = Totals {
        rate_limited: c.rate_limited.load(Ordering::Relaxed),
        malformed: c.malformed.load(Ordering::Relaxed),
        send_errors: c.send_errors.load(Ordering::Relaxed),
    };
    if now.rate_limited > last.rate_limited {
        tracing::warn!(
            dropped = now.rate_limited - last.rate_limited,
            seconds = SUMMARY_INTERVAL.as_secs(),
            "DHCP packets dropped over the per-MAC rate limit"
        );
    }
    if now.malformed > last.malformed {
        tracing::debug!(
            dropped = now.malformed - last.malformed,
            seconds = SUMMARY_INTERVAL.as_secs(),
            "malformed DHCP packets dropped"
        );
    }
    if now.send_errors > last.send_errors {
        tracing::warn!(
            failed = now.send_errors - last.send_errors,
            seconds = SUMMARY_INTERVAL.as_secs(),
            "DHCP replies could not be sent"
        );
    }
    now
}

/// Where and how a datagram arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacketMeta {
    pub port: ListenPort,
    pub len: usize,
    pub source: SocketAddrV4,
    /// The local address the kernel would answer from on that interface
    /// (`ipi_spec_dst`): what we tell the client our address is.
    pub local: Ipv4Addr,
    pub ifindex: u32,
}

/// An encoded reply and how to send it.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub bytes: Vec<u8>,
    pub dest: SocketAddrV4,
    /// Interface to send a broadcast out of; 0 lets routing decide.
    pub ifindex: u32,
    pub source: Ipv4Addr,
}

/// Everything between a received datagram and an encoded reply; no I/O.
pub(crate) struct Handler {
    mode: Mode,
    boot_files: BootFiles,
    http_port: u16,
    tftp: bool,
    dhcp_port: u16,
    client_port: u16,
    reply_to_source: bool,
    limiter: Limiter,
    filter: InterfaceFilter,
    counters: Arc<DhcpCounters>,
}

impl Handler {
    pub(crate) fn new(config: &DhcpConfig, now: Instant) -> Result<Self, DhcpError> {
        config.boot_files.validate()?;
        if config.http_port == 0 {
            return Err(DhcpError::Config(
                "HTTP port 0 cannot be put in a URL".into(),
            ));
        }
        let mode = match &config.mode {
            ModeConfig::Proxy => Mode::Proxy,
            ModeConfig::Full(pool) => Mode::Full {
                pool: Box::new(Pool::new(pool.clone())?),
            },
        };
        Ok(Self {
            mode,
            boot_files: config.boot_files.clone(),
            http_port: config.http_port,
            tftp: config.tftp,
            dhcp_port: config.dhcp_port,
            client_port: config.client_port,
            reply_to_source: config.reply_to_source,
            limiter: Limiter::new(config.rate_limit, now),
            filter: InterfaceFilter::new(config.interfaces.clone(), config.addresses.clone()),
            counters: config.counters.clone(),
        })
    }

    pub(crate) fn handle(
        &mut self,
        bytes: &[u8],
        meta: &PacketMeta,
        now: Instant,
    ) -> Option<Outgoing> {
        DhcpCounters::bump(&self.counters.received);
        if !self.filter.allows(meta.ifindex, meta.local, now) {
            DhcpCounters::bump(&self.counters.filtered);
            return None;
        }
        // Budget by the raw chaddr before any decoding work.
        if let Some(chaddr) = bytes.get(28..34) {
            let mut mac = [0; 6];
            mac.copy_from_slice(chaddr);
            if !self.limiter.allow(MacAddr(mac), now) {
                DhcpCounters::bump(&self.counters.rate_limited);
                return None;
            }
        }
        let req = match parse_request(bytes) {
            Ok(r) => r,
            Err(reason) => {
                DhcpCounters::bump(&self.counters.malformed);
                tracing::debug!(source = %meta.source, port = ?meta.port, %reason, "malformed DHCP packet dropped");
                return None;
            }
        };
        if meta.local.is_unspecified() || meta.local.is_broadcast() {
            DhcpCounters::bump(&self.counters.ignored);
            tracing::debug!(
                ifindex = meta.ifindex,
                "request on an interface without an IPv4 address, ignored"
            );
            return None;
        }
        let ctx = Context {
            server_ip: meta.local,
            http_port: self.http_port,
            tftp: self.tftp,
            mode: &self.mode,
            boot_files: &self.boot_files,
            port: meta.port,
            now,
        };
        let Some(reply) = respond(&req, &ctx) else {
            DhcpCounters::bump(&self.counters.ignored);
            return None;
        };
        let bytes = match reply.message.to_vec() {
            Ok(b) => b,
            Err(e) => {
                DhcpCounters::bump(&self.counters.send_errors);
                tracing::warn!(error = %e, "DHCP reply could not be encoded");
                return None;
            }
        };
        let (dest, ifindex) = if self.reply_to_source {
            (meta.source, 0)
        } else {
            match reply.to {
                ReplyTo::Broadcast => (
                    SocketAddrV4::new(Ipv4Addr::BROADCAST, self.client_port),
                    meta.ifindex,
                ),
                ReplyTo::Unicast(ip) => (SocketAddrV4::new(ip, self.client_port), 0),
                ReplyTo::Relay(ip) => (SocketAddrV4::new(ip, self.dhcp_port), 0),
                ReplyTo::Source => (meta.source, 0),
            }
        };
        Some(Outgoing {
            bytes,
            dest,
            ifindex,
            source: meta.local,
        })
    }
}

/// Which arrivals we answer: by interface name and/or local address.
struct InterfaceFilter {
    names: Vec<String>,
    addresses: Vec<Ipv4Addr>,
    allowed: HashSet<u32>,
    refreshed: Option<Instant>,
}

impl InterfaceFilter {
    fn new(names: Vec<String>, addresses: Vec<Ipv4Addr>) -> Self {
        Self {
            names,
            addresses,
            allowed: HashSet::new(),
            refreshed: None,
        }
    }

    fn allows(&mut self, ifindex: u32, local: Ipv4Addr, now: Instant) -> bool {
        if !self.addresses.is_empty() && !self.addresses.contains(&local) {
            return false;
        }
        if self.names.is_empty() {
            return true;
        }
        if self
            .refreshed
            .is_none_or(|t| now.saturating_duration_since(t) >= INTERFACE_REFRESH)
        {
            self.allowed = self
                .names
                .iter()
                .filter_map(|n| nix::net::if_::if_nametoindex(n.as_str()).ok())
                .collect();
            self.refreshed = Some(now);
        }
        self.allowed.contains(&ifindex)
    }
}

fn bind_udp(addr: SocketAddrV4) -> Result<UdpSocket, DhcpError> {
    let sa = SocketAddr::V4(addr);
    let opt = |option: &'static str| {
        move |source: io::Error| DhcpError::SocketOption {
            option,
            addr: sa,
            source,
        }
    };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|source| DhcpError::Bind { addr: sa, source })?;
    sock.set_reuse_address(true).map_err(opt("SO_REUSEADDR"))?;
    sock.set_broadcast(true).map_err(opt("SO_BROADCAST"))?;
    setsockopt(&sock, sockopt::Ipv4PacketInfo, &true).map_err(|e| opt("IP_PKTINFO")(e.into()))?;
    sock.set_nonblocking(true).map_err(opt("O_NONBLOCK"))?;
    sock.bind(&sa.into())
        .map_err(|source| DhcpError::Bind { addr: sa, source })?;
    UdpSocket::from_std(sock.into()).map_err(|source| DhcpError::Bind { addr: sa, source })
}

/// Receives one datagram with its arrival interface and local address. `Ok(None)`:
/// something arrived that cannot be answered (no IPv4 source or no packet info).
async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Option<PacketMeta>> {
    loop {
        sock.readable().await?;
        match sock.try_io(Interest::READABLE, || {
            recv_with_pktinfo(sock.as_raw_fd(), buf)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

fn recv_with_pktinfo(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<PacketMeta>> {
    let capacity = buf.len();
    let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(io::Error::from)?;
    // A truncated datagram was larger than the buffer (which is one byte larger than
    // any packet accepted): the parser rejects it as oversized.
    let len = if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        capacity
    } else {
        msg.bytes.min(capacity)
    };
    let Some(source) = msg.address.map(SocketAddrV4::from) else {
        return Ok(None);
    };
    let mut info = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Ipv4PacketInfo(i) = c {
            info = Some((
                u32::try_from(i.ipi_ifindex).unwrap_or(0),
                Ipv4Addr::from(u32::from_be(i.ipi_spec_dst.s_addr)),
            ));
        }
    }
    let Some((ifindex, local)) = info else {
        tracing::debug!(%source, "datagram without IP_PKTINFO, ignored");
        return Ok(None);
    };
    Ok(Some(PacketMeta {
        port: ListenPort::Dhcp,
        len,
        source,
        local,
        ifindex,
    }))
}

async fn send(sock: &UdpSocket, out: &Outgoing) -> io::Result<usize> {
    let info = nix::libc::in_pktinfo {
        ipi_ifindex: i32::try_from(out.ifindex).unwrap_or(0),
        ipi_spec_dst: nix::libc::in_addr {
            s_addr: u32::from(out.source).to_be(),
        },
        ipi_addr: nix::libc::in_addr { s_addr: 0 },
    };
    let dest = SockaddrIn::from(out.dest);
    sock.async_io(Interest::WRITABLE, || {
        sendmsg(
            sock.as_raw_fd(),
            &[IoSlice::new(&out.bytes)],
            &[ControlMessage::Ipv4PacketInfo(&info)],
            MsgFlags::empty(),
            Some(&dest),
        )
        .map_err(io::Error::from)
    })
    .await
}
