//! Several replicas, one truth: a 3-member etcd cluster (Debian's etcd-server, on
//! loopback), two `siderite serve --store etcd://...` processes, 500 agents (the real agent
//! library, disks in memory) spread over both. Every registration is acknowledged and
//! kept; every server is wiped once and clean; mid-run the replica holding the leader
//! lease and one etcd member are killed with SIGKILL: agents fail over to the other
//! replica, the work finishes, the lease moves. Then 500 concurrent allocations through
//! both replicas: every server bound once, never twice.
//!
//! Needs /usr/bin/etcd (etcd-server) and the siderite binary; fails with the reason when
//! one is missing.
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha512};
use siderite::proto::admin::v1::{
    AllocateRequest, ApplyEnvironmentRequest, ApplyResourceRequest, ListServersRequest, Server,
};
use siderite_server::store::Store;
use siderite_tests::etcd::EtcdCluster;
use siderite_tests::fleet::Fleet;
use siderite_tests::ServerProcess;

const AGENTS: u32 = 500;
const NAMESPACE: &str = "/siderite-ha/";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

async fn replica(dir: &Path, name: &str, url: &str, image: &Path) -> Result<ServerProcess> {
    let http = format!("127.0.0.1:{}", free_port());
    ServerProcess::start(
        &dir.join(name),
        &[
            "--store",
            url,
            "--auto-accept",
            "all",
            "--boot-image",
            image.to_str().context("image path")?,
            "--boot-http-listen",
            &http,
            "--boot-advertise",
            &http,
            "--tftp-listen",
            "off",
            "--dhcp",
            "off",
        ],
    )
    .await
}

async fn admin(addr: &str) -> Result<siderite_server::cli::Admin> {
    siderite_tests::admin(addr).await
}

async fn servers(addr: &str) -> Result<Vec<Server>> {
    Ok(admin(addr)
        .await?
        .list_servers(ListServersRequest {})
        .await?
        .into_inner()
        .servers)
}

fn phase_counts(list: &[Server]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for s in list {
        *m.entry(s.status.clone().unwrap_or_default().phase)
            .or_default() += 1;
    }
    m
}

