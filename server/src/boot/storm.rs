//! `siderite bench boot-storm`: many simulated machines network-boot at once against
//! in-process ProxyDHCP, TFTP and boot HTTP servers on 127.0.0.1; how long until every
//! one of them has its agent kernel and initrd.
//!
//! Each simulated machine does what a BIOS PXE ROM and then iPXE do:
//! 1. PXE ROM: DHCP DISCOVER (vendor class PXEClient, arch 0, its own MAC and GUID) to
//!    the DHCP port, answered by a ProxyDHCP OFFER; a REQUEST to the PXE port (4011),
//!    answered by an ACK naming the boot file (`undionly.kpxe`).
//! 2. TFTP read of that file from the ACK's next-server, blksize 1432 and tsize, checked
//!    byte for byte against the file on disk.
//! 3. iPXE: DHCP DISCOVER again, now with user class iPXE, answered by an OFFER naming
//!    the `/boot.ipxe` URL.
//! 4. HTTP: `/boot.ipxe`; the `/ipxe?...` URL it chains to, with iPXE's settings filled
//!    in (`${uuid}`, `${netX/mac:hexhyp}`, `${buildarch}` i386, `${platform}` pcbios);
//!    then the `kernel` and `initrd` URLs of that script, streamed and counted against
//!    their Content-Length and the files' sizes (the first machine also checks their
//!    sha512: hashing every copy would cost more CPU than serving it).
//!
//! Where this differs from real machines, so that everything stays on loopback: the UDP
//! servers listen on ephemeral ports instead of 67, 4011 and 69; the DHCP server answers
//! the request's source address (`reply_to_source`) instead of broadcasting to port 68;
//! there is no site DHCP server, so no machine gets an address of its own and all of
//! them share 127.0.0.1 (the TFTP per-address session limit and the boot HTTP per-source
//! connection cap are raised to match) and one HTTP connection pool; iPXE's REQUEST for
//! its lease, which a ProxyDHCP ignores, is not sent. A step that fails fails its
//! machine: the retries are the protocols' own (DHCP and TFTP retransmissions), not
//! iPXE's script-level retry loops.
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, Message, MessageType, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable};
use sha2::{Digest, Sha512};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::dhcp::{DhcpConfig, DhcpCounters, DhcpServer, ModeConfig, RateLimit};
use super::ipxe::{self, BootDecision, BootHttpConfig, BootHttpState, FixedDecider};
use super::service::BOOT_HTTP_LIMITS;
use super::tftp::client::{fetch, ClientOptions};
use super::tftp::{DirSource, TftpConfig, TftpServer};
use crate::environment::{
    AssetKind, Environment, Environments, LocalFileFetcher, AGENT_ENVIRONMENT,
};
use crate::guard::{ConnGuard, ConnLimits, GuardedListener};

/// Machines booting at once when the caller has no better idea.
pub const DEFAULT_CONCURRENCY: usize = 200;
/// The whole run, from starting the servers to the last machine: a storm never hangs.
pub const OVERALL_TIMEOUT: Duration = Duration::from_secs(300);
/// More machines than this is a typo, not a storm.
pub const MAX_CLIENTS: usize = 100_000;
/// The file the ProxyDHCP names for a BIOS PXE ROM; it must be in the iPXE directory.
pub const BIOS_BOOT_FILE: &str = "undionly.kpxe";
/// What iPXE's TFTP asks for: the largest block that fits an Ethernet frame with room
/// for VLAN and tunnel headers.
const TFTP_BLKSIZE: u16 = 1432;
/// DHCP attempts per exchange, the first waiting [`DHCP_FIRST_WAIT`], each next one
/// twice as long (PXE ROMs wait 4, 8, 16, 32 s; shorter here, so a loss shows in the
/// retransmission count rather than as a half-minute tail).
const DHCP_TRIES: u32 = 4;
const DHCP_FIRST_WAIT: Duration = Duration::from_secs(1);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How long the servers get to stop once the machines are done.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Failure messages quoted in the report.
const QUOTED_FAILURES: usize = 5;
/// File descriptors per machine in flight: its DHCP socket, its TFTP socket and the
/// server's transfer socket, and both ends of an HTTP connection.
const FDS_PER_CLIENT: u64 = 5;

