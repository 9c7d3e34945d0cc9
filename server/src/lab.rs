//! `siderite lab up|down`: a lab on one box. A network namespace with a bridge, the site's
//! DHCP server (dnsmasq, addresses only) on its own namespace on that segment, the
//! siderite server with its boot services on the bridge, and N QEMU (TCG) machines with
//! blank disks that PXE-boot into the agent and register. The host reaches the server
//! over a veth pair. `down` removes everything `up` made.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub const NS: &str = "siderite-lab";
const SITE_NS: &str = "siderite-lab-site";
const HOST_IF: &str = "sdrlab-host";
const NET: &str = "10.88.0";
/// The server's address as seen from the host.
pub const HOST_SIDE_ADDR: &str = "10.88.255.2";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Debug, Clone)]
pub struct LabConfig {
    pub dir: PathBuf,
    pub image: PathBuf,
    pub machines: usize,
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub wait: Duration,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

fn tool(candidates: &[&str], package: &str) -> Result<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "{} not found: apt-get install {package} (scripts/setup-debian.sh does)",
                candidates[0]
            )
        })
}

/// Starts a process in the background, detached from this one, and records its PID.
fn spawn_detached(dir: &Path, name: &str, cmd: &mut Command) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let pid = child.id();
    std::fs::write(dir.join(format!("{name}.pid")), pid.to_string())?;
    Ok(pid)
}

