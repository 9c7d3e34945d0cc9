//! `siderite bench`: simulated agents over loopback against a server process, and the
//! store's own transaction rate (`bench store`, in-process on either backend).
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use siderite::proto::agent::v1::{
    agent_message, agent_service_client::AgentServiceClient, AgentMessage, Hello, RegisterRequest,
};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

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

/// `serve` limits lifted for clients that all come from 127.0.0.1 (benches, tests).
pub const LOOPBACK_LIMITS: [&str; 8] = [
    "--max-connections",
    "1000000",
    "--max-connections-per-source",
    "1000000",
    "--max-sessions-per-source",
    "1000000",
    "--max-boot-connections-per-source",
    "1000000",
];

/// `replicas` server processes sharing `store` (`embedded` allows one), each on its own
/// loopback port; extra args for every one.
pub async fn start_replicas(
    store: &str,
    replicas: usize,
    extra: &[&str],
) -> anyhow::Result<Vec<ServerProcess>> {
    anyhow::ensure!(replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(
        store != "embedded" || replicas == 1,
        "the embedded store belongs to one process: use --store etcd://... for --replicas {replicas}"
    );
    // Each replica its own health port: the default one can be bound once. Every simulated
    // agent comes from 127.0.0.1, so the per-source limits are lifted.
    let mut args: Vec<&str> = vec!["--store", store, "--http-listen", "127.0.0.1:0"];
    args.extend_from_slice(&LOOPBACK_LIMITS);
    args.extend_from_slice(extra);
    let mut out = Vec::new();
    for _ in 0..replicas {
        out.push(ServerProcess::start(std::env::current_exe()?, &args).await?);
    }
    Ok(out)
}

/// How a bench client reaches one replica: its address, the CA pin, an admin token and a
/// join token for the simulated agents.
#[derive(Clone)]
pub struct Access {
    pub addr: String,
    pub pin: siderite::tls::CaPin,
    pub admin_token: String,
    pub join_token: String,
}

impl Access {
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(siderite::tls::channel(&self.addr, self.pin, Duration::from_secs(10)).await?)
    }

    pub async fn admin(&self) -> anyhow::Result<crate::cli::Admin> {
        crate::cli::admin_client(self.channel().await?, &self.admin_token)
    }
}

/// Access to each of `procs` (replicas of one store): the operator config the first one
/// wrote, and a join token made through it.
pub async fn access_of(procs: &[ServerProcess]) -> anyhow::Result<Vec<Access>> {
    let first = procs.first().context("no server")?;
    let path = first.dir.path().join("data/siderite-config.yaml");
    let config = crate::clientconfig::ClientConfig::load(&path).map_err(anyhow::Error::msg)?;
    let t = config.resolve(Some("admin")).map_err(anyhow::Error::msg)?;
    let mut access = Access {
        addr: first.addr.clone(),
        pin: t.pin,
        admin_token: t.token,
        join_token: String::new(),
    };
    access.join_token = access
        .admin()
        .await?
        .create_join_token(siderite::proto::admin::v1::CreateJoinTokenRequest {
            description: "bench".into(),
            ttl_seconds: 3600,
            no_boot: true,
        })
        .await?
        .into_inner()
        .token;
    Ok(procs
        .iter()
        .map(|p| Access {
            addr: p.addr.clone(),
            ..access.clone()
        })
        .collect())
}