/// Runs a boot storm of `clients` machines, at most `concurrency` of them booting at
/// once, against servers for the agent image in `image_dir` (`vmlinuz`,
/// `initramfs.cpio.zst`) and the iPXE binaries in `ipxe_dir` (needs `undionly.kpxe`).
/// Returns the report to print.
pub async fn storm(
    clients: usize,
    image_dir: &Path,
    ipxe_dir: &Path,
    concurrency: usize,
) -> anyhow::Result<String> {
    Ok(run(clients, image_dir, ipxe_dir, concurrency)
        .await?
        .to_string())
}

/// What a storm measured.
#[derive(Debug)]
struct Outcome {
    clients: usize,
    concurrency: usize,
    served: Vec<Served>,
    failures: Vec<Failure>,
    /// Machines still booting when [`OVERALL_TIMEOUT`] ran out.
    unfinished: usize,
    /// From the first machine's start to the last one's end.
    wall: Duration,
    /// Process CPU time (user, system) during the storm, servers and clients together.
    cpu: (Duration, Duration),
    dhcp: DhcpTotals,
    http: HttpTotals,
}

/// One machine that got everything.
#[derive(Debug, Clone, Default)]
struct Served {
    /// First DISCOVER to the initrd's last byte.
    total: Duration,
    dhcp: Duration,
    tftp: Duration,
    scripts: Duration,
    assets: Duration,
    tftp_bytes: u64,
    http_bytes: u64,
    dhcp_retransmissions: u32,
    tftp_duplicates: u64,
}

#[derive(Debug)]
struct Failure {
    client: usize,
    step: Step,
    error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    PxeDhcp,
    Tftp,
    IpxeDhcp,
    Scripts,
    Kernel,
    Initrd,
    /// The machine's task itself (a panic).
    Task,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::PxeDhcp => "PXE ROM DHCP",
            Step::Tftp => "TFTP",
            Step::IpxeDhcp => "iPXE DHCP",
            Step::Scripts => "iPXE scripts",
            Step::Kernel => "kernel",
            Step::Initrd => "initrd",
            Step::Task => "its task",
        })
    }
}

/// The DHCP server's counters at the end.
#[derive(Debug, Default, Clone, Copy)]
struct DhcpTotals {
    received: u64,
    replied: u64,
    rate_limited: u64,
    malformed: u64,
    ignored: u64,
    send_errors: u64,
}

impl DhcpTotals {
    fn of(c: &DhcpCounters) -> Self {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Self {
            received: get(&c.received),
            replied: get(&c.replied),
            rate_limited: get(&c.rate_limited),
            malformed: get(&c.malformed),
            ignored: get(&c.ignored),
            send_errors: get(&c.send_errors),
        }
    }
}

