//! The lifecycle over real sockets, without QEMU: an in-process server with its boot HTTP
//! (assets and the metadata service) on loopback, and real agents (the agent library's
//! session and executor) whose disks are image files and whose power is a fake.
//!
//! accept -> verified wipe -> clean; ServerClass counts; concurrent allocations never share
//! a server; install hands the agent the verified kernel/initrd and a metadata URL; the
//! metadata service answers only that machine's token; a failed wipe leaves the server
//! dirty with the reason and out of allocation; cordon; release -> wipe -> clean.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha512};
use siderite::proto::admin::v1::{
    AcceptServerRequest, AllocateRequest, ApplyEnvironmentRequest, ApplyResourceRequest,
    CordonServerRequest, GetServerRequest, ReleaseRequest, Server, WipeServerRequest,
};
use siderite::proto::agent::v1::{BlockDevice, Hardware};
use siderite_agent::commands::Executor;
use siderite_agent::install::FakePower;
use siderite_server::accept::AutoAccept;
use siderite_server::boot::service::BootConfig;
use siderite_tests::InProcess;

const MIB: u64 = 1 << 20;
const DISK: u64 = 16 * MIB;

struct Agent {
    id: String,
    disks: tempfile::TempDir,
    power: Arc<FakePower>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    fn disk(&self, name: &str) -> PathBuf {
        self.disks.path().join(name)
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// A machine with two used disks (GPT, ext4, md, xfs over a pattern) and a removable USB
/// stick the server must not name.
fn hardware(seed: u32, dir: &Path) -> anyhow::Result<Hardware> {
    let mut hw = siderite_server::fake::hardware(seed, 1);
    hw.disks.clear();
    for (name, serial) in [("vda", format!("A-{seed}")), ("vdb", format!("B-{seed}"))] {
        siderite_agent::wipe::bench::make_disk(&dir.join(name), DISK, true)?;
        hw.disks.push(BlockDevice {
            name: name.into(),
            dev_path: format!("/dev/{name}"),
            size_bytes: DISK,
            serial,
            bus: "virtio".into(),
            disk_type: "hdd".into(),
            logical_sector_size: 512,
            physical_sector_size: 512,
            ..Default::default()
        });
    }
    hw.disks.push(BlockDevice {
        name: "sdz".into(),
        dev_path: "/dev/sdz".into(),
        size_bytes: 8 * MIB,
        bus: "usb".into(),
        removable: true,
        ..Default::default()
    });
    if let Some(sys) = hw.system.as_mut() {
        sys.manufacturer = "Siderite Labs".into();
    }
    Ok(hw)
}

fn start_agent(addr: &str, seed: u32) -> anyhow::Result<Agent> {
    let disks = tempfile::tempdir()?;
    let hw = hardware(seed, disks.path())?;
    let id = hw
        .system
        .as_ref()
        .map(|s| s.uuid.clone())
        .unwrap_or_default();
    let power = Arc::new(FakePower::default());
    let executor = Executor::new(
        Arc::new(siderite_agent::wipe::FileOpener::new(disks.path())),
        power.clone(),
        siderite_agent::commands::Timing {
            settle: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let config = siderite_tests::agent_config(vec![addr.to_string()], format!("boot-{seed}"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(siderite_agent::session::run_with(
        config,
        move || hw.clone(),
        executor,
        async move {
            let _ = rx.await;
        },
    ));
    Ok(Agent {
        id,
        disks,
        power,
        stop: Some(tx),
        task,
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

async fn admin(addr: &str) -> siderite_server::cli::Admin {
    siderite_tests::admin(addr).await.expect("admin client")
}

async fn get(c: &mut siderite_server::cli::Admin, id: &str) -> Server {
    c.get_server(GetServerRequest { name: id.into() })
        .await
        .expect("get server")
        .into_inner()
}

fn phase(s: &Server) -> String {
    s.status
        .as_ref()
        .map(|s| s.phase.clone())
        .unwrap_or_default()
}

async fn wait_phase(c: &mut siderite_server::cli::Admin, id: &str, want: &str) -> Server {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = get(c, id).await;
        let connected = s.status.as_ref().is_some_and(|s| s.connected);
        if phase(&s) == want && connected {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "server {id} not {want} (is {}):\n{s:#?}",
            phase(&s)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No partition table nor filesystem/RAID signature is left on the image.
fn assert_wiped(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 512];
    f.read_exact_at(&mut buf, 512).unwrap();
    assert!(
        !buf.starts_with(b"EFI PART"),
        "primary GPT left on {path:?}"
    );
    f.read_exact_at(&mut buf, DISK - 512).unwrap();
    assert!(!buf.starts_with(b"EFI PART"), "backup GPT left on {path:?}");
    f.read_exact_at(&mut buf[..2], 510).unwrap();
    assert_ne!(&buf[..2], &[0x55, 0xAA], "MBR signature left on {path:?}");
    f.read_exact_at(&mut buf[..2], MIB + 1024 + 0x38).unwrap();
    assert_ne!(&buf[..2], &[0x53, 0xEF], "ext4 magic left on {path:?}");
}

async fn http_status(addr: &str, url: &str) -> (u16, String) {
    siderite_tests::https_get(addr, url)
        .await
        .expect("HTTPS request")
}

const CONFIG: &str = r#"{
  "apiVersion": "metal.siderite.dev/v1alpha1",
  "kind": "MachineConfig",
  "metadata": {"name": "workers"},
  "spec": {
    "base": "version: v1alpha1\nmachine:\n  type: worker\n  token: machine-secret-token\n  install:\n    disk: /dev/sda\ncluster:\n  clusterName: lab\n",
    "patches": [
      [{"op": "replace", "path": "/cluster/clusterName", "value": "patched"}],
      {"machine": {"sysctls": {"kernel.panic": "10"}}}
    ],
    "hostname": "node-{serial}",
    "installDisk": {"name": "vdb"}
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wipe_allocate_install_release_and_the_metadata_service() {
    let http_port = free_port();
    let server = InProcess::start_with(AutoAccept::None, |config, dir| {
        let image = dir.join("agent-image");
        std::fs::create_dir_all(&image)?;
        std::fs::write(image.join("vmlinuz"), b"agent kernel")?;
        std::fs::write(image.join("initramfs.cpio.zst"), b"agent initrd")?;
        let http = format!("127.0.0.1:{http_port}");
        config.boot = Some(BootConfig {
            image_dir: image,
            http_listen: http.parse()?,
            advertise: http,
            tftp_listen: None,
            ipxe_dir: dir.to_path_buf(),
            dhcp: None,
            interfaces: vec![],
            agent_args: vec![],
            arm64_boot_file: None,
        });
        config.lifecycle.reconcile_every = Duration::from_millis(200);
        config.lifecycle.install_timeout = Duration::from_secs(5);
        Ok(())
    })
    .await
    .unwrap();
    // The metadata service is on the TLS port, pinned like everything else.
    let base = format!("https://{}", server.addr);
    let mut c = admin(&server.addr).await;
    let agents: Vec<Agent> = (0..3)
        .map(|i| start_agent(&server.addr, 700 + i).unwrap())
        .collect();

    // Accept: every agent's two disks are wiped (fast, the site default) and verified;
    // the removable stick is not named.
    for a in &agents {
        wait_phase(&mut c, &a.id, "discovered").await;
        c.accept_server(AcceptServerRequest { name: a.id.clone() })
            .await
            .unwrap();
    }
    for a in &agents {
        let s = wait_phase(&mut c, &a.id, "clean").await;
        let st = s.status.unwrap();
        assert_eq!(st.wipe_mode, "fast");
        let disks: Vec<_> = st.last_wipe.iter().map(|d| d.disk.as_str()).collect();
        assert_eq!(disks, ["vda", "vdb"], "only the fixed disks are named");
        assert!(st.last_wipe.iter().all(|d| d.ok && d.verified_bytes > 0));
        assert!(st
            .last_wipe
            .iter()
            .any(|d| d.signatures_removed.iter().any(|s| s.starts_with("gpt"))));
        assert!(st.events.iter().any(|e| e.reason == "WipeSucceeded"));
        assert_wiped(&a.disk("vda"));
        assert_wiped(&a.disk("vdb"));
    }

    // A zero wipe on request: every byte reads zero afterwards.
    let a0 = &agents[0];
    c.wipe_server(WipeServerRequest {
        name: a0.id.clone(),
        mode: "zero".into(),
    })
    .await
    .unwrap();
    let s = wait_phase(&mut c, &a0.id, "clean").await;
    assert_eq!(s.status.as_ref().unwrap().wipe_mode, "zero");
    for d in ["vda", "vdb"] {
        let bytes = std::fs::read(a0.disk(d)).unwrap();
        assert!(
            bytes.iter().all(|b| *b == 0),
            "{d} not zero after a zero wipe"
        );
    }
    // An unknown mode is refused and changes nothing.
    let err = c
        .wipe_server(WipeServerRequest {
            name: a0.id.clone(),
            mode: "shred".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(phase(&get(&mut c, &a0.id).await), "clean");

    // Resources: an Environment (verified), a class, a config.
    let dir = tempfile::tempdir().unwrap();
    let (k, i) = (dir.path().join("vmlinuz"), dir.path().join("initrd"));
    std::fs::write(&k, b"stand-in kernel").unwrap();
    std::fs::write(&i, b"stand-in initrd").unwrap();
    let sha = |b: &[u8]| format!("{:x}", Sha512::digest(b));
    c.apply_environment(ApplyEnvironmentRequest {
        manifest: format!(
            "apiVersion: metal.siderite.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: talos\nspec:\n  kernel: {{path: {}, sha512: {}}}\n  initrd: {{path: {}, sha512: {}}}\n  args: [console=ttyS0]\n  arch: amd64\n",
            k.display(),
            sha(b"stand-in kernel"),
            i.display(),
            sha(b"stand-in initrd")
        ),
    })
    .await
    .unwrap();
    let class = c
        .apply_resource(ApplyResourceRequest {
            manifest: "apiVersion: metal.siderite.dev/v1alpha1\nkind: ServerClass\nmetadata: {name: labs}\nspec:\n  selectors:\n    - {field: system.manufacturer, op: In, values: [Siderite Labs]}\n    - {field: disks.count, op: Gt, values: [\"1\"]}\n".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let class: serde_json::Value = serde_json::from_str(&class.json).unwrap();
    assert_eq!(class["status"]["matching"], 3, "{class}");
    assert_eq!(class["status"]["free"], 3, "{class}");
    // describe's view: every class, and why a server is not in one.
    c.apply_resource(ApplyResourceRequest {
        manifest: "apiVersion: metal.siderite.dev/v1alpha1\nkind: ServerClass\nmetadata: {name: huge}\nspec:\n  selectors:\n    - {field: memory.bytes, op: Gt, values: [1TiB]}\n".into(),
    })
    .await
    .unwrap();
    let classes = get(&mut c, &a0.id).await.status.unwrap().server_classes;
    let by_name = |n: &str| classes.iter().find(|m| m.name == n).unwrap().clone();
    assert!(by_name("labs").matches);
    let huge = by_name("huge");
    assert!(
        !huge.matches && huge.reasons[0].contains("memory.bytes"),
        "{huge:?}"
    );
    // A bad resource is refused whole.
    let bad = c
        .apply_resource(ApplyResourceRequest {
            manifest: "apiVersion: metal.siderite.dev/v1alpha1\nkind: ServerClass\nmetadata: {name: bad}\nspec:\n  selectors:\n    - {field: cpu.colour, op: In, values: [red]}\n".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    c.apply_resource(ApplyResourceRequest {
        manifest: CONFIG.into(),
    })
    .await
    .unwrap();

    // Cordon keeps a clean server out of allocation.
    for a in &agents[1..] {
        c.cordon_server(CordonServerRequest {
            name: a.id.clone(),
            cordon: true,
        })
        .await
        .unwrap();
    }

    // Five concurrent allocations for one free server: exactly one wins.
    let mut tasks = Vec::new();
    for n in 0..5 {
        let addr = server.addr.clone();
        tasks.push(tokio::spawn(async move {
            admin(&addr)
                .await
                .allocate(AllocateRequest {
                    server_class: "labs".into(),
                    environment: "talos".into(),
                    machine_config: "workers".into(),
                    name: format!("w-{n}"),
                })
                .await
                .map(|r| r.into_inner().json)
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(json) => won.push(json),
            Err(e) => assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one allocation wins: {won:?}");
    let binding: serde_json::Value = serde_json::from_str(&won[0]).unwrap();
    assert_eq!(binding["spec"]["server"], a0.id.as_str());
    let bname = binding["metadata"]["name"].as_str().unwrap().to_string();

    // Install: the agent got the verified kernel and initrd over HTTP and the cmdline
    // with the metadata URL, and kexec'd (into the fake).
    wait_phase(&mut c, &a0.id, "installing").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while a0.power.loaded().is_empty() {
        assert!(Instant::now() < deadline, "no kexec");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = a0.power.loaded()[0].clone();
    assert_eq!(call.kernel, b"stand-in kernel");
    assert_eq!(call.initrd.as_deref(), Some(&b"stand-in initrd"[..]));
    assert!(call
        .cmdline
        .starts_with("console=ttyS0 talos.platform=metal talos.config="));
    let url = call
        .cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("talos.config="))
        .unwrap()
        .to_string();
    assert!(url.starts_with(&format!("{base}/configdata/{}?token=", a0.id)));
    let token = url.split("token=").nth(1).unwrap().to_string();

    // The metadata service: 403 for anonymous callers, wrong tokens, this token on
    // another server's path, and unknown servers; nothing of the config in any answer.
    let other = &agents[1].id;
    for bad in [
        format!("{base}/configdata/{}", a0.id),
        format!("{base}/configdata/{}?token=", a0.id),
        format!("{base}/configdata/{}?token={}", a0.id, "0".repeat(64)),
        format!("{base}/configdata/{other}?token={token}"),
        format!("{base}/configdata/not-a-server?token={token}"),
        format!("{base}/configdata/{}?token={}", a0.id, &token[..63]),
    ] {
        let (code, body) = http_status(&server.addr, &bad).await;
        assert_eq!(code, 403, "{bad}");
        assert_eq!(body, "forbidden\n");
    }
    assert_eq!(phase(&get(&mut c, &a0.id).await), "installing");
    // The machine itself: its config, rendered, and the server is installed.
    let (code, body) = http_status(&server.addr, &url).await;
    assert_eq!(code, 200, "{body}");
    let cfg: serde_json::Value = serde_yaml_ng::from_str(&body).unwrap();
    assert_eq!(cfg["cluster"]["clusterName"], "patched");
    assert_eq!(cfg["machine"]["sysctls"]["kernel.panic"], "10");
    assert_eq!(cfg["machine"]["install"]["disk"], "/dev/vdb");
    let serial = get(&mut c, &a0.id)
        .await
        .status
        .unwrap()
        .hardware
        .unwrap()
        .system
        .unwrap()
        .serial;
    assert_eq!(
        cfg["machine"]["network"]["hostname"],
        format!("node-{}", serial.to_lowercase())
    );
    let s = wait_phase(&mut c, &a0.id, "installed").await;
    assert_eq!(s.status.as_ref().unwrap().binding, bname);
    // The config never shows through the admin API.
    let dump = format!("{:?}", get(&mut c, &a0.id).await);
    for secret in ["machine-secret-token", token.as_str()] {
        let at = dump
            .find(secret)
            .map(|i| &dump[i.saturating_sub(300)..i + secret.len()]);
        assert!(at.is_none(), "{secret} shows through the admin API: {at:?}");
    }

    // A failed wipe: one disk disappears; the server goes dirty with the reason and is
    // never allocated, even uncordoned.
    let a1 = &agents[1];
    std::fs::remove_file(a1.disk("vdb")).unwrap();
    c.wipe_server(WipeServerRequest {
        name: a1.id.clone(),
        mode: String::new(),
    })
    .await
    .unwrap();
    let s = wait_phase(&mut c, &a1.id, "dirty").await;
    let st = s.status.unwrap();
    assert!(
        st.reason.contains("vdb"),
        "the reason names the disk: {}",
        st.reason
    );
    assert!(st.last_wipe.iter().any(|d| d.disk == "vdb" && !d.ok));
    c.cordon_server(CordonServerRequest {
        name: a1.id.clone(),
        cordon: false,
    })
    .await
    .unwrap();
    let err = c
        .allocate(AllocateRequest {
            server_class: "labs".into(),
            environment: "talos".into(),
            machine_config: "workers".into(),
            name: "w-dirty".into(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("no clean"), "{err:?}");
    assert_eq!(phase(&get(&mut c, &a1.id).await), "dirty");
    // Uncordoning the third makes it allocatable.
    c.cordon_server(CordonServerRequest {
        name: agents[2].id.clone(),
        cordon: false,
    })
    .await
    .unwrap();
    let r = c
        .allocate(AllocateRequest {
            server_class: "labs".into(),
            environment: "talos".into(),
            machine_config: "workers".into(),
            name: "w-third".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.json.contains(&agents[2].id));
    // Its install is handed over (kexec) but nothing ever fetches the config: after the
    // install timeout the server is dirty, with the reason, and its binding is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = get(&mut c, &agents[2].id).await;
        if phase(&s) == "dirty" {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the install never timed out: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let st = s.status.unwrap();
    assert!(
        st.reason.contains("did not fetch its config within 5 s"),
        "{}",
        st.reason
    );
    assert!(st.binding.is_empty());

    // Release: the binding and the token go, the server is wiped and clean again.
    let t = Instant::now();
    c.release(ReleaseRequest { name: bname }).await.unwrap();
    wait_phase(&mut c, &a0.id, "clean").await;
    println!(
        "figure: release -> clean (fast wipe of 2 x 16 MiB files): {:?}",
        t.elapsed()
    );
    let (code, _) = http_status(&server.addr, &url).await;
    assert_eq!(code, 403, "a released machine's token is dead");
    assert_wiped(&a0.disk("vdb"));

    for a in agents {
        a.stop().await;
    }
    server.stop().await.unwrap();
}
