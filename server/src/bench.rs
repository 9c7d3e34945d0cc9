//! `siderite bench`: simulated agents over loopback against a server process.
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use siderite::proto::agent::v1::{
    agent_message, agent_service_client::AgentServiceClient, AgentMessage, Hello, RegisterRequest,
};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

/// A `siderite serve` child process on a fresh data directory and a loopback port.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl ServerProcess {
    pub async fn start(exe: PathBuf, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr_file = dir.path().join("addr");
        let child = tokio::process::Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--addr-file")
            .arg(&addr_file)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting siderite serve")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.is_empty() {
                    return Ok(Self {
                        child,
                        addr: a,
                        dir,
                    });
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "server did not start within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.child.id()?)
    }
}

/// Resident set size of a process, from /proc.
pub fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

pub async fn register(
    agents: u32,
    concurrency: usize,
    connections: usize,
) -> anyhow::Result<String> {
    raise_nofile();
    let server = ServerProcess::start(std::env::current_exe()?, &[]).await?;
    let seed: u32 = rand::random();
    let mut chans = Vec::new();
    for _ in 0..connections.max(1) {
        chans.push(channel(&server.addr).await?);
    }
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(agents as usize);
    for i in 0..agents {
        let permit = sem.clone().acquire_owned().await?;
        let ch = chans[i as usize % chans.len()].clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t = Instant::now();
            let req = RegisterRequest {
                boot_id: uuid::Uuid::new_v4().to_string(),
                agent_version: "bench".into(),
                hardware: Some(crate::fake::hardware(seed, i)),
                server_id: String::new(),
            };
            AgentServiceClient::new(ch)
                .register(req)
                .await
                .map(|_| t.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok(d) => lat.push(d),
            Err(_) => failed += 1,
        }
    }
    let elapsed = start.elapsed();
    lat.sort();
    let rss = server.rss_bytes().unwrap_or(0);
    Ok(format!(
        "bench register: {agents} agents, concurrency {concurrency}, {connections} connections, embedded store\n\
         elapsed {:.2} s, {:.0} registrations/s, p50 {:.2} ms, p99 {:.2} ms, failed {failed}, server RSS {} MiB\n",
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        rss >> 20
    ))
}

pub async fn sessions(agents: u32, concurrency: usize) -> anyhow::Result<String> {
    raise_nofile();
    let server = ServerProcess::start(std::env::current_exe()?, &[]).await?;
    let idle_rss = server.rss_bytes().unwrap_or(0);
    let seed: u32 = rand::random();
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..agents {
        let permit = sem.clone().acquire_owned().await?;
        let addr = server.addr.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let ch = channel(&addr).await?;
            let boot_id = uuid::Uuid::new_v4().to_string();
            let resp = AgentServiceClient::new(ch.clone())
                .register(RegisterRequest {
                    boot_id: boot_id.clone(),
                    agent_version: "bench".into(),
                    hardware: Some(crate::fake::hardware(seed, i)),
                    server_id: String::new(),
                })
                .await?
                .into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Hello(Hello {
                    server_id: resp.server_id,
                    boot_id,
                    session_token: resp.session_token,
                })),
            })
            .await?;
            let mut inbound = AgentServiceClient::new(ch)
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            // The first command proves the session is established server-side.
            inbound.message().await?.context("no first command")?;
            anyhow::Ok((tx, inbound))
        }));
    }
    let mut held = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Ok(h) => held.push(h),
            Err(_) => failed += 1,
        }
    }
    let opened = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = server.rss_bytes().unwrap_or(0);
    let n = held.len().max(1) as u64;
    Ok(format!(
        "bench sessions: {} sessions open ({failed} failed) in {:.1} s; server RSS {} MiB (idle {} MiB, {:.1} KiB per session)\n",
        held.len(),
        opened.as_secs_f64(),
        rss >> 20,
        idle_rss >> 20,
        (rss.saturating_sub(idle_rss)) as f64 / n as f64 / 1024.0
    ))
}
