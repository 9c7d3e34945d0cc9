//! The store on a real etcd (Debian's etcd-server on loopback): the same behaviour suite as
//! the embedded store on one member and on three, namespaces, etcd's limits, backup and
//! restore across backends (library and CLI), two server replicas on one etcd, and a
//! member killed with SIGKILL under a working client.
use std::sync::Arc;
use std::time::{Duration, Instant};

use siderite_server::store::{
    self, backup, suite, EmbeddedStore, EtcdStore, Precondition, Store, StoreError, StoreUrl, Txn,
    TxnOutcome,
};
use siderite_tests::etcd::EtcdCluster;

/// One etcd cluster at a time: several at once on a small machine slow the members
/// enough to cost spurious elections.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `RUST_LOG=siderite_server::store=debug` shows every retry.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn namespace() -> String {
    format!("/test-{}/", uuid::Uuid::new_v4().simple())
}

async fn connect(cluster: &EtcdCluster, ns: &str) -> EtcdStore {
    EtcdStore::connect(&cluster.endpoints(), ns)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()))
}

async fn contents(store: &dyn Store) -> Vec<(String, Vec<u8>)> {
    store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect()
}

/// What a running siderite keeps, secrets included, with bytes JSON would not carry as text.
async fn fill(store: &dyn Store, servers: usize) {
    let mut txn = Txn::new();
    for i in 0..servers {
        let id = format!("{i:08x}-0000-4000-8000-000000000000");
        txn = txn
            .put(format!("servers/{id}"), vec![(i % 251) as u8; 2048])
            .put(format!("index/uuid/{id}"), id.clone().into_bytes())
            .put(
                format!("secrets/session/{id}"),
                vec![0, 0xff, i as u8, b'\n', b'"'],
            );
        if txn.ops.len() >= 99 {
            assert!(matches!(
                store.txn(txn).await.unwrap(),
                TxnOutcome::Committed(_)
            ));
            txn = Txn::new();
        }
    }
    txn = txn
        .put("secrets/machine/x", b"token".to_vec())
        .put("empty", Vec::new());
    assert!(matches!(
        store.txn(txn).await.unwrap(),
        TxnOutcome::Committed(_)
    ));
}