/// Responses of the boot HTTP server, by status.
#[derive(Debug, Default)]
struct HttpCounters {
    success: AtomicU64,
    other: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct HttpTotals {
    success: u64,
    other: u64,
}

async fn run(
    clients: usize,
    image_dir: &Path,
    ipxe_dir: &Path,
    concurrency: usize,
) -> anyhow::Result<Outcome> {
    ensure!(
        (1..=MAX_CLIENTS).contains(&clients),
        "a boot storm needs 1 to {MAX_CLIENTS} clients, not {clients}"
    );
    ensure!(concurrency >= 1, "concurrency must be at least 1");
    let concurrency = concurrency.min(clients);
    let deadline = Instant::now() + OVERALL_TIMEOUT;
    check_nofile(concurrency)?;

    let servers = tokio::time::timeout_at(
        deadline,
        Servers::start(image_dir, ipxe_dir, clients, concurrency),
    )
    .await
    .context("starting the boot servers timed out")??;
    let outcome = storm_clients(&servers.target, clients, concurrency, deadline).await;
    let dhcp = DhcpTotals::of(&servers.dhcp_counters);
    let http = HttpTotals {
        success: servers.http_counters.success.load(Ordering::Relaxed),
        other: servers.http_counters.other.load(Ordering::Relaxed),
    };
    servers.stop().await;
    let clients_outcome = outcome?;
    Ok(Outcome {
        clients,
        concurrency,
        dhcp,
        http,
        ..clients_outcome
    })
}

/// Raises the soft open-files limit to the hard one and checks that the storm fits.
fn check_nofile(concurrency: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let need = FDS_PER_CLIENT * concurrency as u64 + 256;
    ensure!(
        soft >= need,
        "{concurrency} machines in flight need about {need} open files; the limit is {soft} \
         (raise it with `ulimit -n`, or lower the concurrency)"
    );
    Ok(())
}

/// What a simulated machine needs to know that a real one would know by other means
/// (the standard ports) or that it checks what it got against.
struct Target {
    dhcp: SocketAddr,
    pxe: SocketAddr,
    tftp_port: u16,
    http: reqwest::Client,
    boot_file: Vec<u8>,
    kernel: Expected,
    initrd: Expected,
}

struct Expected {
    len: u64,
    sha512: String,
}

struct Servers {
    target: Arc<Target>,
    dhcp_counters: Arc<DhcpCounters>,
    http_counters: Arc<HttpCounters>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Servers {
    async fn start(
        image_dir: &Path,
        ipxe_dir: &Path,
        clients: usize,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let boot_file_path = ipxe_dir.join(BIOS_BOOT_FILE);
        let boot_file = tokio::fs::read(&boot_file_path).await.with_context(|| {
            format!("reading {} (Debian package ipxe)", boot_file_path.display())
        })?;

        let environments = Arc::new(Environments::new());
        let agent = Environment::agent(image_dir, Vec::new())
            .await
            .with_context(|| format!("the agent boot image in {}", image_dir.display()))?;
        let status = environments.apply(agent, &LocalFileFetcher).await;
        ensure!(
            status.ready,
            "the agent Environment is not ready: {}",
            status.reason
        );
        let entry = environments
            .get(AGENT_ENVIRONMENT)
            .context("the agent Environment vanished from the catalog")?;
        let verified = entry
            .verified
            .as_ref()
            .context("the agent Environment has no verified assets")?;
        let expected = |kind| {
            let a = verified.get(kind);
            Expected {
                len: a.fingerprint.len(),
                sha512: a.sha512.clone(),
            }
        };
        let (kernel, initrd) = (expected(AssetKind::Kernel), expected(AssetKind::Initrd));

        let (stop, stop_rx) = watch::channel(false);
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();

        let listener = tokio::net::TcpListener::bind((LOOPBACK, 0))
            .await
            .context("binding boot HTTP on 127.0.0.1")?;
        let http_addr = listener.local_addr()?;
        let http_counters = Arc::new(HttpCounters::default());
        let counters = http_counters.clone();
        let router = ipxe::router(BootHttpState {
            agent_trust: None,
            config: Arc::new(BootHttpConfig::new(
                http_addr
                    .to_string()
                    .parse()
                    .context("the HTTP address as an authority")?,
            )),
            decider: Arc::new(FixedDecider::new(BootDecision::Unknown)),
            environments,
        })
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let counters = counters.clone();
                async move {
                    let resp = next.run(req).await;
                    let c = if resp.status().is_success() {
                        &counters.success
                    } else {
                        &counters.other
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    resp
                }
            },
        ));
        // The production listener, but every machine comes from 127.0.0.1: the per-source
        // cap (meant for one machine) must admit every connection the shared pool may
        // hold, one in use and one idle per machine in flight, plus some closing.
        let cap = BOOT_HTTP_LIMITS.max_connections.max(2 * concurrency + 64);
        let listener = GuardedListener::new(
            listener,
            ConnGuard::new(ConnLimits {
                max_connections: cap,
                max_per_source: cap,
                ..BOOT_HTTP_LIMITS
            }),
        );
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(wait(rx))
                .await
            {
                tracing::error!(error = %e, "storm boot HTTP stopped");
            }
        }));

        let source = Arc::new(
            DirSource::new(ipxe_dir)
                .with_context(|| format!("TFTP root {}", ipxe_dir.display()))?,
        );
        // Every machine comes from 127.0.0.1, so the per-address limit (meant for one
        // machine's few parallel transfers) must admit all machines in flight.
        let sessions = concurrency + 8;
        let tftp = TftpServer::bind(
            TftpConfig {
                listen: SocketAddr::from((LOOPBACK, 0)),
                max_sessions: sessions,
                per_client_sessions: sessions,
                ..TftpConfig::default()
            },
            source,
        )
        .await
        .context("binding TFTP on 127.0.0.1")?;
        let tftp_port = tftp.local_addr().port();
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = tftp.run(wait(rx)).await {
                tracing::error!(error = %e, "storm TFTP stopped");
            }
        }));

        let dhcp_counters = Arc::new(DhcpCounters::default());
        let dhcp = DhcpServer::bind(DhcpConfig {
            listen: LOOPBACK,
            dhcp_port: 0,
            pxe_port: 0,
            http_port: http_addr.port(),
            tftp: true,
            mode: ModeConfig::Proxy,
            // The per-MAC budget stays as in production (each machine sends three
            // requests plus retransmissions); the table of MACs seen per second must
            // hold every machine, or the storm measures the limiter: in a storm all of
            // them may send within one second.
            rate_limit: RateLimit {
                max_macs: clients.max(RateLimit::default().max_macs),
                ..RateLimit::default()
            },
            reply_to_source: true,
            counters: dhcp_counters.clone(),
            ..DhcpConfig::default()
        })
        .await
        .context("binding DHCP on 127.0.0.1")?;
        let (dhcp_addr, pxe_addr) = dhcp.local_addrs();
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = dhcp.run(wait(rx)).await {
                tracing::error!(error = %e, "storm DHCP stopped");
            }
        }));

        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(concurrency)
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        tracing::info!(
            dhcp = %dhcp_addr, pxe = %pxe_addr, tftp_port, http = %http_addr,
            "boot storm servers listening"
        );
        Ok(Self {
            target: Arc::new(Target {
                dhcp: dhcp_addr,
                pxe: pxe_addr,
                tftp_port,
                http,
                boot_file,
                kernel,
                initrd,
            }),
            dhcp_counters,
            http_counters,
            stop,
            tasks,
        })
    }

    async fn stop(self) {
        // The HTTP server's graceful shutdown waits for open connections: the client's
        // pool must be gone first.
        drop(self.target);
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a boot storm server did not stop in time; aborted");
                task.abort();
            }
        }
    }
}

