//! `siderite bench flood`: legitimate agents register while hostile clients attack the
//! same server process on loopback, and how much slower they get.
//!
//! Every client takes its own source address out of 127.0.0.0/8 (all loopback), so the
//! server sees many machines, as in a rack:
//! - legitimate agents: 127.1.x.y, one each; TLS, register with the join token, open the
//!   session, wait for its first command (what a booting agent does);
//! - slow-loris: 127.2.0.s; as many TCP connections per source as the server allows, each
//!   dribbling one byte of a TLS ClientHello per second and never finishing it;
//!   reconnecting whenever the server drops one;
//! - flood: 127.3.0.s; tight loops of full TLS connections sending registrations with no
//!   join token, a wrong one, and a 1 MiB junk body, and of bare TCP connects.
//!
//! The same numbers of legitimate agents register before the attack and during it; the
//! report gives both latency distributions and what the attackers managed.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use siderite::proto::agent::v1::{agent_service_client::AgentServiceClient, RegisterRequest};
use tokio::io::AsyncWriteExt;

use crate::bench::{access_of, Access, ServerProcess};

#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// Legitimate agents in each phase (before, during).
    pub agents: u32,
    /// How many of them at once.
    pub concurrency: usize,
    /// Source addresses running slow-loris connections (each up to `loris_per_source`).
    pub loris_sources: u32,
    pub loris_per_source: u32,
    /// Source addresses flooding, and loops per source.
    pub flood_sources: u32,
    pub flood_loops: u32,
    /// Extra `serve` arguments (limits).
    pub serve_args: Vec<String>,
}

impl Default for FloodConfig {
    fn default() -> Self {
        Self {
            agents: 300,
            concurrency: 16,
            loris_sources: 8,
            loris_per_source: 80,
            flood_sources: 8,
            flood_loops: 4,
            serve_args: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub ok: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    pub before: Phase,
    pub during: Phase,
    /// Slow-loris TCP connections opened, and how many the server closed at once
    /// (refused by a limit) or after a while (the handshake deadline).
    pub loris_opened: u64,
    pub loris_closed_fast: u64,
    pub loris_closed_late: u64,
    /// Flood requests sent, and how many the server answered with anything but an error.
    pub flood_requests: u64,
    pub flood_accepted: u64,
    pub attack_secs: f64,
    /// Servers registered by the attack (must be 0).
    pub servers_after: usize,
    pub server_rss: u64,
}

impl FloodReport {
    /// Servers that exist beyond the legitimate agents' (must be 0).
    pub fn attack_created(&self) -> usize {
        self.servers_after
            .saturating_sub(self.before.ok + self.during.ok)
    }
}

impl std::fmt::Display for FloodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "without attack: {} agents registered ({} failed), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.before.ok,
            self.before.failed,
            ms(self.before.p50),
            ms(self.before.p99),
            ms(self.before.max)
        )?;
        writeln!(
            f,
            "under attack:   {} agents registered ({} failed), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.during.ok,
            self.during.failed,
            ms(self.during.p50),
            ms(self.during.p99),
            ms(self.during.max)
        )?;
        writeln!(
            f,
            "attack for {:.1} s: slow-loris {} connections ({} closed at once by a limit, {} at the handshake deadline); flood {} requests ({} answered OK); servers the attack created: {}; server RSS {} MiB",
            self.attack_secs,
            self.loris_opened,
            self.loris_closed_fast,
            self.loris_closed_late,
            self.flood_requests,
            self.flood_accepted,
            self.attack_created(),
            self.server_rss >> 20
        )?;
        if let Some(e) = self
            .before
            .first_error
            .as_ref()
            .or(self.during.first_error.as_ref())
        {
            writeln!(f, "first failure: {e}")?;
        }
        Ok(())
    }
}

