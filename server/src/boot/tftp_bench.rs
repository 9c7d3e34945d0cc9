//! `siderite bench tftp`: our TFTP server and dnsmasq's serve the same file to K
//! concurrent clients over loopback; throughput of each and their ratio.
//!
//! dnsmasq 2.90 has no option for the TFTP port: it always listens on 69, so it gets
//! a loopback address of its own (a random 127.x.y.z) and the bench must run as root.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::tftp::client::{fetch, ClientOptions};
use super::tftp::{DirSource, TftpConfig, TftpServer};

pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";
const FILE: &str = "bench.img";
const BLKSIZE: u16 = 1468;
const ROUNDS: usize = 5;

/// Runs the comparison and returns the report to print.
pub async fn bench(k: usize, file_mb: usize) -> anyhow::Result<String> {
    if k == 0 || file_mb == 0 {
        bail!("the TFTP bench needs at least one client and a file of at least 1 MiB");
    }
    if !Path::new(DNSMASQ).exists() {
        bail!("dnsmasq not found at {DNSMASQ}: the TFTP bench compares against it (Debian package dnsmasq-base)");
    }
    let dir = tempfile::tempdir()?;
    let content = bench_file(file_mb * 1024 * 1024);
    std::fs::write(dir.path().join(FILE), &content)?;
    // dnsmasq drops to `nobody` and must still reach the file.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(
            dir.path().join(FILE),
            std::fs::Permissions::from_mode(0o644),
        )?;
    }
    let content = Arc::new(content);

    // dnsmasq serves from one thread; the headline gives ours one runtime worker too.
    // The two-worker line is how `siderite serve` runs on a two-core machine.
    let ours_1 = OurServer::start(dir.path(), k, 1).await?;
    let ours_2 = OurServer::start(dir.path(), k, 2).await?;
    let dnsmasq = Dnsmasq::start(dir.path(), k).await?;
    let runs = [
        (dnsmasq.version.clone(), dnsmasq.addr, 1u16),
        ("siderite, 1 worker".to_string(), ours_1.addr, 1),
        ("siderite, 1 worker".to_string(), ours_1.addr, 8),
        ("siderite, 2 workers".to_string(), ours_2.addr, 1),
    ];

    // Interleaved rounds, so a busy moment on the machine hits every server alike.
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut resent = [0u64; 4];
    for _ in 0..ROUNDS {
        for (i, (name, addr, ws)) in runs.iter().enumerate() {
            let (rate, dups) = run_clients(*addr, k, *ws, &content)
                .await
                .with_context(|| format!("{name}, windowsize {ws}"))?;
            rates[i].push(rate);
            resent[i] += dups;
        }
    }
    ours_1.stop().await;
    ours_2.stop().await;
    dnsmasq.stop().await;

    let medians = rates.each_mut().map(|r| {
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    });
    let mut out = format!(
        "TFTP: {file_mb} MiB file to {k} concurrent clients over loopback, blksize {BLKSIZE}, \
         median of {ROUNDS} rounds (MB = 10^6 bytes, all clients together)\n"
    );
    for (i, (name, _, ws)) in runs.iter().enumerate() {
        let all: Vec<String> = rates[i].iter().map(|r| format!("{r:.1}")).collect();
        out += &format!(
            "  {name:<20} windowsize {ws}: {:>7.1} MB/s   rounds (sorted): {}; blocks resent: {}\n",
            medians[i],
            all.join(", "),
            resent[i]
        );
    }
    out += &format!(
        "  ratio siderite/dnsmasq, both windowsize 1: {:.2} (2 workers: {:.2})\n  \
         ratio siderite at windowsize 8 / dnsmasq: {:.2}\n",
        medians[1] / medians[0],
        medians[3] / medians[0],
        medians[2] / medians[0]
    );
    Ok(out)
}

