//! kill -9 of the server while agents register: after a restart on the same data
//! directory, every registration the server acknowledged is there, whole.
use std::sync::Arc;
use std::time::Duration;

use siderite_server::fake;
use siderite_tests::{list_servers, register, ServerProcess};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_registration_storm_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &[]).await.unwrap();
    let addr = server.addr.clone();
    let acked: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let seed = 0xc7;

    // 8 workers register machines back to back until the server dies under them.
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let (addr, acked) = (addr.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            for n in 0..10_000u32 {
                let i = w * 10_000 + n;
                match register(&addr, &format!("boot-{i}"), fake::hardware(seed, i)).await {
                    Ok(r) => acked.lock().await.push((r.server_id, i)),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good number are acknowledged, mid-storm.
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if acked.lock().await.len() >= 300 {
            break;
        }
    }
    server.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    assert!(acked.len() >= 300);

    let server = ServerProcess::start(&data, &[]).await.unwrap();
    let stored = list_servers(&server.addr).await.unwrap();
    let by_id: std::collections::HashMap<_, _> = stored
        .iter()
        .map(|s| (s.metadata.clone().unwrap().name, s.status.clone().unwrap()))
        .collect();
    for (id, i) in &acked {
        let st = by_id
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged server {id} lost"));
        assert_eq!(
            st.hardware.as_ref(),
            Some(&fake::hardware(seed, *i)),
            "server {id} stored whole"
        );
    }
    // Anything stored beyond the acknowledged ones was committed but its reply was lost
    // in the kill; it must be whole too.
    assert!(stored.len() >= acked.len());
    for s in &stored {
        assert!(s
            .status
            .as_ref()
            .and_then(|st| st.hardware.as_ref())
            .is_some());
    }
    println!("acknowledged {}, stored {}", acked.len(), stored.len());
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// kill -9 during a storm of lifecycle transitions (registrations, accepts, wipes,
/// allocations): after a restart every acknowledged allocation is there, bindings and
/// servers agree one to one, no server is half-way (phase and fields consistent), and the
/// work resumes until every unbound server is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_lifecycle_transitions_leaves_nothing_half_applied() {
    use sha2::Digest;
    use siderite::proto::admin::v1::{
        AllocateRequest, ApplyEnvironmentRequest, ApplyResourceRequest, ListResourcesRequest,
    };
    const AGENTS: u32 = 150;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = dir.path().join("image");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("vmlinuz"), b"k").unwrap();
    std::fs::write(image.join("initramfs.cpio.zst"), b"i").unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let args = [
        "--auto-accept",
        "all",
        "--boot-image",
        image.to_str().unwrap(),
        "--boot-http-listen",
        &http,
        "--boot-advertise",
        &http,
        "--tftp-listen",
        "off",
        "--dhcp",
        "off",
    ];
    let mut server = ServerProcess::start_at(&data, &listen, &args)
        .await
        .unwrap();
    let addr = server.addr.clone();
    let mut c = siderite_tests::admin(&addr).await.unwrap();
    let (k, i) = (dir.path().join("k"), dir.path().join("i"));
    std::fs::write(&k, b"kernel").unwrap();
    std::fs::write(&i, b"initrd").unwrap();
    let sha = |b: &[u8]| format!("{:x}", sha2::Sha512::digest(b));
    c.apply_environment(ApplyEnvironmentRequest {
        manifest: format!(
            "apiVersion: metal.siderite.dev/v1alpha1\nkind: Environment\nmetadata: {{name: talos}}\nspec:\n  kernel: {{path: {}, sha512: {}}}\n  initrd: {{path: {}, sha512: {}}}\n  args: []\n  arch: amd64\n",
            k.display(), sha(b"kernel"), i.display(), sha(b"initrd")
        ),
    })
    .await
    .unwrap();
    for m in [
        "apiVersion: metal.siderite.dev/v1alpha1\nkind: ServerClass\nmetadata: {name: all}\nspec: {selectors: []}\n",
        "apiVersion: metal.siderite.dev/v1alpha1\nkind: MachineConfig\nmetadata: {name: w}\nspec:\n  base: \"version: v1alpha1\\nmachine: {type: worker}\\n\"\n",
    ] {
        c.apply_resource(ApplyResourceRequest { manifest: m.into() })
            .await
            .unwrap();
    }
    let fleet = siderite_tests::fleet::Fleet::start(std::slice::from_ref(&addr), AGENTS, 0xc8);

    // Allocators run while registrations, accepts and wipes go on, until the server dies.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut allocators = Vec::new();
    for w in 0..4u32 {
        let (addr, acked) = (addr.clone(), acked.clone());
        allocators.push(tokio::spawn(async move {
            let Ok(mut c) = siderite_tests::admin(&addr).await else {
                return;
            };
            for n in 0..10_000u32 {
                let name = format!("b-{w}-{n}");
                match c
                    .allocate(AllocateRequest {
                        server_class: "all".into(),
                        environment: "talos".into(),
                        machine_config: "w".into(),
                        name: name.clone(),
                    })
                    .await
                {
                    Ok(r) => {
                        let v: serde_json::Value =
                            serde_json::from_str(&r.into_inner().json).unwrap();
                        let server = v["spec"]["server"].as_str().unwrap().to_string();
                        acked.lock().await.push((name, server));
                    }
                    // No clean server yet, or the server is gone.
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if acked.lock().await.len() >= 30 {
            break;
        }
    }
    server.kill9();
    for a in allocators {
        a.await.unwrap();
    }
    let acked = acked.lock().await.clone();

    let server = ServerProcess::start_at(&data, &listen, &args)
        .await
        .unwrap();
    let mut c = siderite_tests::admin(&server.addr).await.unwrap();
    let bindings: std::collections::HashMap<String, String> = c
        .list_resources(ListResourcesRequest {
            kind: "ServerBinding".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .json
        .iter()
        .map(|j| {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            (
                v["metadata"]["name"].as_str().unwrap().to_string(),
                v["spec"]["server"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (name, server) in &acked {
        assert_eq!(
            bindings.get(name),
            Some(server),
            "acknowledged binding {name} -> {server} lost"
        );
    }
    let stored = list_servers(&server.addr).await.unwrap();
    let mut bound = std::collections::HashMap::new();
    for s in &stored {
        let id = s.metadata.clone().unwrap().name;
        let st = s.status.clone().unwrap();
        let holds = ["allocated", "installing", "installed"].contains(&st.phase.as_str());
        assert_eq!(
            holds,
            !st.binding.is_empty(),
            "{id}: phase {} binding {:?}",
            st.phase,
            st.binding
        );
        let pending = ["wiping", "installing"].contains(&st.phase.as_str());
        assert_eq!(
            pending,
            !st.pending_command.is_empty(),
            "{id}: phase {} pending {:?}",
            st.phase,
            st.pending_command
        );
        assert_eq!(st.phase == "dirty", !st.reason.is_empty(), "{id}");
        if holds {
            assert_eq!(
                bindings.get(&st.binding),
                Some(&id),
                "{id}'s binding {} points elsewhere",
                st.binding
            );
            assert!(bound.insert(id.clone(), st.binding.clone()).is_none());
        }
    }
    assert_eq!(
        bound.len(),
        bindings.len(),
        "every binding holds exactly one server"
    );

    // Work resumes: the agents reconnect, every registration arrives, unbound servers are
    // wiped and clean (a wipe cut short by the kill is re-sent with its ID).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = list_servers(&server.addr).await.unwrap();
        let unbound_clean = list
            .iter()
            .filter(|s| s.status.as_ref().is_some_and(|st| st.binding.is_empty()))
            .all(|s| s.status.as_ref().is_some_and(|st| st.phase == "clean"));
        if list.len() == AGENTS as usize && unbound_clean {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "work did not resume: {} servers, phases {:?}",
            list.len(),
            list.iter()
                .map(|s| s.status.clone().unwrap().phase)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "acknowledged allocations {}, bindings after restart {}",
        acked.len(),
        bindings.len()
    );
    fleet.stop().await;
}
