//! Networking without the kernel's help: links up, carrier, DHCPv4 on every wired NIC (boot
//! NIC first), IPv6 SLAAC by the kernel, static addresses from `siderite.ip=`, routes and
//! resolv.conf; leases renewed in the background until shutdown.
//!
//! Rooms: [`dhcp`] is the DHCPv4 client as a pure state machine; [`link`] is the one trait
//! for the host's network stack ([`LinkControl`]) with its Linux implementation in
//! [`netlink`] (its rtnetlink messages encoded by hand in `rtnl`) and a fake in [`fake`];
//! [`socket`] carries DHCP datagrams; [`resolv`] renders resolv.conf; `run` ties them
//! together per link. [`configure`] is the entry point.
//!
//! This module touches the OS (netlink, sockets, sysctls, resolv.conf) only through
//! [`LinuxLinks`], [`UdpTransport`] and [`resolv::write`].
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub mod dhcp;
pub mod fake;
pub mod link;
pub mod netlink;
pub mod resolv;
mod rtnl;
mod run;
pub mod socket;

pub use dhcp::{DhcpClient, DhcpConfig, Lease};
pub use link::{Address, Link, LinkControl, LinkError, LinkSelection, Route, RouteOrigin};
pub use netlink::LinuxLinks;
pub use socket::{DhcpTransport, TransportFactory, UdpTransport, UdpTransports};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("reaching the kernel's network configuration")]
    Links(#[from] LinkError),
    #[error("no network link got an address within {waited:?} ({report})")]
    NoAddress { waited: Duration, report: NetReport },
}

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a MAC address (want six hex pairs separated by ':' or '-'): {0:?}")]
pub struct BadMac(pub String);

impl FromStr for MacAddr {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let bad = || BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// A static address from the kernel command line (`siderite.ip=`), typed. The config
/// module parses the text; this is what networking needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIp {
    /// IPv4 or IPv6.
    pub address: IpAddr,
    pub prefix_len: u8,
    /// Default gateway, same family as `address`.
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    /// The NIC to put it on; `None` means the boot NIC (`siderite.mac=`), or the first
    /// selected link by name when no boot NIC is known. That NIC gets no DHCP.
    pub mac: Option<MacAddr>,
}

/// How [`configure`] behaves; `Default` is what a booting machine wants.
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub links: LinkSelection,
    /// The NIC the machine booted from: configured first, lowest route metric.
    pub boot_mac: Option<MacAddr>,
    pub static_ips: Vec<StaticIp>,
    /// Where DNS servers go; `None` writes nothing.
    pub resolv_conf: Option<PathBuf>,
    /// Where sys/ and proc/ are (for `LinuxLinks`): "/" on a machine.
    pub root: PathBuf,
    /// [`configure`] gives up when no link has an address by then.
    pub timeout: Duration,
    /// How long a link may take to report carrier before DHCP starts on it anyway (some
    /// drivers never report it); DHCP restarts at once when carrier does appear.
    pub carrier_timeout: Duration,
    /// With only IPv6 (SLAAC) addresses, [`configure`] waits this long for DHCPv4 before
    /// returning.
    pub ipv6_grace: Duration,
    /// How often links are listed again (NICs appear as drivers load) and their addresses
    /// read for the report.
    pub scan_interval: Duration,
    /// The boot NIC's default route metric; other NICs get the next ones up.
    pub route_metric: u32,
    pub dhcp: DhcpConfig,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            links: LinkSelection::Physical,
            boot_mac: None,
            static_ips: Vec::new(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
            root: PathBuf::from("/"),
            timeout: Duration::from_secs(60),
            carrier_timeout: Duration::from_secs(10),
            ipv6_grace: Duration::from_secs(10),
            scan_interval: Duration::from_secs(1),
            route_metric: 100,
            dhcp: DhcpConfig::default(),
        }
    }
}

/// Where a link's address came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpSource {
    Dhcp {
        server: Ipv4Addr,
        /// `None` for an infinite lease.
        lease_time: Option<Duration>,
    },
    Static,
}