pub async fn up(config: LabConfig) -> Result<String> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the lab needs root (network namespaces, bridges, taps)"
    );
    let dnsmasq = tool(&["/usr/sbin/dnsmasq"], "dnsmasq-base")?;
    let qemu = tool(&["/usr/bin/qemu-system-x86_64"], "qemu-system-x86")?;
    tool(&["/usr/lib/ipxe/undionly.kpxe"], "ipxe")?;
    ensure!(
        config.image.join("vmlinuz").exists() && config.image.join("initramfs.cpio.zst").exists(),
        "no boot image in {}: build one with `siderite-image build --out {}`",
        config.image.display(),
        config.image.display()
    );
    if Path::new("/run/netns").join(NS).exists() {
        bail!("a lab is already up (namespace {NS}); run `siderite lab down` first");
    }
    let dir = std::fs::canonicalize(&config.dir).or_else(|_| {
        std::fs::create_dir_all(&config.dir)?;
        std::fs::canonicalize(&config.dir)
    })?;
    let image = std::fs::canonicalize(&config.image)?;
    let exe = std::env::current_exe()?;

    ip(&["netns", "add", NS])?;
    ip(&["netns", "add", SITE_NS])?;
    in_ns(NS, &["ip", "link", "set", "lo", "up"])?;
    in_ns(NS, &["ip", "link", "add", "br0", "type", "bridge"])?;
    in_ns(
        NS,
        &["ip", "addr", "add", &format!("{NET}.1/24"), "dev", "br0"],
    )?;
    in_ns(NS, &["ip", "link", "set", "br0", "up"])?;
    // The site's DHCP server on its own host on the segment.
    in_ns(
        NS,
        &[
            "ip", "link", "add", "site0", "type", "veth", "peer", "name", "eth0", "netns", SITE_NS,
        ],
    )?;
    in_ns(NS, &["ip", "link", "set", "site0", "master", "br0"])?;
    in_ns(NS, &["ip", "link", "set", "site0", "up"])?;
    in_ns(
        SITE_NS,
        &["ip", "addr", "add", &format!("{NET}.2/24"), "dev", "eth0"],
    )?;
    in_ns(SITE_NS, &["ip", "link", "set", "eth0", "up"])?;
    // The host reaches the server over its own small link.
    ip(&[
        "link", "add", HOST_IF, "type", "veth", "peer", "name", "host0", "netns", NS,
    ])?;
    ip(&["addr", "add", "10.88.255.1/30", "dev", HOST_IF])?;
    ip(&["link", "set", HOST_IF, "up"])?;
    in_ns(
        NS,
        &[
            "ip",
            "addr",
            "add",
            &format!("{HOST_SIDE_ADDR}/30"),
            "dev",
            "host0",
        ],
    )?;
    in_ns(NS, &["ip", "link", "set", "host0", "up"])?;

    spawn_detached(
        &dir,
        "dnsmasq",
        Command::new("ip")
            .args(["netns", "exec", SITE_NS])
            .arg(&dnsmasq)
            .args([
                "--no-daemon",
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                &format!("--dhcp-range={NET}.100,{NET}.199,255.255.255.0,1h"),
                &format!("--dhcp-option=option:router,{NET}.1"),
                &format!("--dhcp-leasefile={}", dir.join("dnsmasq.leases").display()),
                "--pid-file=",
            ]),
    )?;
    spawn_detached(
        &dir,
        "server",
        Command::new("ip")
            .args(["netns", "exec", NS])
            .arg(&exe)
            .args([
                "serve",
                "--listen",
                "0.0.0.0:7070",
                "--http-listen",
                &format!("{NET}.1:7071"),
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .arg("--boot-image")
            .arg(&image)
            .args([
                "--boot-http-listen",
                &format!("{NET}.1:8080"),
                "--boot-advertise",
                &format!("{NET}.1:8080"),
                "--tftp-listen",
                &format!("{NET}.1:69"),
                "--dhcp",
                "proxy",
                "--boot-interface",
                "br0",
            ]),
    )?;

    for i in 0..config.machines {
        let tap = format!("tap{i}");
        in_ns(NS, &["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        in_ns(NS, &["ip", "link", "set", &tap, "master", "br0"])?;
        in_ns(NS, &["ip", "link", "set", &tap, "up"])?;
        let mut disks = Vec::new();
        for (d, size) in [("a", 8u64 << 30), ("b", 4u64 << 30)] {
            let path = dir.join(format!("machine{i}-{d}.img"));
            std::fs::File::create(&path)?.set_len(size)?;
            disks.push(path);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", NS]).arg(&qemu).args([
            "-accel",
            "tcg",
            "-m",
            &config.memory_mib.to_string(),
            "-display",
            "none",
            "-monitor",
            "none",
            "-boot",
            "n",
        ]);
        cmd.arg("-serial").arg(format!(
            "file:{}",
            dir.join(format!("machine{i}.console")).display()
        ));
        cmd.args([
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac=52:54:00:88:00:{:02x}", i + 1),
        ]);
        cmd.arg("-drive").arg(format!(
            "file={},if=none,id=d0,format=raw",
            disks[0].display()
        ));
        cmd.args([
            "-device",
            &format!("virtio-blk-pci,drive=d0,serial=LAB{i}-A"),
        ]);
        cmd.arg("-drive").arg(format!(
            "file={},if=none,id=d1,format=raw",
            disks[1].display()
        ));
        cmd.args(["-device", &format!("nvme,drive=d1,serial=LAB{i}-B")]);
        cmd.args([
            "-smbios",
            &format!(
                "type=1,uuid={},serial=LAB-{i:03},manufacturer=Siderite Lab,product=QEMU TCG",
                uuid::Uuid::new_v4()
            ),
        ]);
        if config.firmware == Firmware::Uefi {
            let code = tool(&["/usr/share/OVMF/OVMF_CODE_4M.fd"], "ovmf")?;
            let vars = dir.join(format!("machine{i}-vars.fd"));
            std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                .context("copying OVMF_VARS_4M.fd")?;
            cmd.args(["-machine", "q35"]);
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                code.display()
            ));
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        spawn_detached(&dir, &format!("machine{i}"), &mut cmd)?;
    }

    let addr = format!("{HOST_SIDE_ADDR}:7070");
    let started = Instant::now();
    // The server's first start writes the operator config; the lab's copy names the address
    // the host reaches the server by.
    let server_config = dir.join("data/siderite-config.yaml");
    let lab_config = dir.join("siderite-config.yaml");
    let target = loop {
        if let Ok(mut c) = crate::clientconfig::ClientConfig::load(&server_config) {
            for cl in &mut c.clusters {
                cl.server = format!("https://{addr}");
            }
            c.save(&lab_config)
                .with_context(|| format!("writing {}", lab_config.display()))?;
            break c.resolve(None).map_err(anyhow::Error::msg)?;
        }
        if started.elapsed() > config.wait {
            bail!(
                "the server wrote no operator config ({}) within {:?}; its log is in {}",
                server_config.display(),
                config.wait,
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        let registered = match crate::cli::client(&target).await {
            Ok(mut c) => c
                .list_servers(siderite::proto::admin::v1::ListServersRequest {})
                .await
                .map(|r| {
                    r.into_inner()
                        .servers
                        .iter()
                        .filter(|s| s.status.as_ref().is_some_and(|st| st.connected))
                        .count()
                })
                .unwrap_or(0),
            Err(_) => 0,
        };
        if registered >= config.machines {
            break;
        }
        if started.elapsed() > config.wait {
            bail!(
                "{registered} of {} machines registered within {:?}; consoles and logs are in {}",
                config.machines,
                config.wait,
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let table = crate::cli::get_servers(&target, crate::cli::Output::Table).await?;
    Ok(format!(
        "lab up: {} machine(s) PXE-booted and registered in {:.0} s\n\
         server: {addr} (export SIDERITE_CONFIG={}); consoles and logs: {}\n\n{table}",
        config.machines,
        started.elapsed().as_secs_f64(),
        lab_config.display(),
        dir.display()
    ))
}

pub fn down(dir: &Path) -> Result<String> {
    let mut killed = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pid") {
                if let Ok(pid) = std::fs::read_to_string(&p)
                    .unwrap_or_default()
                    .trim()
                    .parse::<i32>()
                {
                    if nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
                    {
                        killed += 1;
                    }
                }
            }
        }
    }
    let _ = Command::new("ip")
        .args(["link", "del", HOST_IF])
        .stderr(Stdio::null())
        .status();
    for ns in [NS, SITE_NS] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(format!(
        "lab down: {killed} process(es) stopped, namespaces and {} removed\n",
        dir.display()
    ))
}
