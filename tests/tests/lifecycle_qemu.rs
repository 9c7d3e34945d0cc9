//! A whole life in QEMU: a machine with two used disks (pattern, GPT, ext4, md, xfs)
//! boots the agent and registers; accept -> fast wipe, checked on the host's disk images;
//! a zero wipe, checked the same way; allocate -> install: the agent kexecs into a
//! stand-in install environment (Debian's kernel and a small initramfs the tests build)
//! that fetches `talos.config` from the metadata service and writes it to the install
//! disk; the config on the disk has the patches applied; the machine boots the agent
//! again, release -> wipe -> clean.
//!
//! Needs root, qemu-system-x86, dnsmasq-base, iproute2, apt (the kernel package), wipefs,
//! and the static agent and stand-in (scripts/build-agent.sh). Fails with the reason when
//! one is missing.
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha512};
use siderite_tests::boot::{
    boot_image, init_server, lab_cli, lab_servers, nic, standin_image, tail, Machine, Proc,
};
use siderite_tests::netlab::NetLab;
use siderite_tests::workspace_bin;

const MIB: u64 = 1 << 20;
const DISK: u64 = 256 * MIB;
const UUID: &str = "4b1d2c3e-5f60-4a7b-8c9d-0e1f2a3b4c5d";

struct Lab {
    net: NetLab,
    tap: String,
    _server: Proc,
    /// `siderite.ca=... siderite.token=...` from `siderite init`.
    agent_args: String,
}

impl Lab {
    fn cli(&self, args: &[&str]) -> Result<String> {
        let cli = lab_cli(&self.net)?;
        let mut all: Vec<&str> = cli.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        self.net.exec(&all)
    }

    fn server(&self) -> Result<Value> {
        lab_servers(&self.net)?
            .into_iter()
            .find(|s| s["metadata"]["name"] == UUID)
            .context("the server is not listed")
    }

    fn log(&self) -> String {
        tail(
            &std::fs::read_to_string(self.net.dir.path().join("server.log")).unwrap_or_default(),
            60,
        )
    }

