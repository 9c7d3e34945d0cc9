//! Booting the agent for real: the boot image built from Debian's generic kernel and the
//! static agent, and QEMU (TCG) machines on a [`NetLab`](crate::netlab::NetLab) bridge.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use siderite_initramfs::{build, BuildOptions, KernelSource};

use crate::netlab::{require_tool, NetLab};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The boot image (vmlinuz + initramfs.cpio.zst) with the default module set, built once
/// per test process into target/test-boot-image.
pub fn boot_image() -> Result<(PathBuf, PathBuf)> {
    static BUILT: OnceLock<std::result::Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_image().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_image() -> Result<(PathBuf, PathBuf)> {
    let root = workspace_root();
    let agent = root.join(siderite_initramfs::DEFAULT_AGENT);
    ensure!(
        agent.exists(),
        "{} is missing: run scripts/build-agent.sh first (scripts/test.sh does)",
        agent.display()
    );
    let out = root.join("target/test-boot-image");
    let opts = BuildOptions::new(test_kernel(), agent, out.clone());
    let started = Instant::now();
    let manifest = build(&opts).context("building the boot image")?;
    println!(
        "boot image: {:?} in {:.1} s",
        manifest.file("initramfs.cpio.zst").map(|f| f.size),
        started.elapsed().as_secs_f64()
    );
    Ok((out.join("vmlinuz"), out.join("initramfs.cpio.zst")))
}

/// The kernel every test image boots: Debian's generic one, downloaded once into the
/// shared cache (target/siderite-kernels) by whichever image is built first.
fn test_kernel() -> KernelSource {
    KernelSource::Apt {
        package: "linux-image-amd64".into(),
        cache: workspace_root().join(siderite_initramfs::DEFAULT_CACHE),
    }
}

/// Where scripts/build-agent.sh leaves the static Talos stand-in (`tests/standin`).
pub const STANDIN: &str = "target/x86_64-unknown-linux-musl/agent/siderite-standin";

/// The Talos stand-in image: the boot image's kernel and default modules with the static
/// `siderite-standin` as `/init`, built once per test process into
/// target/test-standin-image. Returns that directory (`vmlinuz`, `initramfs.cpio.zst`).
pub fn standin_image() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_standin_image().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_standin_image() -> Result<PathBuf> {
    let root = workspace_root();
    let standin = root.join(STANDIN);
    ensure!(
        standin.exists(),
        "{} is missing: run scripts/build-agent.sh first (it builds the agent and the Talos stand-in)",
        standin.display()
    );
    let out = root.join("target/test-standin-image");
    let opts = BuildOptions::new(test_kernel(), standin, out.clone());
    let started = Instant::now();
    let manifest = build(&opts).context("building the stand-in image")?;
    println!(
        "stand-in image: {:?} in {:.1} s",
        manifest.file("initramfs.cpio.zst").map(|f| f.size),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

pub fn qemu() -> Result<PathBuf> {
    require_tool(&["/usr/bin/qemu-system-x86_64"], "qemu-system-x86")
}

/// A sparse raw disk image of `size` bytes.
pub fn disk(dir: &Path, name: &str, size: u64) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::File::create(&path)?.set_len(size)?;
    Ok(path)
}

/// One QEMU machine; killed on drop. Its serial console goes to `console`.
pub struct Machine {
    pub child: Child,
    pub console: PathBuf,
    pub started: Instant,
}

impl Machine {
    /// Starts QEMU inside the lab's namespace with the given device arguments.
    pub fn start(
        lab: &NetLab,
        name: &str,
        append: &str,
        kernel: &Path,
        initrd: &Path,
        devices: &[String],
    ) -> Result<Self> {
        let console = lab.dir.path().join(format!("{name}.console"));
        Self::spawn(
            lab.command(qemu()?),
            console,
            append,
            kernel,
            initrd,
            devices,
        )
    }

    /// Starts QEMU as a plain child of the test (no namespace), its console in `dir`:
    /// for machines with user-mode networking only (`-netdev user`), whose guests reach
    /// nothing but the host's loopback (as 10.0.2.2).
    pub fn start_local(
        dir: &Path,
        name: &str,
        append: &str,
        kernel: &Path,
        initrd: &Path,
        devices: &[String],
    ) -> Result<Self> {
        let console = dir.join(format!("{name}.console"));
        Self::spawn(
            Command::new(qemu()?),
            console,
            append,
            kernel,
            initrd,
            devices,
        )
    }

    fn spawn(
        mut qemu: Command,
        console: PathBuf,
        append: &str,
        kernel: &Path,
        initrd: &Path,
        devices: &[String],
    ) -> Result<Self> {
        let child = qemu
            .args([
                "-accel",
                "tcg",
                "-m",
                "1024",
                "-smp",
                "1",
                "-no-reboot",
                "-display",
                "none",
                "-monitor",
                "none",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(append)
            .args(devices)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting QEMU")?;
        Ok(Self {
            child,
            console,
            started: Instant::now(),
        })
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Waits until the console shows `needle`; errors with the console's tail otherwise.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console_text().contains(needle) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "QEMU exited ({status}) before {needle:?}:\n{}",
                    tail(&self.console_text(), 40)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "no {needle:?} on the console within {timeout:?}:\n{}",
                tail(&self.console_text(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for QEMU to exit (the guest powered off; `-no-reboot` makes a reboot or a
    /// triple fault exit too). Errors with the console's tail after `timeout`. The exit
    /// status says little: QEMU exits 0 after a guest panic as well.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    anyhow::bail!(
                        "QEMU failed ({status}): {}\nconsole:\n{}",
                        err.trim(),
                        tail(&self.console_text(), 40)
                    );
                }
                return Ok(self.started.elapsed());
            }
            ensure!(
                Instant::now() < deadline,
                "the machine did not power off within {timeout:?}:\n{}",
                tail(&self.console_text(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// NIC arguments for one tap.
pub fn nic(model: &str, tap: &str, id: &str, mac: &str) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("tap,id={id},ifname={tap},script=no,downscript=no"),
        "-device".into(),
        format!("{model},netdev={id},mac={mac}"),
    ]
}

/// A child process (a server, a QEMU machine) killed when the test lets go of it.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `siderite init --data-dir DATA` prints: the CA pin and the boot join token, for an
/// agent's command line (`siderite.ca=`, `siderite.token=`) before the server runs.
pub struct Init {
    pub ca: String,
    pub token: String,
    pub config: PathBuf,
}

impl Init {
    /// `siderite.ca=... siderite.token=...`
    pub fn agent_args(&self) -> String {
        format!("siderite.ca={} siderite.token={}", self.ca, self.token)
    }
}

pub fn init_server(data: &Path) -> Result<Init> {
    let out = std::process::Command::new(crate::workspace_bin("siderite"))
        .args(["init", "--data-dir"])
        .arg(data)
        .output()
        .context("running siderite init")?;
    anyhow::ensure!(
        out.status.success(),
        "siderite init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("no {name} in siderite init's output:\n{text}"))
    };
    Ok(Init {
        ca: field("ca:")?,
        token: field("join-token:")?,
        config: PathBuf::from(field("config:")?),
    })
}

/// The operator config of the lab's server (its data dir is `server-data` or `data`).
pub fn lab_config(lab: &NetLab) -> Result<PathBuf> {
    ["server-data", "data"]
        .iter()
        .map(|d| lab.dir.path().join(d).join("siderite-config.yaml"))
        .find(|p| p.exists())
        .context("the lab's server wrote no operator config (yet)")
}

/// The CLI's first arguments for the lab's server: `--siderite-config FILE --server GW:7070`.
pub fn lab_cli(lab: &NetLab) -> Result<Vec<String>> {
    Ok(vec![
        crate::workspace_bin("siderite")
            .to_str()
            .context("binary path")?
            .to_string(),
        "--siderite-config".into(),
        lab_config(lab)?
            .to_str()
            .context("config path")?
            .to_string(),
        "--server".into(),
        format!("{}:7070", lab.gateway),
    ])
}

/// The servers the lab's siderite server (gRPC on `<gateway>:7070`) lists, as JSON,
/// asked with the CLI from inside the lab's namespace.
pub fn lab_servers(lab: &NetLab) -> Result<Vec<serde_json::Value>> {
    let mut args = lab_cli(lab)?;
    args.extend(["get", "servers", "-o", "json"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.exec(&args)?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}