fn rss_list(servers: &[ServerProcess]) -> String {
    servers
        .iter()
        .map(|s| format!("{} MiB", s.rss_bytes().unwrap_or(0) >> 20))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resident set size of a process, from /proc.
pub fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What a thin simulated agent does with its session until it ends: every wipe is done at
/// once, every install accepted (and shown to `on_install`); nothing else is answered.
pub async fn thin_agent(
    tx: tokio::sync::mpsc::Sender<AgentMessage>,
    mut inbound: tonic::Streaming<siderite::proto::agent::v1::ServerMessage>,
    on_install: impl Fn(&siderite::proto::agent::v1::Install) + Send + 'static,
) {
    use siderite::proto::agent::v1::{command, server_message, CommandAck};
    while let Ok(Some(m)) = inbound.message().await {
        let Some(server_message::Msg::Command(c)) = m.msg else {
            continue;
        };
        let state = match &c.kind {
            Some(command::Kind::Wipe(_)) => "done",
            Some(command::Kind::Install(i)) => {
                on_install(i);
                "accepted"
            }
            _ => continue,
        };
        let ack = AgentMessage {
            msg: Some(agent_message::Msg::Ack(CommandAck {
                command_id: c.id,
                state: state.into(),
                ..Default::default()
            })),
        };
        if tx.send(ack).await.is_err() {
            return;
        }
    }
}

/// A simulated agent: registers `hw` and opens its session; the sender keeps it open.
async fn open_session(
    access: &Access,
    hw: siderite::proto::agent::v1::Hardware,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<AgentMessage>,
    tonic::Streaming<siderite::proto::agent::v1::ServerMessage>,
)> {
    let (_, tx, inbound) = open_session_from(access, None, hw).await?;
    Ok((tx, inbound))
}

/// [`open_session`] from the source address `from` (one machine of many on loopback);
/// also the server ID it registered as.
pub async fn open_session_from(
    access: &Access,
    from: Option<std::net::IpAddr>,
    hw: siderite::proto::agent::v1::Hardware,
) -> anyhow::Result<(
    String,
    tokio::sync::mpsc::Sender<AgentMessage>,
    tonic::Streaming<siderite::proto::agent::v1::ServerMessage>,
)> {
    let ch = siderite::tls::channel_from(from, &access.addr, access.pin, Duration::from_secs(30))
        .await?;
    let boot_id = uuid::Uuid::new_v4().to_string();
    let resp = AgentServiceClient::new(ch.clone())
        .register(RegisterRequest {
            boot_id: boot_id.clone(),
            agent_version: "bench".into(),
            hardware: Some(hw),
            server_id: String::new(),
            join_token: access.join_token.clone(),
        })
        .await?
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            server_id: resp.server_id.clone(),
            boot_id,
            session_token: resp.session_token,
        })),
    })
    .await?;
    let inbound = AgentServiceClient::new(ch)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((resp.server_id, tx, inbound))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