async fn storm_clients(
    target: &Arc<Target>,
    clients: usize,
    concurrency: usize,
    deadline: Instant,
) -> anyhow::Result<Outcome> {
    let cpu_before = cpu_times()?;
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    // To name the machine whose task panicked.
    let mut machine_of = HashMap::with_capacity(clients);
    for i in 0..clients {
        let slots = slots.clone();
        let target = target.clone();
        let span = tracing::debug_span!("storm_client", mac = %client_mac(i).hexhyp());
        let handle = tasks.spawn(
            async move {
                // FIFO: machines power on in order as earlier ones finish.
                let _slot = slots.acquire_owned().await;
                let result = boot_one(i, &target).await;
                (started.elapsed(), result)
            }
            .instrument(span),
        );
        machine_of.insert(handle.id(), i);
    }

    let mut served = Vec::with_capacity(clients);
    let mut failures = Vec::new();
    let mut wall = Duration::ZERO;
    let mut next_progress = clients.div_ceil(10);
    let mut unfinished = 0;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok((at, result)))) => {
                wall = wall.max(at);
                match result {
                    Ok(s) => served.push(s),
                    Err(f) => failures.push(f),
                }
            }
            Ok(Some(Err(e))) => failures.push(Failure {
                client: machine_of.get(&e.id()).copied().unwrap_or(usize::MAX),
                step: Step::Task,
                error: e.to_string(),
            }),
            Err(_) => {
                unfinished = tasks.len();
                tracing::warn!(
                    unfinished,
                    "boot storm timed out after {} s",
                    OVERALL_TIMEOUT.as_secs()
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                wall = started.elapsed();
                break;
            }
        }
        let done = served.len() + failures.len();
        if done >= next_progress {
            tracing::info!(
                done,
                clients,
                served = served.len(),
                seconds = started.elapsed().as_secs(),
                "boot storm progress"
            );
            next_progress += clients.div_ceil(10);
        }
    }
    let cpu_after = cpu_times()?;
    failures.sort_by_key(|f| f.client);
    Ok(Outcome {
        clients,
        concurrency,
        served,
        failures,
        unfinished,
        wall,
        cpu: (
            cpu_after.0.saturating_sub(cpu_before.0),
            cpu_after.1.saturating_sub(cpu_before.1),
        ),
        dhcp: DhcpTotals::default(),
        http: HttpTotals::default(),
    })
}

/// User and system CPU time of this process so far.
fn cpu_times() -> anyhow::Result<(Duration, Duration)> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    Ok((d(u.user_time()), d(u.system_time())))
}

/// A locally administered unicast MAC, unique per machine.
fn client_mac(i: usize) -> Mac {
    let b = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    Mac([0x02, 0x5d, b[0], b[1], b[2], b[3]])
}

#[derive(Debug, Clone, Copy)]
struct Mac([u8; 6]);