/// Pseudo-random bytes, so nothing on the way can shortcut zeros.
fn bench_file(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// K clients at once; returns MB/s for all of them together and how many blocks the
/// clients saw twice (retransmissions). The first client keeps the file and checks it.
async fn run_clients(
    server: SocketAddr,
    k: usize,
    windowsize: u16,
    content: &Arc<Vec<u8>>,
) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let mut duplicates = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..k {
        let opts = ClientOptions {
            blksize: Some(BLKSIZE),
            windowsize: (windowsize > 1).then_some(windowsize),
            tsize: true,
            keep_data: i == 0,
            timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        };
        tasks.spawn(async move { fetch(server, FILE, &opts).await });
    }
    while let Some(r) = tasks.join_next().await {
        let got = r.context("client task")?.context("fetching the file")?;
        if got.bytes != content.len() as u64 {
            bail!("a client got {} bytes of {}", got.bytes, content.len());
        }
        if !got.data.is_empty() && got.data != **content {
            bail!("a client got different content");
        }
        duplicates += got.duplicates;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(((k * content.len()) as f64 / secs / 1e6, duplicates))
}

/// Our server on its own runtime and threads, as dnsmasq is its own process.
struct OurServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl OurServer {
    async fn start(root: &Path, k: usize, workers: usize) -> anyhow::Result<Self> {
        let source = Arc::new(DirSource::new(root)?);
        let config = TftpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            // Headroom like dnsmasq's --tftp-max below: a finished client's last ACK
            // may still be on its way when the next round starts.
            max_sessions: k + 8,
            per_client_sessions: k + 8,
            ..TftpConfig::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("tftp-bench-server")
            .enable_all()
            .build()?;
        let (addr_tx, addr_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                match TftpServer::bind(config, source).await {
                    Ok(server) => {
                        let _ = addr_tx.send(Ok(server.local_addr()));
                        let shutdown = async {
                            let _ = stop_rx.await;
                        };
                        if let Err(e) = server.run(shutdown).await {
                            tracing::warn!(error = %e, "bench TFTP server");
                        }
                    }
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                    }
                }
            })
        });
        let addr = addr_rx.await.context("bench TFTP server thread")??;
        Ok(Self { addr, stop, thread })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

struct Dnsmasq {
    child: tokio::process::Child,
    addr: SocketAddr,
    version: String,
    /// Holds its pid file, outside the served directory.
    _run_dir: tempfile::TempDir,
}

impl Dnsmasq {
    async fn start(root: &Path, k: usize) -> anyhow::Result<Self> {
        let version = tokio::process::Command::new(DNSMASQ)
            .arg("--version")
            .output()
            .await
            .with_context(|| format!("running {DNSMASQ} --version"))?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .map(|v| format!("dnsmasq {v}"))
            .unwrap_or_else(|| "dnsmasq".into());
        let mut last_err = None;
        // A random loopback address, in case port 69 is taken on one.
        for _ in 0..3 {
            let ip = Ipv4Addr::new(
                127,
                rand::random_range(1..=254),
                rand::random(),
                rand::random_range(1..=254),
            );
            match Self::try_start(root, k, ip).await {
                Ok((child, run_dir)) => {
                    return Ok(Self {
                        child,
                        addr: SocketAddr::new(IpAddr::V4(ip), 69),
                        version,
                        _run_dir: run_dir,
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("dnsmasq did not start")))
    }

    async fn try_start(
        root: &Path,
        k: usize,
        ip: Ipv4Addr,
    ) -> anyhow::Result<(tokio::process::Child, tempfile::TempDir)> {
        let run_dir = tempfile::tempdir()?;
        let pid_file = run_dir.path().join("dnsmasq.pid");
        let mut child = tokio::process::Command::new(DNSMASQ)
            .arg("--no-daemon")
            .arg("--conf-file=/dev/null")
            .arg(format!("--pid-file={}", pid_file.display()))
            .arg("--port=0")
            .arg("--enable-tftp")
            .arg(format!("--tftp-root={}", root.display()))
            .arg(format!("--tftp-max={}", k + 8))
            .arg(format!("--listen-address={ip}"))
            .arg("--bind-interfaces")
            .arg("--quiet-tftp")
            .arg("--log-facility=-")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {DNSMASQ}"))?;
        let server = SocketAddr::new(IpAddr::V4(ip), 69);
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = ClientOptions {
            timeout: Duration::from_millis(200),
            retries: 0,
            keep_data: false,
            ..ClientOptions::default()
        };
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                bail!(
                    "dnsmasq exited ({status}) on {ip}:69 (needs root for port 69): {}",
                    err.trim()
                );
            }
            // Any TFTP answer (here: file not found) means it is serving.
            match fetch(server, "siderite-probe-missing", &probe).await {
                Err(super::tftp::client::ClientError::Server { .. }) => {
                    return Ok((child, run_dir))
                }
                _ if Instant::now() > deadline => {
                    bail!("dnsmasq on {ip}:69 did not answer TFTP within 10 s")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    /// A small run of the real comparison (dnsmasq must be installed, and root).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bench_runs_against_dnsmasq() {
        let report = super::bench(2, 2)
            .await
            .map_err(|e| format!("{e:#}"))
            .unwrap();
        eprintln!("{report}");
        assert!(report.contains("ratio siderite/dnsmasq, both windowsize 1"));
        assert_eq!(report.matches("MB/s").count(), 4);
    }
}