    /// Waits until the server is in `phase` (and connected, when asked).
    fn wait_phase(
        &self,
        m: Option<&Machine>,
        phase: &str,
        connected: bool,
        timeout: Duration,
    ) -> Result<(Value, Duration)> {
        let start = Instant::now();
        loop {
            if let Ok(s) = self.server() {
                let ok = s["status"]["phase"] == phase
                    && (!connected || s["status"]["connected"] == true);
                if ok {
                    return Ok((s, start.elapsed()));
                }
                if s["status"]["phase"] == "dirty" && phase != "dirty" {
                    anyhow::bail!(
                        "the server went dirty: {}\ndescribe:\n{}",
                        s["status"]["reason"],
                        self.cli(&["describe", "server", UUID]).unwrap_or_default()
                    );
                }
            }
            if start.elapsed() > timeout {
                anyhow::bail!(
                    "not {phase} within {timeout:?}\ndescribe:\n{}\nconsole:\n{}\nserver log:\n{}",
                    self.cli(&["describe", "server", UUID]).unwrap_or_default(),
                    m.map(|m| tail(&m.console_text(), 50)).unwrap_or_default(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn start_server(net: &NetLab, image_dir: &Path) -> Result<Proc> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(net.dir.path().join("server.log"))?;
    let gw = &net.gateway;
    let child = net
        .command(workspace_bin("siderite"))
        .args(["serve", "--no-http", "--listen", &format!("{gw}:7070")])
        .arg("--data-dir")
        .arg(net.dir.path().join("server-data"))
        .arg("--boot-image")
        .arg(image_dir)
        .args([
            "--boot-http-listen",
            &format!("{gw}:8080"),
            "--boot-advertise",
            &format!("{gw}:8080"),
            "--tftp-listen",
            "off",
            "--dhcp",
            "off",
        ])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the server in the lab")?;
    Ok(Proc(child))
}

fn machine(lab: &Lab, name: &str, disks: &[(&Path, &str)]) -> Result<Machine> {
    let (kernel, initrd) = boot_image()?;
    let mut devices = Vec::new();
    devices.extend(nic("virtio-net-pci", &lab.tap, "n0", "52:54:00:78:00:01"));
    for (i, (path, serial)) in disks.iter().enumerate() {
        devices.push("-drive".into());
        devices.push(format!(
            "file={},if=none,id=d{i},format=raw,cache=writethrough",
            path.display()
        ));
        devices.push("-device".into());
        devices.push(format!("virtio-blk-pci,drive=d{i},serial={serial}"));
    }
    devices.extend([
        "-smbios".to_string(),
        format!("type=1,uuid={UUID},serial=LIFE-0001,manufacturer=Siderite Labs,product=Life Sled"),
    ]);
    let append = format!(
        "console=ttyS0 siderite.server={}:7070 {}",
        lab.net.gateway, lab.agent_args
    );
    Machine::start(&lab.net, name, &append, &kernel, &initrd, &devices)
}

/// What `wipefs --no-act` finds on an image (empty when nothing).
fn wipefs(path: &Path) -> Result<String> {
    let out = std::process::Command::new("wipefs")
        .arg("--no-act")
        .arg(path)
        .output()
        .context("running wipefs (util-linux) on the host")?;
    ensure!(
        out.status.success(),
        "wipefs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// No partition table (either GPT copy, the protective MBR) nor any signature.
fn assert_clean(path: &Path) -> Result<()> {
    let found = wipefs(path)?;
    ensure!(
        found.is_empty(),
        "{} still has signatures:\n{found}",
        path.display()
    );
    ensure!(
        read_at(path, 0, MIB as usize)?.iter().all(|b| *b == 0),
        "{}: the first MiB is not zero",
        path.display()
    );
    ensure!(
        !read_at(path, DISK - 512, 512)?.starts_with(b"EFI PART"),
        "{}: the backup GPT header survived",
        path.display()
    );
    // ext4's magic in partition 1 (which started at 1 MiB).
    ensure!(
        read_at(path, MIB + 1024 + 0x38, 2)? != [0x53, 0xEF],
        "{}: the ext4 superblock survived",
        path.display()
    );
    Ok(())
}

fn all_zero(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4 * MIB as usize];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

fn sha512_file(path: &Path) -> Result<String> {
    Ok(format!("{:x}", Sha512::digest(std::fs::read(path)?)))
}

const BASE_CONFIG: &str = r#"version: v1alpha1
machine:
  type: worker
  token: stand-in-token
  install:
    disk: /dev/sda
    wipe: false
  network: {}
cluster:
  controlPlane:
    endpoint: https://10.78.0.1:6443
  clusterName: lab
"#;

#[test]
fn accept_wipe_install_release_in_qemu() -> Result<()> {
    siderite_tests::netlab::require_root()?;
    siderite_tests::netlab::require_tool(&["/usr/sbin/wipefs", "/sbin/wipefs"], "util-linux")?;
    let (kernel, _) = boot_image()?;
    let image_dir = kernel.parent().context("boot image dir")?.to_path_buf();
    let standin = standin_image()?;
    let mut net = NetLab::new("life", "10.78.0")?;
    let tap = net.tap()?;
    let init = init_server(&net.dir.path().join("server-data"))?;
    let server = start_server(&net, &image_dir)?;
    let lab = Lab {
        net,
        tap,
        _server: server,
        agent_args: init.agent_args(),
    };
    let dir = lab.net.dir.path().to_path_buf();
    let (a, b) = (dir.join("disk-a.img"), dir.join("disk-b.img"));
    for d in [&a, &b] {
        siderite_agent::wipe::bench::make_disk(d, DISK, true)?;
        ensure!(!wipefs(d)?.is_empty(), "the test disk has no signatures");
    }
    let disks = [(a.as_path(), "DISK-A"), (b.as_path(), "DISK-B")];

    // Discovered, then accepted: the first wipe (fast) runs by itself.
    let mut m = machine(&lab, "life-1", &disks)?;
    lab.wait_phase(Some(&m), "discovered", true, Duration::from_secs(180))?;
    lab.cli(&["accept", UUID])?;
    let (s, took) = lab.wait_phase(Some(&m), "clean", true, Duration::from_secs(120))?;
    println!(
        "figure: accept -> clean (fast wipe of 2 x 256 MiB, TCG): {:.1} s",
        took.as_secs_f64()
    );
    let last = s["status"]["lastWipe"].as_array().context("lastWipe")?;
    ensure!(
        last.len() == 2 && last.iter().all(|d| d["ok"] == true),
        "{s:#}"
    );
    ensure!(s["status"]["wipeMode"] == "fast", "{s:#}");
    for d in [&a, &b] {
        assert_clean(d)?;
    }

    // A zero wipe on an operator's request: every byte of both disks reads zero.
    lab.cli(&["wipe", UUID, "--mode", "zero"])?;
    lab.wait_phase(Some(&m), "wiping", false, Duration::from_secs(10))
        .or_else(|_| lab.wait_phase(Some(&m), "clean", true, Duration::from_secs(1)))?;
    let (s, took) = lab.wait_phase(Some(&m), "clean", true, Duration::from_secs(180))?;
    println!(
        "figure: zero wipe of 2 x 256 MiB (TCG): {:.1} s",
        took.as_secs_f64()
    );
    ensure!(s["status"]["wipeMode"] == "zero", "{s:#}");
    for d in [&a, &b] {
        ensure!(
            all_zero(d)?,
            "{} is not all zeros after a zero wipe",
            d.display()
        );
    }

    // The install environment, the class, the config; allocate -> install.
    let (sk, si) = (
        sha512_file(&standin.join("vmlinuz"))?,
        sha512_file(&standin.join("initramfs.cpio.zst"))?,
    );
    let files = [
        (
            "env.yaml",
            format!(
                "apiVersion: metal.siderite.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: standin\nspec:\n  kernel:\n    path: {}\n    sha512: {sk}\n  initrd:\n    path: {}\n    sha512: {si}\n  args: [console=ttyS0]\n  arch: amd64\n",
                standin.join("vmlinuz").display(),
                standin.join("initramfs.cpio.zst").display()
            ),
        ),
        (
            "class.yaml",
            "apiVersion: metal.siderite.dev/v1alpha1\nkind: ServerClass\nmetadata:\n  name: sleds\nspec:\n  selectors:\n    - {field: system.manufacturer, op: In, values: [Siderite Labs]}\n    - {field: disks.count, op: Gt, values: [\"1\"]}\n".to_string(),
        ),
        (
            "config.yaml",
            serde_json::to_string(&serde_json::json!({
                "apiVersion": "metal.siderite.dev/v1alpha1",
                "kind": "MachineConfig",
                "metadata": {"name": "workers"},
                "spec": {
                    "base": BASE_CONFIG,
                    "patches": [
                        [
                            {"op": "test", "path": "/machine/type", "value": "worker"},
                            {"op": "add", "path": "/machine/kubelet", "value": {"extraArgs": {"rotate-server-certificates": "true"}}},
                            {"op": "replace", "path": "/cluster/clusterName", "value": "lifecycle-lab"}
                        ],
                        {"machine": {"sysctls": {"vm.nr_hugepages": "64"}}}
                    ],
                    "hostname": "sled-{serial}",
                    "installDisk": {"serial": "DISK-B"}
                }
            }))?,
        ),
    ];
    for (name, text) in &files {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        let out = lab.cli(&["apply", "-f", path.to_str().context("path")?])?;
        println!("{}", out.trim());
    }
    let classes = lab.cli(&["get", "serverclasses"])?;
    println!("{classes}");
    ensure!(
        classes.lines().any(|l| l.starts_with("sleds")
            && l.split_whitespace().collect::<Vec<_>>()[2..] == ["1", "1"]),
        "the class matches one free server:\n{classes}"
    );
    let out = lab.cli(&[
        "allocate",
        "--class",
        "sleds",
        "--environment",
        "standin",
        "--config",
        "workers",
        "--name",
        "worker-1",
    ])?;
    ensure!(out.contains(UUID), "{out}");
    // The agent kexecs into the stand-in, which fetches its config, writes it to the
    // install disk and powers off.
    let started = Instant::now();
    let (s, _) = lab.wait_phase(Some(&m), "installed", false, Duration::from_secs(240))?;
    println!(
        "figure: allocate -> installed (download, kexec, stand-in boot, config fetch): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(s["status"]["binding"] == "worker-1", "{s:#}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while m.child.try_wait()?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "the stand-in did not power off:\n{}",
            tail(&m.console_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let console = m.console_text();
    ensure!(console.contains("standin: wrote"), "{}", tail(&console, 40));
    drop(m);
    let head = read_at(&b, 0, 64 * 1024)?;
    let text = String::from_utf8_lossy(&head);
    ensure!(
        text.starts_with("SIDERITE-STANDIN-CONFIG v1"),
        "the install disk (DISK-B) has no config: {:?}",
        &text[..80.min(text.len())]
    );
    let body = text.split_once('\n').map(|x| x.1).unwrap_or_default();
    let rendered: serde_yaml_ng::Value = serde_yaml_ng::from_str(body.trim_end_matches('\0'))
        .context("the config on the disk is YAML")?;
    let get = |path: &[&str]| {
        let mut v = &rendered;
        for p in path {
            v = &v[*p];
        }
        v.clone()
    };
    ensure!(
        get(&["cluster", "clusterName"]).as_str() == Some("lifecycle-lab"),
        "{body}"
    );
    ensure!(
        get(&[
            "machine",
            "kubelet",
            "extraArgs",
            "rotate-server-certificates"
        ])
        .as_str()
            == Some("true"),
        "{body}"
    );
    ensure!(
        get(&["machine", "sysctls", "vm.nr_hugepages"]).as_str() == Some("64"),
        "{body}"
    );
    ensure!(
        get(&["machine", "network", "hostname"]).as_str() == Some("sled-life-0001"),
        "{body}"
    );
    ensure!(
        get(&["machine", "install", "disk"]).as_str() == Some("/dev/vdb"),
        "{body}"
    );
    ensure!(all_zero(&a)?, "the stand-in touched the other disk");

    // The machine boots the agent again (as it would from the network after a reset);
    // release -> wipe -> clean.
    // The kexec'd agent's TCP session may still look alive: wait for the new boot itself.
    let first_boot = lab.server()?["status"]["bootId"].clone();
    let m = machine(&lab, "life-2", &disks)?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (s, _) = lab.wait_phase(Some(&m), "installed", true, Duration::from_secs(180))?;
        if s["status"]["bootId"] != first_boot {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the agent did not boot again:\n{}",
            tail(&m.console_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let t = Instant::now();
    let out = lab.cli(&["release", "worker-1"])?;
    ensure!(out.contains("released"), "{out}");
    let (s, _) = lab.wait_phase(Some(&m), "clean", true, Duration::from_secs(120))?;
    println!(
        "figure: release -> clean in QEMU (fast wipe, TCG): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    ensure!(
        s["status"]["binding"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{s:#}"
    );
    for d in [&a, &b] {
        assert_clean(d)?;
    }
    ensure!(
        !read_at(&b, 0, 64)?.starts_with(b"SIDERITE-STANDIN"),
        "the installed config survived the release wipe"
    );
    let bindings = lab.cli(&["get", "bindings"])?;
    ensure!(!bindings.contains("worker-1"), "{bindings}");
    let described = lab.cli(&["describe", "server", UUID])?;
    for word in ["WipeSucceeded", "Allocated", "InstallSucceeded", "Released"] {
        ensure!(
            described.contains(word),
            "describe lacks {word}:\n{described}"
        );
    }
    Ok(())
}