impl Mac {
    /// As iPXE's `${netX/mac:hexhyp}` expands it.
    fn hexhyp(self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// One machine, from power-on to its initrd's last byte.
async fn boot_one(i: usize, t: &Target) -> Result<Served, Failure> {
    let fail = |step| {
        move |e: anyhow::Error| Failure {
            client: i,
            step,
            error: format!("{e:#}"),
        }
    };
    let start = Instant::now();
    let mac = client_mac(i);
    let uuid = uuid::Uuid::new_v4();
    let mut s = Served::default();

    let sock = UdpSocket::bind((LOOPBACK, 0))
        .await
        .context("binding the client's DHCP socket")
        .map_err(fail(Step::PxeDhcp))?;
    let (next_server, file) = pxe_rom_dhcp(&sock, t, mac, uuid, &mut s.dhcp_retransmissions)
        .await
        .map_err(fail(Step::PxeDhcp))?;
    s.dhcp = start.elapsed();

    let t0 = Instant::now();
    let got = tftp_boot_file(t, next_server, &file)
        .await
        .map_err(fail(Step::Tftp))?;
    s.tftp = t0.elapsed();
    s.tftp_bytes = got.0;
    s.tftp_duplicates = got.1;

    let t0 = Instant::now();
    let script_url = ipxe_dhcp(&sock, t, mac, uuid, &mut s.dhcp_retransmissions)
        .await
        .map_err(fail(Step::IpxeDhcp))?;
    drop(sock);
    s.dhcp += t0.elapsed();

    let t0 = Instant::now();
    let (kernel_url, initrd_url) = scripts(&t.http, &script_url, mac, uuid)
        .await
        .map_err(fail(Step::Scripts))?;
    s.scripts = t0.elapsed();

    // The first machine also checks what it got, not only how much.
    let check = i == 0;
    let t0 = Instant::now();
    s.http_bytes += download(&t.http, &kernel_url, &t.kernel, check)
        .await
        .map_err(fail(Step::Kernel))?;
    s.http_bytes += download(&t.http, &initrd_url, &t.initrd, check)
        .await
        .map_err(fail(Step::Initrd))?;
    s.assets = t0.elapsed();
    s.total = start.elapsed();
    tracing::debug!(seconds = s.total.as_secs_f64(), "machine booted");
    Ok(s)
}

/// What the PXE ROM does: DISCOVER for the ProxyDHCP OFFER, then REQUEST on the PXE
/// port for the ACK. Returns the ACK's next-server and boot file.
async fn pxe_rom_dhcp(
    sock: &UdpSocket,
    t: &Target,
    mac: Mac,
    uuid: uuid::Uuid,
    retransmissions: &mut u32,
) -> anyhow::Result<(Ipv4Addr, String)> {
    let xid = rand::random();
    let discover = boot_client_message(MessageType::Discover, xid, mac, uuid, false);
    let offer = exchange(sock, t.dhcp, &discover, MessageType::Offer, retransmissions).await?;
    let server_id = match offer.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ => bail!("the OFFER has no server identifier"),
    };
    let mut request = boot_client_message(MessageType::Request, xid, mac, uuid, false);
    // The address the site's DHCP server would have leased.
    request.set_ciaddr(LOOPBACK);
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(server_id));
    let ack = exchange(sock, t.pxe, &request, MessageType::Ack, retransmissions).await?;
    let file = boot_file(&ack)?;
    ensure!(
        ack.siaddr() == LOOPBACK,
        "the ACK names next-server {}, not 127.0.0.1",
        ack.siaddr()
    );
    Ok((ack.siaddr(), file))
}

/// The boot file over TFTP, compared with the file on disk. Returns bytes received and
/// blocks received twice.
async fn tftp_boot_file(
    t: &Target,
    next_server: Ipv4Addr,
    file: &str,
) -> anyhow::Result<(u64, u64)> {
    ensure!(
        file == BIOS_BOOT_FILE,
        "the ACK names {file:?}, not {BIOS_BOOT_FILE}"
    );
    let opts = ClientOptions {
        blksize: Some(TFTP_BLKSIZE),
        tsize: true,
        timeout: Duration::from_secs(1),
        retries: 5,
        keep_data: true,
        ..ClientOptions::default()
    };
    let got = fetch(SocketAddr::from((next_server, t.tftp_port)), file, &opts).await?;
    let want = t.boot_file.len() as u64;
    ensure!(
        got.tsize == Some(want),
        "tsize {:?}, the file is {want} bytes",
        got.tsize
    );
    ensure!(
        got.data == t.boot_file,
        "got {} bytes that differ from the {want}-byte file",
        got.bytes
    );
    Ok((got.bytes, got.duplicates))
}