/// The address the agent put on a link, with what came along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub source: IpSource,
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    pub hostname: Option<String>,
}

/// One link as networking sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicReport {
    pub name: String,
    pub mac: Option<MacAddr>,
    /// The boot NIC (`siderite.mac=`).
    pub boot: bool,
    /// Its default route's metric: lower is preferred.
    pub metric: u32,
    pub carrier: bool,
    /// What the agent is doing on it: "waiting for carrier", "dhcp selecting", "bound",
    /// "static", "failed: ...".
    pub state: String,
    /// The address the agent configured (DHCP or static).
    pub ip: Option<IpConfig>,
    /// Global addresses the kernel has on the link (IPv6 SLAAC shows up here).
    pub global_addresses: Vec<(IpAddr, u8)>,
}

impl NicReport {
    pub fn ipv6_addresses(&self) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        self.global_addresses
            .iter()
            .copied()
            .filter(|(ip, _)| ip.is_ipv6())
    }
}

/// Every configured link, best route first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetReport {
    pub nics: Vec<NicReport>,
}

impl NetReport {
    /// True when some link has an address the agent configured.
    pub fn has_address(&self) -> bool {
        self.nics.iter().any(|n| n.ip.is_some())
    }
    fn has_ipv6(&self) -> bool {
        self.nics
            .iter()
            .any(|n| n.ipv6_addresses().next().is_some())
    }
}

impl fmt::Display for NicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(mac) = self.mac {
            write!(f, " {mac}")?;
        }
        if self.boot {
            f.write_str(" (boot)")?;
        }
        write!(f, ": {}", self.state)?;
        if !self.carrier {
            f.write_str(", no carrier")?;
        }
        if let Some(ip) = &self.ip {
            write!(f, ", {}/{}", ip.address, ip.prefix_len)?;
            if let Some(gw) = ip.gateway {
                write!(f, " via {gw} metric {}", self.metric)?;
            }
            match &ip.source {
                IpSource::Dhcp { server, lease_time } => {
                    write!(f, " from {server}")?;
                    match lease_time {
                        Some(t) => write!(f, " for {}s", t.as_secs())?,
                        None => f.write_str(" forever")?,
                    }
                }
                IpSource::Static => f.write_str(" static")?,
            }
            if !ip.dns.is_empty() {
                let dns: Vec<String> = ip.dns.iter().map(ToString::to_string).collect();
                write!(f, ", dns {}", dns.join(" "))?;
            }
        }
        for (ip, len) in self.ipv6_addresses() {
            write!(f, ", {ip}/{len}")?;
        }
        Ok(())
    }
}

impl fmt::Display for NetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nics.is_empty() {
            return f.write_str("no network links found");
        }
        for (i, nic) in self.nics.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{nic}")?;
        }
        Ok(())
    }
}

