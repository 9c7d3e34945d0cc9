//! A network made by a test: one namespace with a bridge and tap devices for QEMU
//! machines, and a second namespace on the same segment running a plain DHCP server
//! (dnsmasq, playing the site's DHCP). Everything it creates is
//! removed on drop, pass or fail. Needs root, iproute2 and dnsmasq; without them the
//! constructor fails and says what is missing.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// The first of `candidates` that exists, or an error naming the Debian package.
pub fn require_tool(candidates: &[&str], package: &str) -> Result<PathBuf> {
    for c in candidates {
        if Path::new(c).exists() {
            return Ok(PathBuf::from(c));
        }
    }
    bail!("{} not found: apt-get install {package} (scripts/setup-debian.sh does); this test needs it and does not skip", candidates[0])
}

pub fn require_root() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, bridges, taps); run it as root, as CI does"
    );
    Ok(())
}

pub struct NetLab {
    pub ns: String,
    /// The site DHCP server's namespace (dnsmasq at `<net>.2`).
    pub site_ns: String,
    pub bridge: String,
    /// The bridge's address: where the siderite server listens.
    pub gateway: String,
    pub prefix: u8,
    pub dir: tempfile::TempDir,
    taps: Vec<String>,
    children: Vec<Child>,
}

impl NetLab {
    /// A namespace with bridge `br0` at `<net>.1/24` and dnsmasq serving `<net>.100-199`.
    /// `net` is the first three octets, e.g. "10.77.0".
    pub fn new(tag: &str, net: &str) -> Result<Self> {
        require_root()?;
        require_tool(&["/usr/bin/ip", "/sbin/ip", "/bin/ip"], "iproute2")?;
        let dnsmasq = require_tool(&["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"], "dnsmasq-base")?;
        let ns = format!("sdr-{tag}-{}", std::process::id());
        // The site's DHCP server lives on its own host (namespace) on the same segment,
        // so it never shares port 67 with the siderite server under test.
        let site = format!("{ns}-site");
        for n in [&ns, &site] {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", n])?;
        }
        let mut lab = Self {
            ns: ns.clone(),
            site_ns: site.clone(),
            bridge: "br0".into(),
            gateway: format!("{net}.1"),
            prefix: 24,
            dir: tempfile::tempdir()?,
            taps: Vec::new(),
            children: Vec::new(),
        };
        lab.exec(&["ip", "link", "set", "lo", "up"])?;
        lab.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        lab.exec(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", "br0"])?;
        lab.exec(&["ip", "link", "set", "br0", "up"])?;
        lab.exec(&[
            "ip", "link", "add", "site0", "type", "veth", "peer", "name", "eth0", "netns", &site,
        ])?;
        lab.exec(&["ip", "link", "set", "site0", "master", "br0"])?;
        lab.exec(&["ip", "link", "set", "site0", "up"])?;
        let in_site =
            |args: &[&str]| run(Command::new("ip").args(["netns", "exec", &site]).args(args));
        in_site(&["ip", "link", "set", "lo", "up"])?;
        in_site(&["ip", "addr", "add", &format!("{net}.2/24"), "dev", "eth0"])?;
        in_site(&["ip", "link", "set", "eth0", "up"])?;
        let leases = lab.dir.path().join("dnsmasq.leases");
        let log = std::fs::File::create(lab.dir.path().join("dnsmasq.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &site])
            .arg(dnsmasq)
            .args([
                "--no-daemon",
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                "--log-dhcp",
                &format!("--dhcp-range={net}.100,{net}.199,255.255.255.0,2m"),
                &format!("--dhcp-option=option:router,{net}.1"),
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg("--pid-file=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting dnsmasq")?;
        lab.children.push(child);
        Ok(lab)
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args))
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// A tap device on the bridge, for one QEMU NIC.
    pub fn tap(&mut self) -> Result<String> {
        let name = format!("tap{}", self.taps.len());
        self.exec(&["ip", "tuntap", "add", "dev", &name, "mode", "tap"])?;
        self.exec(&["ip", "link", "set", &name, "master", "br0"])?;
        self.exec(&["ip", "link", "set", &name, "up"])?;
        self.taps.push(name.clone());
        Ok(name)
    }

    /// Keeps a child process (killed on drop).
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    pub fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in [&self.ns, &self.site_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}