/// What iPXE does once loaded: DISCOVER again as iPXE; the OFFER names the script URL.
async fn ipxe_dhcp(
    sock: &UdpSocket,
    t: &Target,
    mac: Mac,
    uuid: uuid::Uuid,
    retransmissions: &mut u32,
) -> anyhow::Result<String> {
    let discover = boot_client_message(MessageType::Discover, rand::random(), mac, uuid, true);
    let offer = exchange(sock, t.dhcp, &discover, MessageType::Offer, retransmissions).await?;
    let url = boot_file(&offer)?;
    ensure_loopback(&url)?;
    Ok(url)
}

/// `/boot.ipxe`, then the machine script it chains to; returns the kernel and initrd
/// URLs of that script.
async fn scripts(
    http: &reqwest::Client,
    boot_url: &str,
    mac: Mac,
    uuid: uuid::Uuid,
) -> anyhow::Result<(String, String)> {
    let boot = get_text(http, boot_url).await?;
    let chain = script_url(&boot, "chain").context("/boot.ipxe has no chain URL")?;
    let machine_url = expand(
        chain,
        &[
            ("uuid", &uuid.hyphenated().to_string()),
            ("netX/mac:hexhyp", &mac.hexhyp()),
            ("buildarch", "i386"),
            ("platform", "pcbios"),
        ],
    )?;
    ensure_loopback(&machine_url)?;
    let machine = get_text(http, &machine_url).await?;
    let kernel = script_url(&machine, "kernel")
        .with_context(|| format!("the machine script has no kernel line:\n{machine}"))?;
    let initrd = script_url(&machine, "initrd")
        .with_context(|| format!("the machine script has no initrd line:\n{machine}"))?;
    ensure_loopback(kernel)?;
    ensure_loopback(initrd)?;
    Ok((kernel.to_string(), initrd.to_string()))
}

async fn get_text(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    ensure!(status.is_success(), "GET {url}: {status}");
    resp.text()
        .await
        .with_context(|| format!("GET {url}: body"))
}

/// Streams `url` to the end; checks its length (and, with `check`, its sha512).
async fn download(
    http: &reqwest::Client,
    url: &str,
    want: &Expected,
    check: bool,
) -> anyhow::Result<u64> {
    let mut resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    ensure!(status.is_success(), "GET {url}: {status}");
    let declared = resp.content_length();
    let mut hasher = check.then(Sha512::new);
    let mut got = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("GET {url}: body after {got} bytes"))?
    {
        got += chunk.len() as u64;
        if let Some(h) = &mut hasher {
            h.update(&chunk);
        }
    }
    ensure!(
        declared == Some(want.len) && got == want.len,
        "GET {url}: {got} bytes (Content-Length {declared:?}), the file is {}",
        want.len
    );
    if let Some(h) = hasher {
        let sha512: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        ensure!(sha512 == want.sha512, "GET {url}: content differs");
    }
    Ok(got)
}

/// A BIOS PXE ROM's request (vendor class, arch 0, UNDI, GUID); as iPXE also the user
/// class and iPXE's feature list (HTTP and TFTP) in option 175.
fn boot_client_message(
    msg_type: MessageType,
    xid: u32,
    mac: Mac,
    uuid: uuid::Uuid,
    ipxe: bool,
) -> Message {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, z, z, z, z, &mac.0);
    m.set_flags(Flags::default().set_broadcast());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(msg_type));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(0)));
    opts.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    let mut guid = vec![0];
    guid.extend_from_slice(uuid.as_bytes());
    opts.insert(DhcpOption::ClientMachineIdentifier(guid));
    if ipxe {
        opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![0x13, 1, 1, 0x15, 1, 1],
        )));
    }
    m
}

/// Sends `req` to `server` until a reply of type `want` for it comes back.
async fn exchange(
    sock: &UdpSocket,
    server: SocketAddr,
    req: &Message,
    want: MessageType,
    retransmissions: &mut u32,
) -> anyhow::Result<Message> {
    let bytes = req.to_vec().context("encoding the DHCP request")?;
    let mut buf = vec![0u8; 1500];
    let mut wait = DHCP_FIRST_WAIT;
    for attempt in 0..DHCP_TRIES {
        if attempt > 0 {
            *retransmissions += 1;
        }
        sock.send_to(&bytes, server)
            .await
            .with_context(|| format!("sending to {server}"))?;
        let until = Instant::now() + wait;
        while let Ok(r) = tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
            let (n, from) = r.context("receiving a DHCP reply")?;
            if from != server {
                continue;
            }
            let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if m.xid() == req.xid() && m.chaddr() == req.chaddr() {
                ensure!(
                    m.opts().msg_type() == Some(want),
                    "asked for a {want:?}, got {:?}",
                    m.opts().msg_type()
                );
                return Ok(m);
            }
        }
        wait *= 2;
    }
    bail!("no {want:?} from {server} after {DHCP_TRIES} tries")
}

