//! The agent's DHCP client against a real DHCP server (dnsmasq) over a veth pair between two
//! network namespaces made by the test: lease, address, default route, resolv.conf, and a
//! real renewal (dnsmasq is told to send T1 = 4 s), and an IPv6 SLAAC address from
//! dnsmasq's router advertisements.
//!
//! Needs root, iproute2's `ip` and dnsmasq (Debian: iproute2, dnsmasq-base). Without them
//! the test fails and says why; it never skips. Traffic stays inside the two namespaces.
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use siderite_agent::net::{self, IpSource, LinkSelection, NetOptions, NetReport};
use siderite_tests::netlab::{ip, require_root, require_tool, run};

const SERVER_IP: &str = "10.213.0.1";
const DNS_IP: &str = "10.213.0.53";

/// Namespaces, the veth pair inside them and dnsmasq; all gone on drop, pass or fail.
struct Lab {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
    dnsmasq: Option<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        delete_netns(&[&self.client_ns, &self.server_ns]);
    }
}

/// Deleting a namespace destroys the veth end inside it, and so its peer.
fn delete_netns(names: &[&str]) {
    for ns in names {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// Everything the test needs, or an error naming what is missing: dnsmasq's path.
fn preflight() -> Result<PathBuf> {
    require_root()?;
    require_tool(&["/usr/bin/ip", "/sbin/ip", "/bin/ip"], "iproute2")?;
    require_tool(&["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"], "dnsmasq-base")
}

impl Lab {
    fn new(dnsmasq: &Path) -> Result<Lab> {
        let tag = format!("sdr{}", std::process::id());
        let mut lab = Lab {
            server_ns: format!("{tag}-dhcps"),
            client_ns: format!("{tag}-dhcpc"),
            server_if: format!("{tag}s"),
            client_if: format!("{tag}c"),
            dnsmasq: None,
            dir: tempfile::tempdir()?,
        };
        // Leftovers of an earlier run with the same pid would make `add` fail.
        delete_netns(&[&lab.client_ns, &lab.server_ns]);
        ip(&["netns", "add", &lab.server_ns])?;
        ip(&["netns", "add", &lab.client_ns])?;
        ip(&[
            "link",
            "add",
            &lab.server_if,
            "netns",
            &lab.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.client_if,
            "netns",
            &lab.client_ns,
        ])?;
        let s = lab.server_ns.clone();
        ip(&["-n", &s, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &s,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            &lab.server_if,
        ])?;
        ip(&[
            "-n",
            &s,
            "-6",
            "addr",
            "add",
            "fd00:213::1/64",
            "dev",
            &lab.server_if,
            "nodad",
        ])?;
        ip(&["-n", &s, "link", "set", &lab.server_if, "up"])?;
        // The client end stays down: bringing it up is the agent's job.

        let log = lab.dir.path().join("dnsmasq.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &s])
            .arg(dnsmasq)
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--bind-interfaces",
                &format!("--interface={}", lab.server_if),
                "--except-interface=lo",
                "--dhcp-range=10.213.0.100,10.213.0.150,255.255.255.0,2m",
                &format!("--dhcp-option=option:router,{SERVER_IP}"),
                &format!("--dhcp-option=option:dns-server,{DNS_IP}"),
                "--dhcp-option=option:domain-name,netns.test",
                // Renew after 4 s, rebind after 8 s: a real renewal within the test.
                "--dhcp-option=option:T1,4",
                "--dhcp-option=option:T2,8",
                // Router advertisements only (no DHCPv6): the client's kernel does SLAAC.
                "--enable-ra",
                "--dhcp-range=fd00:213::,ra-only,64",
                "--log-dhcp",
                "--log-facility=-",
            ])
            .arg(format!(
                "--dhcp-leasefile={}",
                lab.dir.path().join("leases").display()
            ))
            .arg(format!(
                "--pid-file={}",
                lab.dir.path().join("dnsmasq.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting dnsmasq")?;
        lab.dnsmasq = Some(child);
        lab.wait_for_log("DHCP, IP range", Duration::from_secs(10))?;
        Ok(lab)
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.dir.path().join("dnsmasq.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn wait_for_log(&mut self, needle: &str, within: Duration) -> Result<()> {
        let until = Instant::now() + within;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self
                .dnsmasq
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("dnsmasq exited ({status}):\n{}", self.log());
            }
            ensure!(
                Instant::now() < until,
                "no {needle:?} in dnsmasq's log within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count_in_log(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }
}

/// Networking inside the client namespace on a thread of its own: the report once
/// configured, then the report after `renew_wait`, then stop.
fn run_client(lab: &Lab, resolv: PathBuf, renew_wait: Duration) -> Result<(NetReport, NetReport)> {
    let ns = File::open(Path::new("/run/netns").join(&lab.client_ns))
        .context("opening the client netns")?;
    let client_if = lab.client_if.clone();
    let thread = std::thread::spawn(move || -> Result<(NetReport, NetReport)> {
        // Only this thread moves; the test's other threads stay where they are.
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the client netns")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let opts = NetOptions {
                links: LinkSelection::Named(vec![client_if]),
                resolv_conf: Some(resolv),
                timeout: Duration::from_secs(30),
                ..NetOptions::default()
            };
            let network = net::configure(opts, std::future::pending()).await?;
            let first = network.report();
            tokio::time::sleep(renew_wait).await;
            let later = network.report();
            network.stop().await;
            Ok((first, later))
        })
    });
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

#[test]
fn dhcp_lease_route_dns_and_renewal_from_dnsmasq() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("siderite_agent=debug")
        .with_test_writer()
        .try_init();
    let dnsmasq = preflight()?;
    let lab = Lab::new(&dnsmasq)?;
    let resolv = lab.dir.path().join("etc/resolv.conf");

    let started = Instant::now();
    let (first, later) = run_client(&lab, resolv.clone(), Duration::from_secs(6))?;
    let took = started.elapsed();

    // The lease, as the agent reports it.
    let nic = first
        .nics
        .iter()
        .find(|n| n.name == lab.client_if)
        .with_context(|| format!("no {} in the report: {first}", lab.client_if))?;
    let ipcfg = nic
        .ip
        .as_ref()
        .with_context(|| format!("no address: {first}"))?;
    let IpAddr::V4(address) = ipcfg.address else {
        bail!("not an IPv4 lease: {first}");
    };
    ensure!(
        (Ipv4Addr::new(10, 213, 0, 100)..=Ipv4Addr::new(10, 213, 0, 150)).contains(&address),
        "{address} is outside dnsmasq's range"
    );
    assert_eq!(ipcfg.prefix_len, 24);
    assert_eq!(ipcfg.gateway, Some(SERVER_IP.parse()?));
    assert_eq!(ipcfg.dns, vec![DNS_IP.parse::<IpAddr>()?]);
    assert_eq!(
        ipcfg.source,
        IpSource::Dhcp {
            server: SERVER_IP.parse()?,
            lease_time: Some(Duration::from_secs(120))
        }
    );
    assert!(nic.carrier, "{first}");
    assert_eq!(nic.metric, 100);

    // The kernel's view, from outside the agent (the namespace still holds the config).
    let addrs = ip(&[
        "-n",
        &lab.client_ns,
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        &lab.client_if,
    ])?;
    ensure!(
        addrs.contains(&format!("inet {address}/24")),
        "ip addr: {addrs}"
    );
    ensure!(addrs.contains("valid_lft"), "ip addr: {addrs}");
    ensure!(
        !addrs.contains("valid_lft forever"),
        "a DHCP address must carry its lease time: {addrs}"
    );
    let routes = ip(&["-n", &lab.client_ns, "-4", "route", "show", "default"])?;
    ensure!(
        routes.contains(&format!(
            "default via {SERVER_IP} dev {} proto dhcp",
            lab.client_if
        )) && routes.contains("metric 100"),
        "ip route: {routes}"
    );
    let link = ip(&["-n", &lab.client_ns, "link", "show", "dev", &lab.client_if])?;
    ensure!(
        link.contains("state UP"),
        "the agent brings the link up: {link}"
    );
    // /proc/sys/net shows the reader's namespace: read it from inside the client's.
    let accept_ra = run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.client_ns,
        "cat",
        &format!("/proc/sys/net/ipv6/conf/{}/accept_ra", lab.client_if),
    ]))?;
    assert_eq!(accept_ra.trim(), "1");

    // resolv.conf.
    let text = std::fs::read_to_string(&resolv).context("reading the written resolv.conf")?;
    assert_eq!(
        text,
        format!(
            "# written by siderite-agent from DHCP / static configuration\n\
             search netns.test\n\
             nameserver {DNS_IP}\n"
        )
    );

    // dnsmasq's side: the lease is recorded under the client's MAC.
    let leases = std::fs::read_to_string(lab.dir.path().join("leases"))?;
    let mac = nic.mac.context("no MAC in the report")?.to_string();
    ensure!(
        leases.contains(&mac) && leases.contains(&address.to_string()),
        "dnsmasq leases: {leases}"
    );
    ensure!(
        lab.log().contains("vendor class: siderite"),
        "no vendor class seen:\n{}",
        lab.log()
    );

    // Renewal: T1 = 4 s, and the client ran 6 s more. A renewal is a unicast REQUEST with
    // ciaddr set, which dnsmasq logs as a second DHCPREQUEST/DHCPACK for the address.
    let acks = lab.count_in_log(&format!("DHCPACK({}) {address} {mac}", lab.server_if));
    ensure!(
        acks >= 2,
        "expected the initial ACK and a renewal ACK, saw {acks}:\n{}",
        lab.log()
    );
    let later_ip = later
        .nics
        .iter()
        .find_map(|n| n.ip.clone())
        .context("lost the address")?;
    assert_eq!(later_ip.address, ipcfg.address);
    ensure!(took < Duration::from_secs(20), "took {took:?}");

    // IPv6: the agent enabled SLAAC and reports the address the kernel made from the RA.
    let later_nic = later
        .nics
        .iter()
        .find(|n| n.name == lab.client_if)
        .context("no NIC")?;
    let slaac: Vec<_> = later_nic.ipv6_addresses().collect();
    ensure!(
        slaac
            .iter()
            .any(|(ip, len)| *len == 64 && ip.to_string().starts_with("fd00:213::")),
        "no SLAAC address in the report: {later}"
    );
    Ok(())
}