/// Networking running in the background: the current report, and a way to stop it.
/// Dropping it stops the background tasks too (addresses and routes stay as they are), so
/// a caller that starts over never has two DHCP clients on one link; keep it alive for as
/// long as leases should be renewed.
pub struct Network {
    report: watch::Receiver<NetReport>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Network {
    /// The links and their addresses now.
    pub fn report(&self) -> NetReport {
        self.report.borrow().clone()
    }

    /// Waits for the next change (a renewal, a new link, a SLAAC address, a lost lease);
    /// `None` once networking has stopped.
    pub async fn changed(&mut self) -> Option<NetReport> {
        self.report.changed().await.ok()?;
        Some(self.report.borrow_and_update().clone())
    }

    /// Stops every link's task and waits for them. Addresses stay configured.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "network task failed");
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Configures the machine's network with the host's netlink and UDP sockets: see
/// [`configure_with`].
pub async fn configure(
    opts: NetOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Network, NetError> {
    let links = Arc::new(LinuxLinks::new(&opts.root)?);
    configure_with(opts, links, UdpTransports, shutdown).await
}

/// Brings every selected link up and configures it (static address, else DHCPv4; SLAAC by
/// the kernel), then returns as soon as one link has an address, leaving the renewals and
/// later links running in the background until `shutdown` resolves or [`Network::stop`].
///
/// Returns [`NetError::NoAddress`] when no link has an address after `opts.timeout` (an
/// IPv6 SLAAC address counts after `opts.ipv6_grace`); everything is stopped then, and the
/// caller may simply call again.
pub async fn configure_with<F: TransportFactory>(
    opts: NetOptions,
    links: Arc<dyn LinkControl>,
    transports: F,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Network, NetError> {
    let started = Instant::now();
    let timeout = opts.timeout;
    let ipv6_grace = opts.ipv6_grace;
    let (report_tx, mut report) = watch::channel(NetReport::default());
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run::supervise(
        Arc::new(opts),
        links,
        Arc::new(transports),
        report_tx,
        stop_rx,
        shutdown,
    ));
    let mut network = Network {
        report: report.clone(),
        stop: Some(stop_tx),
        task,
    };
    let deadline = tokio::time::Instant::from_std(started + timeout);
    let grace = tokio::time::Instant::from_std(started + ipv6_grace);
    loop {
        {
            let now = report.borrow_and_update();
            let ipv6_ok = tokio::time::Instant::now() >= grace && now.has_ipv6();
            if now.has_address() || ipv6_ok {
                tracing::info!(network = %*now, "network configured");
                break;
            }
        }
        tokio::select! {
            changed = report.changed() => {
                if changed.is_err() {
                    // The supervisor ended: shutdown came first.
                    break;
                }
            }
            // Re-check the IPv6 grace period even if nothing changes.
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                let last = report.borrow().clone();
                network.stop().await;
                return Err(NetError::NoAddress { waited: timeout, report: last });
            }
        }
    }
    network.report.mark_unchanged();
    Ok(network)
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeDhcpNet, FakeDhcpServer, FakeLinks};
    use super::*;

    fn quick(resolv: Option<PathBuf>) -> NetOptions {
        NetOptions {
            resolv_conf: resolv,
            timeout: Duration::from_secs(5),
            carrier_timeout: Duration::from_secs(5),
            ipv6_grace: Duration::from_millis(300),
            scan_interval: Duration::from_millis(50),
            ..NetOptions::default()
        }
    }

    fn never() -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    #[tokio::test]
    async fn dhcp_on_every_nic_boot_nic_first() {
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        let links = FakeLinks::new(vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: None,
                loopback: true,
                physical: false,
            },
            FakeLinks::nic(2, "eth0"),
            FakeLinks::nic(3, "eth1"),
        ]);
        let net = FakeDhcpNet::new();
        net.serve("eth0", FakeDhcpServer::subnet(0));
        net.serve("eth1", FakeDhcpServer::subnet(1));
        let opts = NetOptions {
            boot_mac: FakeLinks::nic(3, "eth1").mac,
            ..quick(Some(resolv.clone()))
        };
        let mut network = configure_with(opts, Arc::new(links.clone()), net.clone(), never())
            .await
            .unwrap();
        // Wait until both are bound.
        let mut report = network.report();
        while report.nics.iter().filter(|n| n.ip.is_some()).count() < 2 {
            report = tokio::time::timeout(Duration::from_secs(5), network.changed())
                .await
                .unwrap()
                .unwrap();
        }
        let names: Vec<_> = report
            .nics
            .iter()
            .map(|n| (n.name.as_str(), n.metric, n.boot))
            .collect();
        assert_eq!(names, [("eth1", 100, true), ("eth0", 101, false)]);
        let eth1 = &report.nics[0];
        let ip = eth1.ip.as_ref().unwrap();
        assert_eq!(ip.address, "10.77.1.103".parse::<IpAddr>().unwrap());
        assert_eq!(ip.prefix_len, 24);
        assert_eq!(ip.gateway, Some("10.77.1.1".parse().unwrap()));
        assert!(eth1.carrier);
        assert_eq!(eth1.state, "bound");
        assert!(
            report.to_string().contains(
                "eth1 52:54:00:00:00:03 (boot): bound, 10.77.1.103/24 via 10.77.1.1 metric 100"
            ),
            "{report}"
        );