/// Option 67, else the `file` header field.
fn boot_file(m: &Message) -> anyhow::Result<String> {
    let raw = match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => b.as_slice(),
        _ => m.fname().context("the reply names no boot file")?,
    };
    String::from_utf8(raw.to_vec()).context("the boot file name is not UTF-8")
}

/// The first `http://` argument of the first line of `script` running `command`.
fn script_url<'a>(script: &'a str, command: &str) -> Option<&'a str> {
    script.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some(command) {
            return None;
        }
        words.find(|w| w.starts_with("http://"))
    })
}

/// Fills in iPXE's `${name}` settings; a setting not in `vars` is an error (iPXE
/// would expand it to nothing, which is never what the server meant).
fn expand(template: &str, vars: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .with_context(|| format!("unterminated setting in {template:?}"))?;
        let name = &after[..end];
        let value = vars
            .iter()
            .find(|(n, _)| *n == name)
            .with_context(|| format!("unknown iPXE setting ${{{name}}} in {template:?}"))?;
        out.push_str(value.1);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The storm only ever talks to 127.0.0.1, whatever a server answers.
fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?} is not an http:// URL"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    ensure!(host == "127.0.0.1", "{url} is not on 127.0.0.1");
    Ok(())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

impl Outcome {
    fn tftp_bytes(&self) -> u64 {
        self.served.iter().map(|s| s.tftp_bytes).sum()
    }

    fn http_bytes(&self) -> u64 {
        self.served.iter().map(|s| s.http_bytes).sum()
    }