/// The replica named in the leader lease (`host@addr`), by its gRPC address.
async fn leader(store: &dyn Store) -> Result<String> {
    let v = store
        .get(siderite_server::leader::LEADER_KEY)
        .await?
        .context("no leader lease yet")?;
    let text = String::from_utf8_lossy(&v.value).to_string();
    let holder = text.lines().next().unwrap_or_default();
    Ok(holder.rsplit('@').next().unwrap_or_default().to_string())
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(None) => return Ok(()),
            Ok(Some(state)) => state,
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_three_etcd_members_share_one_truth() -> Result<()> {
    let mut etcd = EtcdCluster::three().await?;
    let url = etcd.url(NAMESPACE);
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("agent-image");
    std::fs::create_dir_all(&image)?;
    std::fs::write(image.join("vmlinuz"), b"agent kernel")?;
    std::fs::write(image.join("initramfs.cpio.zst"), b"agent initrd")?;
    let r1 = replica(dir.path(), "r1", &url, &image).await?;
    let r2 = replica(dir.path(), "r2", &url, &image).await?;
    let store = siderite_server::store::etcd::EtcdStore::connect(&etcd.endpoints(), NAMESPACE)
        .await
        .context("a store client for the checks")?;

    // Resources through r1; r2 must see them too (the Environment catalog syncs).
    let (k, i) = (dir.path().join("vmlinuz"), dir.path().join("initrd"));
    std::fs::write(&k, b"talos kernel")?;
    std::fs::write(&i, b"talos initrd")?;
    let sha = |b: &[u8]| format!("{:x}", Sha512::digest(b));
    let mut c1 = admin(&r1.addr).await?;
    c1.apply_environment(ApplyEnvironmentRequest {
        manifest: format!(
            "apiVersion: metal.siderite.dev/v1alpha1\nkind: Environment\nmetadata: {{name: talos}}\nspec:\n  kernel: {{path: {}, sha512: {}}}\n  initrd: {{path: {}, sha512: {}}}\n  args: []\n  arch: amd64\n",
            k.display(),
            sha(b"talos kernel"),
            i.display(),
            sha(b"talos initrd")
        ),
    })
    .await?;
    c1.apply_resource(ApplyResourceRequest {
        manifest: "apiVersion: metal.siderite.dev/v1alpha1\nkind: ServerClass\nmetadata: {name: all}\nspec: {selectors: []}\n".into(),
    })
    .await?;
    c1.apply_resource(ApplyResourceRequest {
        manifest: "apiVersion: metal.siderite.dev/v1alpha1\nkind: MachineConfig\nmetadata: {name: workers}\nspec:\n  base: \"version: v1alpha1\\nmachine: {type: worker}\\n\"\n".into(),
    })
    .await?;

    // 500 agents over both replicas.
    let started = Instant::now();
    let fleet = Fleet::start(&[r1.addr.clone(), r2.addr.clone()], AGENTS, 4242);
    let ids: HashSet<String> = fleet.agents.iter().map(|a| a.id.clone()).collect();
    ensure!(ids.len() == AGENTS as usize, "fleet ids are distinct");

    // Mid-run, once some are clean: kill -9 the replica holding the lease and one etcd
    // member that is not the etcd leader.
    let r2_addr = r2.addr.clone();
    wait_for(
        "a first hundred clean servers",
        Duration::from_secs(120),
        || {
            let addr = r2_addr.clone();
            async move {
                let n = phase_counts(&servers(&addr).await?)
                    .get("clean")
                    .copied()
                    .unwrap_or(0);
                Ok((n < 100).then(|| format!("{n} clean")))
            }
        },
    )
    .await?;
    let lead = leader(&store).await?;
    ensure!(
        lead == r1.addr || lead == r2.addr,
        "the lease names a replica: {lead}"
    );
    let (mut dead, alive) = if lead == r1.addr { (r1, r2) } else { (r2, r1) };
    let _ = dead.child.kill();
    let _ = dead.child.wait();
    let etcd_leader = etcd.leader().await?;
    let victim = (etcd_leader + 1) % 3;
    etcd.kill9(victim);
    println!(
        "killed replica {} (the lease holder) and etcd member {victim} at {:.1} s",
        dead.addr,
        started.elapsed().as_secs_f64()
    );

    // Everything finishes through the surviving replica and two etcd members.
    let alive_addr = alive.addr.clone();
    let ids2 = ids.clone();
    wait_for(
        "every server registered and clean",
        Duration::from_secs(240),
        || {
            let addr = alive_addr.clone();
            let ids = ids2.clone();
            async move {
                let list = servers(&addr).await?;
                let names: HashSet<String> = list
                    .iter()
                    .map(|s| siderite_server::model::name(s).to_string())
                    .collect();
                let counts = phase_counts(&list);
                let clean = counts.get("clean").copied().unwrap_or(0);
                let connected = list
                    .iter()
                    .filter(|s| s.status.as_ref().is_some_and(|st| st.connected))
                    .count();
                Ok(
                    (names != ids || clean != AGENTS as usize || connected != AGENTS as usize)
                        .then(|| {
                            format!("{} servers, {counts:?}, {connected} connected", list.len())
                        }),
                )
            }
        },
    )
    .await?;
    println!(
        "figure: {AGENTS} agents registered, wiped and clean through 2 replicas on 3 etcd members, with a replica and a member killed: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let alive_addr2 = alive.addr.clone();
    wait_for(
        "the lease moves to the surviving replica",
        Duration::from_secs(40),
        || {
            let store = &store;
            let alive = alive_addr2.clone();
            async move {
                let l = leader(store).await?;
                Ok((l != alive).then(|| format!("lease held by {l}")))
            }
        },
    )
    .await?;

    // The dead replica comes back (new port); 500 concurrent allocations through both.
    let back = replica(dir.path(), "r3", &url, &image).await?;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..AGENTS {
        let addr = if n % 2 == 0 {
            alive.addr.clone()
        } else {
            back.addr.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut c = admin(&addr).await?;
            let r = c
                .allocate(AllocateRequest {
                    server_class: "all".into(),
                    environment: "talos".into(),
                    machine_config: "workers".into(),
                    name: format!("b-{n}"),
                })
                .await?
                .into_inner();
            let v: serde_json::Value = serde_json::from_str(&r.json)?;
            anyhow::Ok(v["spec"]["server"].as_str().unwrap_or_default().to_string())
        }));
    }
    let mut bound = Vec::new();
    for t in tasks {
        bound.push(t.await??);
    }
    println!(
        "figure: {AGENTS} concurrent allocations through 2 replicas on etcd: {:.2} s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        AGENTS as f64 / t.elapsed().as_secs_f64()
    );
    let distinct: HashSet<&String> = bound.iter().collect();
    ensure!(
        distinct.len() == AGENTS as usize,
        "a server was allocated twice"
    );
    let bindings = store.list(siderite_server::binding::PREFIX).await?;
    ensure!(
        bindings.len() == AGENTS as usize,
        "{} bindings",
        bindings.len()
    );
    let list = servers(&back.addr).await?;
    for s in &list {
        let st = s.status.clone().unwrap_or_default();
        ensure!(
            !st.binding.is_empty() && ["allocated", "installing"].contains(&st.phase.as_str()),
            "{} is {} with binding {:?}",
            siderite_server::model::name(s),
            st.phase,
            st.binding
        );
    }
    fleet.stop().await;
    drop(back);
    drop(alive);
    Ok(())
}