fn src(net: u8, i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        net,
        (i / 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One legitimate agent: TLS from its own address, register, session, first command.
async fn agent(access: &Access, from: IpAddr, seed: u32, i: u32) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let (_id, _tx, mut inbound) =
        crate::bench::open_session_from(access, Some(from), crate::fake::hardware(seed, i)).await?;
    inbound.message().await?.context("no first command")?;
    Ok(t.elapsed())
}

async fn phase(access: &Access, cfg: &FloodConfig, seed: u32, first: u32) -> Phase {
    let sem = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = Vec::new();
    for n in 0..cfg.agents {
        let i = first + n;
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let access = access.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            tokio::time::timeout(Duration::from_secs(60), agent(&access, src(1, i), seed, i))
                .await
                .map_err(|_| anyhow::anyhow!("no session within 60 s"))?
        }));
    }
    let mut lat = Vec::new();
    let mut out = Phase::default();
    for t in tasks {
        match t.await {
            Ok(Ok(d)) => lat.push(d),
            Ok(Err(e)) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    lat.sort();
    out.ok = lat.len();
    out.p50 = percentile(&lat, 0.5);
    out.p99 = percentile(&lat, 0.99);
    out.max = lat.last().copied().unwrap_or_default();
    out
}

#[derive(Default)]
struct Counters {
    loris_opened: AtomicU64,
    loris_fast: AtomicU64,
    loris_late: AtomicU64,
    flood_requests: AtomicU64,
    flood_accepted: AtomicU64,
}

/// Keeps one slow-loris connection from `from` open as long as the server lets it.
async fn loris(target: SocketAddr, from: IpAddr, stop: Arc<AtomicBool>, c: Arc<Counters>) {
    // The first bytes of a TLS record carrying a ClientHello, sent one per second.
    const HELLO: [u8; 9] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    while !stop.load(Ordering::Relaxed) {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            return;
        };
        if socket.bind(SocketAddr::new(from, 0)).is_err() {
            return;
        }
        let Ok(mut s) = socket.connect(target).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        c.loris_opened.fetch_add(1, Ordering::Relaxed);
        let opened = Instant::now();
        let mut i = 0;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let byte = [HELLO[i % HELLO.len()]];
            i += 1;
            let closed = s.write_all(&byte).await.is_err() || {
                // A closed connection shows as readable EOF.
                let mut probe = [0u8; 1];
                matches!(
                    tokio::time::timeout(Duration::from_secs(1), s.peek(&mut probe)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                )
            };
            if closed {
                if opened.elapsed() < Duration::from_millis(500) {
                    c.loris_fast.fetch_add(1, Ordering::Relaxed);
                    // Refused by a limit: do not spin.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                } else {
                    c.loris_late.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
}

/// Floods from `from`: junk registrations over TLS, and bare connects.
async fn flood_loop(access: Access, from: IpAddr, n: u32, stop: Arc<AtomicBool>, c: Arc<Counters>) {
    let junk = vec![0x41u8; 1 << 20];
    let target: SocketAddr = match access.addr.parse() {
        Ok(t) => t,
        Err(_) => return,
    };
    while !stop.load(Ordering::Relaxed) {
        // Bare connects, closed at once.
        for _ in 0..4 {
            if let Ok(socket) = tokio::net::TcpSocket::new_v4() {
                if socket.bind(SocketAddr::new(from, 0)).is_ok() {
                    let _ = socket.connect(target).await;
                }
            }
        }
        let Ok(ch) = siderite::tls::channel_from(
            Some(from),
            &access.addr,
            access.pin,
            Duration::from_secs(5),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut client = AgentServiceClient::new(ch);
        for k in 0..16u32 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let join_token = match k % 3 {
                0 => String::new(),
                1 => "aaaaaa.0123456789abcdef0123456789abcdef".into(),
                _ => String::from_utf8_lossy(&junk).into_owned(),
            };
            let r = client
                .register(RegisterRequest {
                    boot_id: format!("flood-{n}-{k}"),
                    agent_version: "flood".into(),
                    hardware: Some(crate::fake::hardware(0xf100d, n * 16 + k)),
                    server_id: String::new(),
                    join_token,
                })
                .await;
            c.flood_requests.fetch_add(1, Ordering::Relaxed);
            if r.is_ok() {
                c.flood_accepted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs the bench against a fresh `serve` process of `exe` (the `siderite` binary).
pub async fn run(exe: PathBuf, cfg: FloodConfig) -> anyhow::Result<FloodReport> {
    crate::bench::raise_nofile();
    let mut args: Vec<&str> = vec!["--http-listen", "127.0.0.1:0", "--auto-accept", "none"];
    args.extend(cfg.serve_args.iter().map(String::as_str));
    let server = ServerProcess::start(exe, &args).await?;
    let access = access_of(std::slice::from_ref(&server))
        .await?
        .pop()
        .context("access")?;
    let seed: u32 = rand::random();
    let mut report = FloodReport {
        before: phase(&access, &cfg, seed, 0).await,
        ..Default::default()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let target: SocketAddr = access.addr.parse().context("server address")?;
    let mut attackers = Vec::new();
    for s in 0..cfg.loris_sources {
        for _ in 0..cfg.loris_per_source {
            attackers.push(tokio::spawn(loris(
                target,
                src(2, s),
                stop.clone(),
                counters.clone(),
            )));
        }
    }
    for s in 0..cfg.flood_sources {
        for l in 0..cfg.flood_loops {
            attackers.push(tokio::spawn(flood_loop(
                access.clone(),
                src(3, s),
                s * 1000 + l,
                stop.clone(),
                counters.clone(),
            )));
        }
    }
    let attack_start = Instant::now();
    // Let the attack build up before the agents come.
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.during = phase(&access, &cfg, seed, cfg.agents).await;
    report.attack_secs = attack_start.elapsed().as_secs_f64();
    report.server_rss = server.rss_bytes().unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    report.loris_opened = counters.loris_opened.load(Ordering::Relaxed);
    report.loris_closed_fast = counters.loris_fast.load(Ordering::Relaxed);
    report.loris_closed_late = counters.loris_late.load(Ordering::Relaxed);
    report.flood_requests = counters.flood_requests.load(Ordering::Relaxed);
    report.flood_accepted = counters.flood_accepted.load(Ordering::Relaxed);
    report.servers_after = access
        .admin()
        .await?
        .list_servers(siderite::proto::admin::v1::ListServersRequest {})
        .await?
        .into_inner()
        .servers
        .len();
    Ok(report)
}