    fn spread(&self, of: impl Fn(&Served) -> Duration) -> String {
        let mut v: Vec<Duration> = self.served.iter().map(of).collect();
        v.sort();
        format!(
            "p50 {}, p99 {}, max {}",
            secs(percentile(&v, 50.0)),
            secs(percentile(&v, 99.0)),
            secs(v.last().copied().unwrap_or_default())
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let served = self.served.len();
        let wall = self.wall.as_secs_f64().max(1e-9);
        let (tftp, http) = (self.tftp_bytes(), self.http_bytes());
        let moved = tftp + http;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "boot storm: {} simulated BIOS machines, at most {} booting at once, \
             ProxyDHCP + TFTP + HTTP on 127.0.0.1 (GB = 10^9 bytes)",
            self.clients, self.concurrency
        );
        let _ = writeln!(
            out,
            "  served:   {served}/{} in {:.2} s   failed: {}   unfinished at the {} s limit: {}",
            self.clients,
            self.wall.as_secs_f64(),
            self.failures.len(),
            OVERALL_TIMEOUT.as_secs(),
            self.unfinished
        );
        if served > 0 {
            let _ = writeln!(
                out,
                "  per machine, first DISCOVER to last initrd byte: {}",
                self.spread(|s| s.total)
            );
            let _ = writeln!(out, "    DHCP (3 exchanges):  {}", self.spread(|s| s.dhcp));
            let _ = writeln!(out, "    TFTP boot file:      {}", self.spread(|s| s.tftp));
            let _ = writeln!(
                out,
                "    iPXE scripts:        {}",
                self.spread(|s| s.scripts)
            );
            let _ = writeln!(
                out,
                "    kernel + initrd:     {}",
                self.spread(|s| s.assets)
            );
        }
        let _ = writeln!(
            out,
            "  moved:    {:.2} GB ({:.1} MB TFTP, {:.2} GB HTTP), {:.0} MB/s",
            moved as f64 / 1e9,
            tftp as f64 / 1e6,
            http as f64 / 1e9,
            moved as f64 / 1e6 / wall
        );
        let _ = writeln!(
            out,
            "  resent:   {} DHCP requests, {} TFTP blocks received twice",
            self.served
                .iter()
                .map(|s| u64::from(s.dhcp_retransmissions))
                .sum::<u64>(),
            self.served.iter().map(|s| s.tftp_duplicates).sum::<u64>()
        );
        let d = &self.dhcp;
        let _ = writeln!(
            out,
            "  DHCP server: received {}, replied {}, rate-limited {}, malformed {}, \
             ignored {}, send errors {}",
            d.received, d.replied, d.rate_limited, d.malformed, d.ignored, d.send_errors
        );
        let _ = writeln!(
            out,
            "  HTTP server: {} successful responses, {} others",
            self.http.success, self.http.other
        );
        let (user, sys) = self.cpu;
        let _ = writeln!(
            out,
            "  CPU (servers and clients, one process): {:.1} s user + {:.1} s system \
             = {:.2} cores busy on average",
            user.as_secs_f64(),
            sys.as_secs_f64(),
            (user + sys).as_secs_f64() / wall
        );
        for fail in self.failures.iter().take(QUOTED_FAILURES) {
            let _ = writeln!(
                out,
                "  failure: machine {} at {}: {}",
                fail.client, fail.step, fail.error
            );
        }
        if self.failures.len() > QUOTED_FAILURES {
            let _ = writeln!(
                out,
                "  ... and {} more failures",
                self.failures.len() - QUOTED_FAILURES
            );
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::{AGENT_INITRD_FILE, AGENT_KERNEL_FILE};

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn storm_smoke() {
        let image = tempfile::tempdir().unwrap();
        std::fs::write(image.path().join(AGENT_KERNEL_FILE), bytes(300_001, 1)).unwrap();
        std::fs::write(image.path().join(AGENT_INITRD_FILE), bytes(200_000, 2)).unwrap();
        let ipxe = tempfile::tempdir().unwrap();
        // Not a multiple of the block size: the last block is short.
        std::fs::write(ipxe.path().join(BIOS_BOOT_FILE), bytes(5_000, 3)).unwrap();

        let clients = 5;
        let outcome = run(clients, image.path(), ipxe.path(), 2).await.unwrap();
        let report = outcome.to_string();
        assert!(
            outcome.failures.is_empty() && outcome.unfinished == 0,
            "{report}"
        );
        assert_eq!(outcome.served.len(), clients, "{report}");
        assert_eq!(outcome.tftp_bytes(), clients as u64 * 5_000);
        assert_eq!(outcome.http_bytes(), clients as u64 * 500_001);
        assert_eq!(outcome.dhcp.replied, 3 * clients as u64, "{report}");
        assert_eq!(outcome.dhcp.rate_limited, 0);
        assert_eq!(outcome.http.success, 4 * clients as u64, "{report}");
        assert_eq!(outcome.http.other, 0);
        assert!(report.contains("served:   5/5 in"), "{report}");
        eprintln!("{report}");
    }

    #[tokio::test]
    async fn a_missing_boot_file_is_reported_before_any_machine_starts() {
        let empty = tempfile::tempdir().unwrap();
        let err = run(1, empty.path(), empty.path(), 1).await.unwrap_err();
        assert!(format!("{err:#}").contains(BIOS_BOOT_FILE), "{err:#}");
    }

    #[test]
    fn the_scripts_the_server_writes_are_followed() {
        let server: ipxe::Authority = "127.0.0.1:8081".parse().unwrap();
        let boot = ipxe::boot_script(&server);
        let chain = script_url(&boot, "chain").unwrap();
        let url = expand(
            chain,
            &[
                ("uuid", "u"),
                ("netX/mac:hexhyp", "02-5d-00-00-00-01"),
                ("buildarch", "i386"),
                ("platform", "pcbios"),
            ],
        )
        .unwrap();
        assert_eq!(
            url,
            "http://127.0.0.1:8081/ipxe?uuid=u&mac=02-5d-00-00-00-01&arch=i386&platform=pcbios"
        );
        let args = vec!["console=ttyS0".to_string()];
        let script = ipxe::kernel_script(&ipxe::KernelBoot {
            server: &server,
            env: "agent",
            purpose: ipxe::Purpose::Agent,
            args: &args,
            platform: Some(ipxe::Platform::Pcbios),
        });
        assert_eq!(
            script_url(&script, "kernel"),
            Some("http://127.0.0.1:8081/assets/agent/kernel")
        );
        assert_eq!(
            script_url(&script, "initrd"),
            Some("http://127.0.0.1:8081/assets/agent/initrd")
        );
        assert!(expand("${nope}", &[]).is_err());
    }

    #[test]
    fn only_loopback_urls_are_followed() {
        assert!(ensure_loopback("http://127.0.0.1:80/boot.ipxe").is_ok());
        assert!(ensure_loopback("http://127.0.0.1/x?y=1").is_ok());
        assert!(ensure_loopback("http://10.0.0.1:80/boot.ipxe").is_err());
        assert!(ensure_loopback("http://127.0.0.1.example:80/").is_err());
        assert!(ensure_loopback("https://127.0.0.1/").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn machines_get_distinct_macs() {
        assert_eq!(client_mac(1).hexhyp(), "02-5d-00-00-00-01");
        assert_ne!(client_mac(256).0, client_mac(1).0);
    }
}
