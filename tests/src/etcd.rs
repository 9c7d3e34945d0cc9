//! A real etcd for the store tests: Debian's `etcd-server` (`/usr/bin/etcd`), one member or
//! a cluster of three, on loopback ports that were free, each member with its own data
//! directory (on tmpfs when there is one: the tests measure behaviour, not the disk).
//! Every member is killed when the cluster is dropped.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

pub const ETCD: &str = "/usr/bin/etcd";

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

/// Ports the kernel just handed out on loopback, all distinct.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl EtcdCluster {
    /// One member.
    pub async fn single() -> anyhow::Result<Self> {
        Self::start(1).await
    }

    /// Three members: one can die and the other two keep a quorum.
    pub async fn three() -> anyhow::Result<Self> {
        Self::start(3).await
    }

    /// `n` members, healthy (a leader elected, every member answering) when this returns.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: the etcd store tests need Debian's etcd-server \
             (apt-get install -y etcd-server, as scripts/setup-debian.sh does)"
        );
        // A port taken between choosing and binding fails the start: choose again.
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(n).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    let taken = format!("{e:#}").contains("address already in use");
                    last = Some(e);
                    if !taken {
                        break;
                    }
                }
            }
        }
        Err(last.expect("at least one try"))
    }

    async fn try_start(n: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("siderite-etcd-")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())?;
        let ports = free_ports(2 * n)?;
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("siderite-test-{}", uuid::Uuid::new_v4().simple());
        for m in &mut members {
            let peer = format!("http://127.0.0.1:{}", m.peer_port);
            let log = std::fs::File::create(&m.log)?;
            let child = Command::new(ETCD)
                .arg("--name")
                .arg(&m.name)
                .arg("--data-dir")
                .arg(dir.path().join(&m.name))
                .args(["--listen-client-urls", &m.client_url()])
                .args(["--advertise-client-urls", &m.client_url()])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {ETCD} ({})", m.name))?;
            m.child = Some(child);
        }
        let mut cluster = Self { members, _dir: dir };
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Waits until every living member reports itself healthy (it has a leader).
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending = Vec::new();
            for m in &mut self.members {
                let Some(child) = m.child.as_mut() else {
                    continue;
                };
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!(
                        "etcd member {} exited ({status}); its log ends:\n{}",
                        m.name,
                        tail(&m.log, 20)
                    );
                }
                let healthy = match http.get(format!("{}/health", m.client_url())).send().await {
                    Ok(r) => r
                        .text()
                        .await
                        .is_ok_and(|t| t.replace(' ', "").contains("\"health\":\"true\"")),
                    Err(_) => false,
                };
                if !healthy {
                    pending.push(m.name.clone());
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("--- {}:\n{}", m.name, tail(&m.log, 10)))
                    .collect();
                anyhow::bail!(
                    "etcd members {pending:?} not healthy within {timeout:?}; logs:\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `127.0.0.1:port` of every member, dead or alive.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The `--store` URL of this cluster with `namespace` (`/name`).
    pub fn url(&self, namespace: &str) -> String {
        format!("etcd://{}{namespace}", self.endpoints().join(","))
    }

    /// The index of the member that is the leader now.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            // etcd's JSON gateway; uint64 fields come as strings.
            let Ok(resp) = http
                .post(format!("{}/v3/maintenance/status", m.client_url()))
                .body("{}")
                .send()
                .await
            else {
                continue;
            };
            let status: serde_json::Value = serde_json::from_str(&resp.text().await?)?;
            if let Some(id) = status["header"]["member_id"].as_str() {
                ids.push((i, id.to_string()));
            }
            if let Some(l) = status["leader"].as_str().filter(|l| *l != "0") {
                leader = Some(l.to_string());
            }
        }
        let leader = leader.context("no living member names a leader")?;
        ids.into_iter()
            .find(|(_, id)| *id == leader)
            .map(|(i, _)| i)
            .with_context(|| format!("the leader {leader} is not a living member"))
    }

    /// Kills member `i` with SIGKILL and waits for it to be gone.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// The last lines of every member's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {}:\n{}", m.name, tail(&m.log, 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
