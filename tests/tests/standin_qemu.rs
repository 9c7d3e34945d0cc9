//! The Talos stand-in (tests/standin) on its own, as PID 1 of a QEMU machine (TCG) booted
//! straight into it with `talos.platform=metal talos.config=URL`: it gets an address from
//! QEMU's user-mode network (slirp's DHCP, through the agent's own client), fetches its
//! config from a tiny HTTP server on the host's loopback (10.0.2.2 in the guest), writes
//! it to `machine.install.disk` behind a header, and powers off. A refused fetch (403)
//! leaves the disk untouched and powers off too.
//!
//! Needs qemu-system-x86, apt (for the kernel package) and the static stand-in from
//! scripts/build-agent.sh. Fails with the reason when one is missing; never skips.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use siderite_tests::boot::{disk, qemu, standin_image, tail, Machine};

const MIB: u64 = 1 << 20;
/// Boot, modules, DHCP, fetch, write, power-off under TCG on a busy 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Serves one canned response to every request on 127.0.0.1 and records the requests.
struct ConfigServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConfigServer {
    fn start(status: &str, body: Vec<u8>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let response = [
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body,
        ]
        .concat();
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            if let Some(head) = answer(conn, &response) {
                                requests.lock().unwrap().push(head);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Self {
            port,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one request's head, sends `response`; the head, if one came.
fn answer(mut conn: TcpStream, response: &[u8]) -> Option<String> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let _ = conn.write_all(response);
    Some(String::from_utf8_lossy(&head).into_owned())
}

impl Drop for ConfigServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Boots the stand-in image with one 64 MiB virtio disk and a slirp NIC; returns the
/// machine (already powered off), the disk image and how long it ran.
fn boot_standin(dir: &Path, name: &str, port: u16) -> Result<(Machine, Vec<u8>, Duration)> {
    qemu()?;
    let image = standin_image()?;
    let vda = disk(dir, &format!("{name}-vda.img"), 64 * MIB)?;
    let devices: Vec<String> = vec![
        "-drive".into(),
        format!("file={},if=none,id=d0,format=raw", vda.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d0,serial=STANDIN-VDA".into(),
        "-netdev".into(),
        "user,id=n0".into(),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ];
    let append = format!(
        "console=ttyS0 talos.platform=metal talos.config=http://10.0.2.2:{port}/config?t=abc"
    );
    let mut m = Machine::start_local(
        dir,
        name,
        &append,
        &image.join("vmlinuz"),
        &image.join("initramfs.cpio.zst"),
        &devices,
    )?;
    let took = m.wait_exit(TIMEOUT)?;
    let bytes = std::fs::read(&vda).with_context(|| format!("reading {}", vda.display()))?;
    Ok((m, bytes, took))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn standin_fetches_its_config_and_writes_it_to_the_install_disk() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let marker = format!("standin-marker-{}-{nanos}", std::process::id());
    let config = format!(
        "version: v1alpha1\n\
         machine:\n  type: controlplane\n  install:\n    disk: /dev/vda\n    image: ghcr.io/siderolabs/installer:v1.7.6\n    wipe: false\n\
         cluster:\n  clusterName: {marker}\n"
    );
    let server = ConfigServer::start("200 OK", config.clone().into_bytes())?;
    let started = Instant::now();
    let (m, disk, took) = boot_standin(dir.path(), "ok", server.port)?;
    println!(
        "figure: stand-in QEMU start to power-off (TCG): {:.1} s ({:.1} s with the image build)",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let console = m.console_text();
    let ctx = || tail(&console, 40);

    // The header, read back without trusting the stand-in's own formatting code.
    let nl = disk
        .iter()
        .position(|b| *b == b'\n')
        .with_context(|| format!("no header line on the disk; console:\n{}", ctx()))?;
    let header = std::str::from_utf8(&disk[..nl])?;
    let fields: Vec<&str> = header.split(' ').collect();
    assert_eq!(fields.len(), 4, "header {header:?}; console:\n{}", ctx());
    assert_eq!(
        &fields[..2],
        ["SIDERITE-STANDIN-CONFIG", "v1"],
        "{header:?}"
    );
    let len: usize = fields[2].strip_prefix("len=").context("len=")?.parse()?;
    let sha = fields[3].strip_prefix("sha256=").context("sha256=")?;
    let body = &disk[nl + 1..nl + 1 + len];
    assert_eq!(len, config.len());
    assert_eq!(
        body,
        config.as_bytes(),
        "the config as served, byte for byte"
    );
    assert_eq!(sha, sha256_hex(body));
    assert_eq!(sha, sha256_hex(config.as_bytes()));
    assert!(String::from_utf8_lossy(body).contains(&marker));
    assert!(
        disk[nl + 1 + len..].iter().all(|b| *b == 0),
        "nothing written past the config"
    );

    assert!(
        console.contains(&format!(
            "standin: wrote {} bytes of config to /dev/vda",
            config.len()
        )),
        "console:\n{}",
        ctx()
    );
    assert!(
        console.contains("standin: talos.platform=metal"),
        "{}",
        ctx()
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].starts_with("GET /config?t=abc HTTP/1.1\r\n"),
        "{requests:?}"
    );
    assert!(
        requests[0].contains(&format!("Host: 10.0.2.2:{}\r\n", server.port)),
        "{requests:?}"
    );
    Ok(())
}

#[test]
fn refused_config_fetch_powers_off_and_leaves_the_disk_alone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ConfigServer::start("403 Forbidden", b"machine not allowed here".to_vec())?;
    let (m, disk, took) = boot_standin(dir.path(), "refused", server.port)?;
    println!(
        "figure: refused stand-in QEMU start to power-off (TCG): {:.1} s",
        took.as_secs_f64()
    );
    let console = m.console_text();
    assert!(
        disk[..4096].iter().all(|b| *b == 0),
        "the first 4 KiB stay zero; console:\n{}",
        tail(&console, 40)
    );
    let failed = console
        .lines()
        .find(|l| l.contains("standin: config fetch failed: "))
        .with_context(|| format!("no fetch failure logged; console:\n{}", tail(&console, 40)))?;
    assert!(
        failed.contains("403") && failed.contains("machine not allowed here"),
        "{failed}"
    );
    assert!(
        console.contains("standin: powering off"),
        "{}",
        tail(&console, 20)
    );
    assert_eq!(server.requests().len(), 1, "a refusal is not retried");
    Ok(())
}