pub async fn register(
    agents: u32,
    concurrency: usize,
    connections: usize,
    store: &str,
    replicas: usize,
) -> anyhow::Result<String> {
    raise_nofile();
    let servers = start_replicas(store, replicas, &[]).await?;
    let access = access_of(&servers).await?;
    let seed: u32 = rand::random();
    let mut chans = Vec::new();
    for c in 0..connections.max(1) {
        chans.push(access[c % access.len()].channel().await?);
    }
    let join_token = access[0].join_token.clone();
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(agents as usize);
    for i in 0..agents {
        let permit = sem.clone().acquire_owned().await?;
        let ch = chans[i as usize % chans.len()].clone();
        let join_token = join_token.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t = Instant::now();
            let req = RegisterRequest {
                boot_id: uuid::Uuid::new_v4().to_string(),
                agent_version: "bench".into(),
                hardware: Some(crate::fake::hardware(seed, i)),
                server_id: String::new(),
                join_token,
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
    Ok(format!(
        "bench register: {agents} agents, concurrency {concurrency}, {connections} connections, store {store}, {replicas} replica(s)\n\
         elapsed {:.2} s, {:.0} registrations/s, p50 {:.2} ms, p99 {:.2} ms, failed {failed}, server RSS {}\n",
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        rss_list(&servers)
    ))
}

pub async fn sessions(
    agents: u32,
    concurrency: usize,
    store: &str,
    replicas: usize,
) -> anyhow::Result<String> {
    raise_nofile();
    let servers = start_replicas(store, replicas, &[]).await?;
    let access = access_of(&servers).await?;
    let idle = rss_list(&servers);
    let idle_rss: u64 = servers.iter().map(|s| s.rss_bytes().unwrap_or(0)).sum();
    let seed: u32 = rand::random();
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..agents {
        let permit = sem.clone().acquire_owned().await?;
        let access = access[i as usize % access.len()].clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let (tx, mut inbound) = open_session(&access, crate::fake::hardware(seed, i)).await?;
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
    let rss: u64 = servers.iter().map(|s| s.rss_bytes().unwrap_or(0)).sum();
    let n = held.len().max(1) as u64;
    Ok(format!(
        "bench sessions: {} sessions open ({failed} failed) in {:.1} s over {replicas} replica(s), store {store}; RSS per replica {} (idle {idle}; {:.1} KiB per session)\n",
        held.len(),
        opened.as_secs_f64(),
        rss_list(&servers),
        (rss.saturating_sub(idle_rss)) as f64 / n as f64 / 1024.0
    ))
}

/// How a `bench store` write is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StoreWrite {
    /// One put, no precondition: the ceiling.
    Plain,
    /// The precondition that the key is as last read, then one put: a Server update.
    Cas,
}

struct StoreRun {
    elapsed: Duration,
    latencies: Vec<Duration>,
    conflicts: usize,
    failed: usize,
    first_error: Option<String>,
}

/// Rounds of each kind in `bench store`.
const STORE_ROUNDS: u32 = 4;

impl StoreRun {
    fn empty() -> Self {
        Self {
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
            conflicts: 0,
            failed: 0,
            first_error: None,
        }
    }

    fn add(&mut self, other: StoreRun) {
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.conflicts += other.conflicts;
        self.failed += other.failed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn line(&self, label: &str) -> String {
        format!(
            "  {label:<32} {:>8.0} txn/s  p50 {:.2} ms  p99 {:.2} ms  conflicts {}  failed {}{}\n",
            self.rate(),
            percentile(&self.latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&self.latencies, 0.99).as_secs_f64() * 1e3,
            self.conflicts,
            self.failed,
            self.first_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
        )
    }
}

/// `ops` writes of `value` by `concurrency` writers, each on its own key under `prefix`.
async fn store_writes(
    store: Arc<dyn crate::store::Store>,
    how: StoreWrite,
    prefix: &str,
    ops: u32,
    concurrency: usize,
    value: Arc<Vec<u8>>,
) -> StoreRun {
    use crate::store::{Precondition, Txn, TxnOutcome};
    let writers = concurrency.clamp(1, ops.max(1) as usize);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let n = ops as usize / writers + usize::from(w < ops as usize % writers);
        let (store, value, key) = (store.clone(), value.clone(), format!("{prefix}/{w:05}"));
        tasks.push(tokio::spawn(async move {
            let mut run = StoreRun::empty();
            // The revision this writer last saw its key at (none: not created yet).
            let mut seen = None;
            for _ in 0..n {
                let txn = match (how, seen) {
                    (StoreWrite::Plain, _) => Txn::new(),
                    (StoreWrite::Cas, None) => {
                        Txn::new().require(Precondition::Absent(key.clone()))
                    }
                    (StoreWrite::Cas, Some(r)) => {
                        Txn::new().require(Precondition::At(key.clone(), r))
                    }
                };
                let t = Instant::now();
                match store.txn(txn.put(key.clone(), value.to_vec())).await {
                    Ok(TxnOutcome::Committed(r)) => {
                        run.latencies.push(t.elapsed());
                        seen = Some(r);
                    }
                    Ok(TxnOutcome::Conflict(_)) => run.conflicts += 1,
                    Err(e) => {
                        run.failed += 1;
                        run.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            run
        }));
    }
    let mut all = StoreRun::empty();
    for t in tasks {
        match t.await {
            Ok(mut run) => {
                // The writers ran side by side: the wall time is measured below.
                run.elapsed = Duration::ZERO;
                all.add(run);
            }
            Err(e) => {
                all.failed += 1;
                all.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    all.elapsed = start.elapsed();
    all
}

/// `siderite bench store`: CAS transactions per second against plain puts of the same
/// size, in-process on the store `url` names. The embedded store is a fresh one in a
/// temporary directory; on etcd everything is written under a namespace of its own, which
/// is deleted afterwards.
pub async fn store(
    url: &crate::store::StoreUrl,
    ops: u32,
    concurrency: usize,
    value_bytes: usize,
) -> anyhow::Result<String> {
    use crate::store::{EmbeddedStore, EtcdStore, Store, StoreUrl, Txn};
    let scratch = tempfile::tempdir()?;
    let (store, what): (Arc<dyn Store>, String) = match url {
        StoreUrl::Embedded => (
            Arc::new(EmbeddedStore::open(&scratch.path().join("store"))?),
            "embedded (a fresh store on this disk)".into(),
        ),
        StoreUrl::Etcd {
            endpoints,
            namespace,
        } => {
            let ns = format!("{namespace}bench-{}/", uuid::Uuid::new_v4().simple());
            let what = format!("etcd at {} (namespace {ns})", endpoints.join(","));
            (Arc::new(EtcdStore::connect(endpoints, &ns).await?), what)
        }
    };
    let value: Arc<Vec<u8>> = Arc::new((0..value_bytes).map(|_| rand::random()).collect());
    // Warm up connections, caches and the file before measuring.
    let warm = (ops / 10).clamp(1, 1000);
    store_writes(
        store.clone(),
        StoreWrite::Plain,
        "warm",
        warm,
        concurrency,
        value.clone(),
    )
    .await;
    // Rounds that alternate which kind goes first, so neither gains from going second
    // (a warmer cache, a larger file).
    let mut plain = StoreRun::empty();
    let mut cas = StoreRun::empty();
    for round in 0..STORE_ROUNDS {
        let n = ops / STORE_ROUNDS + u32::from(round < ops % STORE_ROUNDS);
        let order = if round % 2 == 0 {
            [StoreWrite::Plain, StoreWrite::Cas]
        } else {
            [StoreWrite::Cas, StoreWrite::Plain]
        };
        for how in order {
            let (total, prefix) = match how {
                StoreWrite::Plain => (&mut plain, format!("plain{round}")),
                StoreWrite::Cas => (&mut cas, format!("cas{round}")),
            };
            let run =
                store_writes(store.clone(), how, &prefix, n, concurrency, value.clone()).await;
            total.add(run);
        }
    }
    plain.latencies.sort();
    cas.latencies.sort();
    let mut cleanup = None;
    if matches!(url, StoreUrl::Etcd { .. }) {
        let keys: Vec<String> = store.list("").await?.into_iter().map(|(k, _)| k).collect();
        for chunk in keys.chunks(100) {
            let mut txn = Txn::new();
            for k in chunk {
                txn = txn.delete(k.clone());
            }
            store.txn(txn).await?;
        }
        cleanup = Some(keys.len());
    }
    let mut out = format!(
        "bench store: {what}\n  {ops} writes of {value_bytes} B per kind in {STORE_ROUNDS} alternating rounds, {} writers, each on its own key\n",
        concurrency.clamp(1, (ops / STORE_ROUNDS).max(1) as usize)
    );
    out += &plain.line("plain put (1 put)");
    out += &cas.line("CAS (1 precondition + 1 put)");
    out += &format!(
        "  CAS / plain: {:.2} of the throughput, {:.2}x the p50 latency\n",
        cas.rate() / plain.rate(),
        percentile(&cas.latencies, 0.5).as_secs_f64()
            / percentile(&plain.latencies, 0.5).as_secs_f64().max(1e-9)
    );
    if let Some(n) = cleanup {
        out += &format!("  deleted the bench's {n} keys\n");
    }
    Ok(out)
}

/// `bench allocate`: `servers` simulated agents register and ack their wipe at once (the
/// wipe itself is the wipe benchmark's business), then `allocations` concurrent
/// `Allocate` calls spread over the replicas. Allocations per second and latency.
pub async fn allocate(
    servers: u32,
    concurrency: usize,
    store: &str,
    replicas: usize,
) -> anyhow::Result<String> {
    use sha2::Digest;
    use siderite::proto::admin::v1::{
        AllocateRequest, ApplyEnvironmentRequest, ApplyResourceRequest, ListServersRequest,
    };
    raise_nofile();
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("image");
    std::fs::create_dir_all(&image)?;
    std::fs::write(image.join("vmlinuz"), b"k")?;
    std::fs::write(image.join("initramfs.cpio.zst"), b"i")?;
    let http_ports: Vec<String> = (0..replicas)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut procs = Vec::new();
    for http in &http_ports {
        let img = image.to_str().context("image path")?;
        procs.extend(
            start_replicas(
                store,
                1,
                &[
                    "--auto-accept",
                    "all",
                    "--boot-image",
                    img,
                    "--boot-http-listen",
                    http,
                    "--boot-advertise",
                    http,
                    "--tftp-listen",
                    "off",
                    "--dhcp",
                    "off",
                ],
            )
            .await?,
        );
    }
    let sha = |b: &[u8]| format!("{:x}", sha2::Sha512::digest(b));
    std::fs::write(dir.path().join("k"), b"kernel")?;
    std::fs::write(dir.path().join("i"), b"initrd")?;
    let ns = format!("{:x}", rand::random::<u32>());
    let access = access_of(&procs).await?;
    let mut admin = access[0].admin().await?;
    admin
        .apply_environment(ApplyEnvironmentRequest {
            manifest: format!(
                "apiVersion: metal.siderite.dev/v1alpha1\nkind: Environment\nmetadata: {{name: bench-{ns}}}\nspec:\n  kernel: {{path: {}, sha512: {}}}\n  initrd: {{path: {}, sha512: {}}}\n  args: []\n  arch: amd64\n",
                dir.path().join("k").display(), sha(b"kernel"), dir.path().join("i").display(), sha(b"initrd")
            ),
        })
        .await?;
    let seed: u32 = rand::random();
    admin
        .apply_resource(ApplyResourceRequest {
            manifest: format!("apiVersion: metal.siderite.dev/v1alpha1\nkind: ServerClass\nmetadata: {{name: bench-{ns}}}\nspec:\n  selectors:\n    - {{field: system.family, op: In, values: [bench-{seed}]}}\n"),
        })
        .await?;
    admin
        .apply_resource(ApplyResourceRequest {
            manifest: format!("apiVersion: metal.siderite.dev/v1alpha1\nkind: MachineConfig\nmetadata: {{name: bench-{ns}}}\nspec:\n  base: \"version: v1alpha1\\n\"\n"),
        })
        .await?;

    // Thin agents: register, hold a session, ack every wipe as done at once.
    let sem = Arc::new(Semaphore::new(128));
    let mut agents = Vec::new();
    for i in 0..servers {
        let permit = sem.clone().acquire_owned().await?;
        let access = access[i as usize % access.len()].clone();
        agents.push(tokio::spawn(async move {
            let _permit = permit;
            let mut hw = crate::fake::hardware(seed, i);
            if let Some(s) = hw.system.as_mut() {
                s.family = format!("bench-{seed}");
            }
            let (tx, inbound) = open_session(&access, hw).await?;
            tokio::spawn(thin_agent(tx, inbound, |_| {}));
            anyhow::Ok(())
        }));
    }
    for a in agents {
        a.await??;
    }
    // Wait until every one is clean (seen through the last replica).
    let mut last = access[access.len() - 1].admin().await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let list = last
            .list_servers(ListServersRequest {})
            .await?
            .into_inner()
            .servers;
        let clean = list
            .iter()
            .filter(|s| s.status.as_ref().is_some_and(|st| st.phase == "clean"))
            .count();
        if clean >= servers as usize {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {clean} of {servers} clean after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give every replica's Environment catalog time to sync.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut clients = Vec::new();
    for a in &access {
        clients.push(a.admin().await?);
    }
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..servers {
        let permit = sem.clone().acquire_owned().await?;
        let mut c = clients[n as usize % clients.len()].clone();
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t = Instant::now();
            c.allocate(AllocateRequest {
                server_class: format!("bench-{ns}"),
                environment: format!("bench-{ns}"),
                machine_config: format!("bench-{ns}"),
                name: format!("bench-{ns}-{n}"),
            })
            .await
            .map(|_| t.elapsed())
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok(d) => lat.push(d),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.message().to_string());
            }
        }
    }
    let elapsed = start.elapsed();
    lat.sort();
    Ok(format!(
        "bench allocate: {servers} clean servers, {servers} allocations, concurrency {concurrency}, store {store}, {replicas} replica(s)\n\
         elapsed {:.2} s, {:.0} allocations/s, p50 {:.1} ms, p99 {:.1} ms, failed {failed}{}\n",
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        first_error.map(|e| format!(" (first: {e})")).unwrap_or_default()
    ))
}