        {
            let state = links.state();
            assert!(state.up.contains(&2) && state.up.contains(&3) && !state.up.contains(&1));
            assert!(state.autoconf.contains(&2) && state.autoconf.contains(&3));
            let addr = &state.addresses[&3][0];
            assert_eq!(addr.lifetime, Some(Duration::from_secs(3600)));
            let default = state.routes[&3].iter().find(|r| r.prefix_len == 0).unwrap();
            assert_eq!(
                (default.gateway, default.metric),
                (Some("10.77.1.1".parse().unwrap()), 100)
            );
            let default = state.routes[&2].iter().find(|r| r.prefix_len == 0).unwrap();
            assert_eq!(default.metric, 101);
        }
        // Boot NIC's DNS first. Written after the report is published, so allow a moment.
        let want = "# written by siderite-agent from DHCP / static configuration\n\
                    search fake.test\n\
                    nameserver 10.77.1.1\n\
                    nameserver 10.77.0.1\n";
        for _ in 0..50 {
            if std::fs::read_to_string(&resolv).unwrap_or_default() == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_to_string(&resolv).unwrap(), want);
        // The DISCOVERs were broadcast with the client's own MAC.
        let sent = net.sent();
        assert!(sent
            .iter()
            .any(|(link, _, to)| link == "eth1" && *to == dhcp::Destination::Broadcast));
        network.stop().await;
    }

    #[tokio::test]
    async fn static_address_on_the_boot_nic_and_dhcp_elsewhere() {
        let links = FakeLinks::new(vec![FakeLinks::nic(2, "eth0"), FakeLinks::nic(3, "eth1")]);
        let net = FakeDhcpNet::new();
        net.serve("eth1", FakeDhcpServer::subnet(1));
        let opts = NetOptions {
            boot_mac: FakeLinks::nic(2, "eth0").mac,
            static_ips: vec![StaticIp {
                address: "192.0.2.10".parse().unwrap(),
                prefix_len: 24,
                gateway: Some("192.0.2.1".parse().unwrap()),
                dns: vec!["192.0.2.53".parse().unwrap()],
                mac: None,
            }],
            ..quick(None)
        };
        let mut network = configure_with(opts, Arc::new(links.clone()), net.clone(), never())
            .await
            .unwrap();
        let mut report = network.report();
        while report.nics.iter().filter(|n| n.ip.is_some()).count() < 2 {
            report = tokio::time::timeout(Duration::from_secs(5), network.changed())
                .await
                .unwrap()
                .unwrap();
        }
        let eth0 = &report.nics[0];
        assert_eq!(eth0.name, "eth0");
        assert_eq!(eth0.state, "static");
        assert_eq!(eth0.ip.as_ref().unwrap().source, IpSource::Static);
        assert!(
            net.sent().iter().all(|(link, _, _)| link != "eth0"),
            "no DHCP on the static NIC"
        );
        {
            let state = links.state();
            assert_eq!(
                state.addresses[&2][0].ip,
                "192.0.2.10".parse::<IpAddr>().unwrap()
            );
            assert_eq!(state.addresses[&2][0].lifetime, None);
            let default = &state.routes[&2][0];
            assert_eq!(
                (default.prefix_len, default.metric, default.origin),
                (0, 100, RouteOrigin::Static)
            );
        }
        network.stop().await;
    }

    #[tokio::test]
    async fn static_address_picked_by_mac() {
        let links = FakeLinks::new(vec![FakeLinks::nic(2, "eth0"), FakeLinks::nic(3, "eth1")]);
        let opts = NetOptions {
            static_ips: vec![StaticIp {
                address: "2001:db8::10".parse().unwrap(),
                prefix_len: 64,
                gateway: Some("fe80::1".parse().unwrap()),
                dns: vec![],
                mac: FakeLinks::nic(3, "eth1").mac,
            }],
            ..quick(None)
        };
        let network = configure_with(opts, Arc::new(links.clone()), FakeDhcpNet::new(), never())
            .await
            .unwrap();
        let report = network.report();
        let eth1 = report.nics.iter().find(|n| n.name == "eth1").unwrap();
        assert_eq!(
            eth1.ip.as_ref().unwrap().address,
            "2001:db8::10".parse::<IpAddr>().unwrap()
        );
        let default = links.state().routes[&3][0];
        assert_eq!(default.destination, "::".parse::<IpAddr>().unwrap());
        network.stop().await;
    }

    #[tokio::test]
    async fn no_server_times_out_with_the_story() {
        let links = FakeLinks::new(vec![FakeLinks::nic(2, "eth0")]);
        let opts = NetOptions {
            timeout: Duration::from_millis(1500),
            ..quick(None)
        };
        let err = configure_with(opts, Arc::new(links), FakeDhcpNet::new(), never())
            .await
            .err()
            .expect("no address");
        let text = err.to_string();
        assert!(
            text.starts_with("no network link got an address within 1.5s"),
            "{text}"
        );
        assert!(
            text.contains("eth0 52:54:00:00:00:02: dhcp selecting"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn late_carrier_and_late_links_are_picked_up() {
        let links = FakeLinks::new(vec![]);
        links.unplug(2);
        let net = FakeDhcpNet::new();
        net.serve("eth0", FakeDhcpServer::subnet(0));
        let waiter = {
            let links = links.clone();
            tokio::spawn(async move {
                // The NIC's driver loads late, then the cable is plugged later still.
                tokio::time::sleep(Duration::from_millis(200)).await;
                links.state().links.push(FakeLinks::nic(2, "eth0"));
                tokio::time::sleep(Duration::from_millis(300)).await;
                links.plug(2);
            })
        };
        let started = std::time::Instant::now();
        let network = configure_with(quick(None), Arc::new(links.clone()), net.clone(), never())
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(network.report().has_address());
        waiter.await.unwrap();
        network.stop().await;
    }

    #[tokio::test]
    async fn ipv6_only_counts_after_the_grace_period() {
        let links = FakeLinks::new(vec![FakeLinks::nic(2, "eth0")]);
        links
            .state()
            .global
            .insert(2, vec![("2001:db8::5054:ff:fe00:2".parse().unwrap(), 64)]);
        let started = std::time::Instant::now();
        let network = configure_with(quick(None), Arc::new(links), FakeDhcpNet::new(), never())
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let report = network.report();
        assert!(!report.has_address());
        assert_eq!(report.nics[0].ipv6_addresses().count(), 1);
        network.stop().await;
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_clients() {
        let links = FakeLinks::new(vec![FakeLinks::nic(2, "eth0"), FakeLinks::nic(3, "eth1")]);
        let net = FakeDhcpNet::new();
        net.serve("eth0", FakeDhcpServer::subnet(0));
        // eth1 has no server: its client keeps sending, every 20 ms here.
        let opts = NetOptions {
            dhcp: DhcpConfig {
                first_retry: Duration::from_millis(20),
                max_retry: Duration::from_millis(20),
                ..DhcpConfig::default()
            },
            ..quick(None)
        };
        let network = configure_with(opts, Arc::new(links), net.clone(), never())
            .await
            .unwrap();
        let eth1_sent = || net.sent().iter().filter(|(l, _, _)| l == "eth1").count();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(eth1_sent() > 0);
        drop(network);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after_drop = eth1_sent();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            eth1_sent(),
            after_drop,
            "a client kept running after the drop"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_everything() {
        let links = FakeLinks::new(vec![FakeLinks::nic(2, "eth0")]);
        let net = FakeDhcpNet::new();
        net.serve("eth0", FakeDhcpServer::subnet(0));
        let (tx, rx) = oneshot::channel::<()>();
        let mut network = configure_with(quick(None), Arc::new(links), net, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        drop(tx);
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            while network.changed().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "networking did not stop");
    }

    #[test]
    fn mac_round_trips() {
        let mac: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