async fn run_suite(cluster: &EtcdCluster) {
    let endpoints = cluster.endpoints();
    suite::run_all(|| {
        let endpoints = endpoints.clone();
        async move {
            // Each case in a namespace of its own, with small pages so that the 2,000-key
            // case crosses many page boundaries.
            let s = EtcdStore::connect(&endpoints, &namespace()).await.unwrap();
            Arc::new(s.with_page_size(128)) as Arc<dyn Store>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_one_member() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::single().await.unwrap();
    run_suite(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_three_members() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::three().await.unwrap();
    run_suite(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_limits_and_ten_thousand_keys() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::single().await.unwrap();

    // Namespaces do not see each other; the URL's namespace is the store's.
    let (a, b) = (
        connect(&cluster, "/a/").await,
        connect(&cluster, "/ab/").await,
    );
    a.txn(Txn::new().put("servers/x", b"a".to_vec()))
        .await
        .unwrap();
    b.txn(Txn::new().put("servers/y", b"b".to_vec()))
        .await
        .unwrap();
    assert!(b.get("servers/x").await.unwrap().is_none());
    assert_eq!(
        contents(&a).await,
        vec![("servers/x".into(), b"a".to_vec())]
    );
    assert_eq!(
        contents(&b).await,
        vec![("servers/y".into(), b"b".to_vec())]
    );
    let url: StoreUrl = cluster.url("/a").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let via_url = store::open(&url, dir.path()).await.unwrap();
    assert_eq!(
        via_url.get("servers/x").await.unwrap().unwrap().value,
        b"a".to_vec()
    );

    // etcd's --max-txn-ops (128): at the limit it commits, past it the store says why.
    let ns = namespace();
    let s = connect(&cluster, &ns).await;
    let mut at_limit = Txn::new();
    for i in 0..128 {
        at_limit = at_limit.put(format!("limit/{i:03}"), vec![1]);
    }
    assert!(matches!(
        s.txn(at_limit.clone()).await.unwrap(),
        TxnOutcome::Committed(_)
    ));
    let over = at_limit.put("limit/128", vec![1]);
    match s.txn(over).await {
        Err(StoreError::Io(m)) => {
            assert!(m.contains("129 ops") && m.contains("--max-txn-ops"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let mut many_checks = Txn::new();
    for i in 0..129 {
        many_checks = many_checks.require(Precondition::Absent(format!("c/{i}")));
    }
    match s.txn(many_checks.put("c", vec![])).await {
        Err(StoreError::Io(m)) => assert!(m.contains("--max-txn-ops"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(s.get("limit/128").await.unwrap().is_none());

    // 10,000 keys through the default page size, in order.
    let big = connect(&cluster, &namespace()).await;
    let started = Instant::now();
    let mut writes = Vec::new();
    for chunk in 0..100 {
        let big = &big;
        writes.push(async move {
            let mut txn = Txn::new();
            for i in chunk * 100..(chunk + 1) * 100 {
                txn = txn.put(format!("k/{i:05}"), vec![0u8; 64]);
            }
            big.txn(txn).await.unwrap()
        });
    }
    futures::future::join_all(writes).await;
    let listed = big.list("k/").await.unwrap();
    assert_eq!(listed.len(), 10_000);
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(listed[9_999].0, "k/09999");
    eprintln!(
        "10,000 keys written and listed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_from_etcd_restores_into_embedded_and_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::single().await.unwrap();
    let source = connect(&cluster, &namespace()).await;
    fill(&source, 300).await;
    let original = contents(&source).await;
    assert_eq!(original.len(), 902);

    let dir = tempfile::tempdir().unwrap();
    let from_etcd = dir.path().join("etcd.backup");
    assert_eq!(backup::backup(&source, &from_etcd).await.unwrap().keys, 902);

    let embedded = EmbeddedStore::open(&dir.path().join("embedded")).unwrap();
    let restored = backup::restore(&embedded, &from_etcd, false).await.unwrap();
    assert_eq!(restored.written, 902);
    assert_eq!(contents(&embedded).await, original, "etcd -> embedded");

    let from_embedded = dir.path().join("embedded.backup");
    backup::backup(&embedded, &from_embedded).await.unwrap();
    let target = connect(&cluster, &namespace()).await;
    backup::restore(&target, &from_embedded, false)
        .await
        .unwrap();
    assert_eq!(contents(&target).await, original, "embedded -> etcd");

    // The source is not empty: refused without --force, and nothing changes.
    let err = backup::restore(&source, &from_embedded, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, backup::BackupError::NotEmpty { keys: 902 }),
        "{err}"
    );
    assert_eq!(contents(&source).await, original);
}

/// The `siderite backup` and `siderite restore` commands, as an operator moves a cluster
/// from etcd to the embedded store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_backup_and_restore_move_every_key() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::single().await.unwrap();
    let ns = namespace();
    let source = connect(&cluster, &ns).await;
    fill(&source, 50).await;
    let original = contents(&source).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let data_dir = dir.path().join("data");
    let siderite = siderite_tests::workspace_bin("siderite");
    let run = |args: Vec<String>| {
        let out = std::process::Command::new(&siderite)
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let store_url = cluster.url(ns.trim_end_matches('/'));
    let (ok, out) = run(vec![
        "backup".into(),
        "--store".into(),
        store_url,
        "--out".into(),
        file.display().to_string(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{} keys", original.len())), "{out}");
    let restore = vec![
        "restore".into(),
        "--store".into(),
        "embedded".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--in".into(),
        file.display().to_string(),
    ];
    let (ok, out) = run(restore.clone());
    assert!(ok, "{out}");
    // Again: the store is no longer empty.
    let (ok, out) = run(restore);
    assert!(!ok && out.contains("--force"), "{out}");
    let embedded = EmbeddedStore::open(&data_dir).unwrap();
    assert_eq!(contents(&embedded).await, original);
}

fn serve_config(dir: &std::path::Path) -> siderite_server::serve::ServeConfig {
    siderite_server::serve::ServeConfig {
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        auto_accept: siderite_server::accept::AutoAccept::None,
        addr_file: Some(dir.join("addr")),
        boot: None,
        lifecycle: Default::default(),
        security: siderite_tests::loopback_security(),
    }
}

/// Two `serve` replicas on one etcd namespace: a machine registered through one is known
/// to the other, and registering again through the other keeps its identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_etcd() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = EtcdCluster::three().await.unwrap();
    let url: StoreUrl = cluster.url("/replicas").parse().unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let config = serve_config(dir.path());
        let deps = siderite_server::serve::Deps::from_store_url(&config, &url)
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(siderite_server::serve::run(config, deps, async move {
            let _ = stopped.await;
        }));
        let addr = siderite_tests::wait_for_file(&dir.path().join("addr"), Duration::from_secs(10))
            .await
            .unwrap();
        siderite_tests::learn(&addr, &dir.path().join("data"), Some(&url.to_string()))
            .await
            .unwrap();
        replicas.push((addr, stop, task, dir));
    }
    let mut ids = Vec::new();
    for i in 0..10u32 {
        let addr = &replicas[i as usize % 2].0;
        let r = siderite_tests::register(
            addr,
            &format!("boot-{i}"),
            siderite_server::fake::hardware(7, i),
        )
        .await
        .unwrap();
        assert!(r.created);
        ids.push(r.server_id);
    }
    for (addr, ..) in &replicas {
        let mut listed: Vec<String> = siderite_tests::list_servers(addr)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.metadata.unwrap().name)
            .collect();
        listed.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(listed, want, "replica {addr}");
    }
    let again = siderite_tests::register(
        &replicas[1].0,
        "boot-0-again",
        siderite_server::fake::hardware(7, 0),
    )
    .await
    .unwrap();
    assert!(!again.created);
    assert_eq!(again.server_id, ids[0]);
    for (_, stop, task, _dir) in replicas {
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}

/// `n` rounds of a get, a list and a CAS update through `store`; the failures, described.
async fn mixed_ops(store: &dyn Store, n: usize) -> Vec<String> {
    let mut failures = Vec::new();
    for i in 0..n {
        let key = format!("k/{}", i % 10);
        let read = match store.get(&key).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("get {key}: {e}"));
                continue;
            }
        };
        if let Err(e) = store.list("k/").await {
            failures.push(format!("list: {e}"));
        }
        let txn = Txn::new()
            .require(Precondition::unchanged(&key, read.as_ref()))
            .put(&key, i.to_le_bytes().to_vec());
        match store.txn(txn).await {
            Ok(TxnOutcome::Committed(_)) => {}
            Ok(TxnOutcome::Conflict(k)) => failures.push(format!("txn: conflict on {k}")),
            Err(e) => failures.push(format!("txn {key}: {e}")),
        }
    }
    failures
}

/// A store whose first (preferred) member is `first`, so the member killed next is the
/// one its calls were going to.
async fn connect_first(cluster: &EtcdCluster, first: usize) -> EtcdStore {
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(first);
    EtcdStore::connect(&endpoints, &namespace())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_goes_unnoticed() {
    let _serial = ONE_AT_A_TIME.lock().await;
    logs();
    let mut cluster = EtcdCluster::three().await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let victim = (leader + 1) % cluster.len();
    let store = connect_first(&cluster, victim).await;
    fill(&store, 20).await;
    assert!(mixed_ops(&store, 20).await.is_empty());
    let before = contents(&store).await;

    cluster.kill9(victim);
    let started = Instant::now();
    let failures = mixed_ops(&store, 200).await;
    assert!(
        failures.is_empty(),
        "with member {victim} (a follower, the store's first) killed: {failures:#?}\n{}",
        cluster.logs()
    );
    eprintln!(
        "200 rounds of get + list + CAS with a follower dead: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(contents(&store).await.len(), before.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_costs_one_election() {
    let _serial = ONE_AT_A_TIME.lock().await;
    logs();
    let mut cluster = EtcdCluster::three().await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let store = connect_first(&cluster, leader).await;
    fill(&store, 20).await;
    let before = contents(&store).await;

    cluster.kill9(leader);
    let killed = Instant::now();
    // Reads retry across the election.
    let get = store.get("secrets/machine/x").await.unwrap();
    assert_eq!(
        get.unwrap().value,
        b"token".to_vec(),
        "a get right after the kill"
    );
    assert_eq!(
        contents(&store).await,
        before,
        "a list right after the kill"
    );
    eprintln!(
        "first get and list {:.2} s after the leader died",
        killed.elapsed().as_secs_f64()
    );
    // A write may be refused while the two elect a leader (callers retry their CAS
    // loops); it must work again within a few election timeouts.
    let mut refused = Vec::new();
    loop {
        match store.txn(Txn::new().put("after-kill", vec![1])).await {
            Ok(TxnOutcome::Committed(_)) => break,
            Ok(other) => panic!("{other:?}"),
            Err(e) => refused.push(e.to_string()),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no write accepted 15 s after the leader died: {refused:#?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "first write {:.2} s after the leader died ({} refused before: {refused:?})",
        killed.elapsed().as_secs_f64(),
        refused.len()
    );
    let new_leader = cluster.leader().await.unwrap();
    assert_ne!(new_leader, leader);
    let started = Instant::now();
    let failures = mixed_ops(&store, 200).await;
    assert!(
        failures.is_empty(),
        "after the election: {failures:#?}\n{}",
        cluster.logs()
    );
    eprintln!(
        "200 rounds of get + list + CAS after the election: {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
