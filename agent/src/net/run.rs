//! The running network: a supervisor that finds links and keeps the report and
//! resolv.conf, and one task per link (up, SLAAC, carrier, static or DHCP, renewals).
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::dhcp::{Action, DhcpClient, Lease};
use super::link::{Address, Link, LinkControl, LinkError, Route, RouteOrigin};
use super::socket::{DhcpTransport, TransportFactory};
use super::{resolv, IpConfig, IpSource, NetOptions, NetReport, NicReport, StaticIp};

/// Carrier is polled this often while waiting for it, and once a second afterwards.
const CARRIER_POLL: Duration = Duration::from_millis(100);
const CARRIER_WATCH: Duration = Duration::from_secs(1);
/// Pause before trying again to open a link's DHCP socket.
const REOPEN: Duration = Duration::from_secs(2);
/// Large enough for any DHCP reply on an Ethernet.
const RECV_BUF: usize = 1600;

/// What a link's task tells the supervisor.
#[derive(Debug)]
enum Event {
    Carrier(bool),
    State(String),
    Configured(IpConfig),
    Unconfigured,
}

struct Nic {
    link: Link,
    report: NicReport,
}

/// Runs until `shutdown` or a stop request: finds links, starts their tasks, keeps the
/// report and resolv.conf current. Stops every link task before returning.
pub(super) async fn supervise<F: TransportFactory>(
    opts: Arc<NetOptions>,
    links: Arc<dyn LinkControl>,
    transports: Arc<F>,
    report_tx: watch::Sender<NetReport>,
    mut stop: oneshot::Receiver<()>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<(u32, Event)>();
    let mut tasks = JoinSet::new();
    let mut nics: BTreeMap<u32, Nic> = BTreeMap::new();
    // The boot NIC's metric is kept for it; without one, the first link gets it.
    let mut next_metric = opts.route_metric + u32::from(opts.boot_mac.is_some());
    let mut resolv_written: Option<String> = None;
    let mut scan = tokio::time::interval(opts.scan_interval);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scan_failed = false;
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // A stop request, or the Network handle dropped.
            _ = &mut stop => break,
            Some((index, event)) = events_rx.recv() => {
                if let Some(nic) = nics.get_mut(&index) {
                    apply(&mut nic.report, event);
                }
            }
            _ = scan.tick() => {
                match links.links() {
                    Ok(all) => {
                        scan_failed = false;
                        let chosen = opts.links.select(&all);
                        let fresh: Vec<Link> = chosen.into_iter().filter(|l| !nics.contains_key(&l.index)).collect();
                        let first_ever = nics.is_empty();
                        for (i, link) in fresh.into_iter().enumerate() {
                            let boot = opts.boot_mac.is_some() && link.mac == opts.boot_mac;
                            let metric = if boot {
                                opts.route_metric
                            } else {
                                next_metric += 1;
                                next_metric - 1
                            };
                            let static_ip = static_for(&opts, &link, boot, first_ever && i == 0);
                            tracing::info!(link = %link.name, mac = ?link.mac, boot, metric, "configuring link");
                            let task = LinkTask {
                                link: link.clone(),
                                metric,
                                static_ip,
                                opts: opts.clone(),
                                links: links.clone(),
                                events: events_tx.clone(),
                                cancel: cancel_rx.clone(),
                            };
                            let span = tracing::info_span!("link", name = %link.name);
                            tasks.spawn(task.run(transports.clone()).instrument(span));
                            nics.insert(link.index, Nic {
                                report: NicReport {
                                    name: link.name.clone(),
                                    mac: link.mac,
                                    boot,
                                    metric,
                                    carrier: false,
                                    state: "starting".into(),
                                    ip: None,
                                    global_addresses: Vec::new(),
                                },
                                link,
                            });
                        }
                    }
                    Err(e) => {
                        if !scan_failed {
                            tracing::warn!(error = %ErrorChain(&e), "listing network links");
                        }
                        scan_failed = true;
                    }
                }
                for nic in nics.values_mut() {
                    if let Ok(mut found) = links.global_addresses(&nic.link) {
                        found.sort();
                        if found != nic.report.global_addresses {
                            for (ip, len) in found.iter().filter(|(ip, _)| ip.is_ipv6()) {
                                if !nic.report.global_addresses.contains(&(*ip, *len)) {
                                    tracing::info!(link = %nic.link.name, address = %ip, prefix_len = len, "IPv6 address");
                                }
                            }
                            nic.report.global_addresses = found;
                        }
                    }
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a link task failed");
                }
            }
        }
        publish(&opts, &nics, &report_tx, &mut resolv_written);
    }

    let _ = cancel_tx.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::debug!("networking stopped");
}

/// The static address for a new link, if one is meant for it.
fn static_for(opts: &NetOptions, link: &Link, boot: bool, first: bool) -> Option<StaticIp> {
    opts.static_ips
        .iter()
        .find(|s| match s.mac {
            Some(mac) => link.mac == Some(mac),
            None if opts.boot_mac.is_some() => boot,
            None => first,
        })
        .cloned()
}

fn apply(report: &mut NicReport, event: Event) {
    match event {
        Event::Carrier(up) => report.carrier = up,
        Event::State(state) => report.state = state,
        Event::Configured(ip) => report.ip = Some(ip),
        Event::Unconfigured => report.ip = None,
    }
}

/// Publishes the report (best metric first) and rewrites resolv.conf when its content
/// changes.
fn publish(
    opts: &NetOptions,
    nics: &BTreeMap<u32, Nic>,
    report_tx: &watch::Sender<NetReport>,
    resolv_written: &mut Option<String>,
) {
    let mut list: Vec<NicReport> = nics.values().map(|n| n.report.clone()).collect();
    list.sort_by_key(|n| n.metric);
    if let Some(path) = &opts.resolv_conf {
        let configured = list.iter().filter_map(|n| n.ip.as_ref());
        let servers: Vec<IpAddr> = configured
            .clone()
            .flat_map(|ip| ip.dns.iter().copied())
            .collect();
        let search: Vec<String> = configured
            .flat_map(|ip| ip.search.iter().cloned())
            .collect();
        // Nothing to say yet: leave whatever is there.
        if !servers.is_empty() || resolv_written.is_some() {
            let content = resolv::render(&servers, &search);
            if resolv_written.as_deref() != Some(content.as_str()) {
                match resolv::write(path, &content) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), servers = ?servers, "wrote resolv.conf");
                        *resolv_written = Some(content);
                    }
                    Err(e) => tracing::warn!(error = %ErrorChain(&e), "resolv.conf"),
                }
            }
        }
    }
    report_tx.send_if_modified(|current| {
        if current.nics == list {
            false
        } else {
            current.nics = list;
            true
        }
    });
}

/// One link's life.
struct LinkTask {
    link: Link,
    metric: u32,
    static_ip: Option<StaticIp>,
    opts: Arc<NetOptions>,
    links: Arc<dyn LinkControl>,
    events: mpsc::UnboundedSender<(u32, Event)>,
    cancel: watch::Receiver<bool>,
}

impl LinkTask {
    fn emit(&self, event: Event) {
        let _ = self.events.send((self.link.index, event));
    }

    fn state(&self, state: impl Into<String>) {
        self.emit(Event::State(state.into()));
    }

    async fn cancelled(cancel: &mut watch::Receiver<bool>) {
        // A dropped sender means the supervisor is gone: stop as well.
        let _ = cancel.wait_for(|c| *c).await;
    }

    async fn run<F: TransportFactory>(mut self, transports: Arc<F>) {
        // Before the link goes up, so the first router advertisement is acted on.
        if let Err(e) = self.links.enable_ipv6_autoconf(&self.link) {
            tracing::info!(error = %ErrorChain(&e), "no IPv6 autoconfiguration");
        }
        if let Err(e) = self.links.set_up(&self.link) {
            tracing::warn!(error = %ErrorChain(&e), "cannot bring the link up");
            self.state(format!("failed: {}", ErrorChain(&e)));
            return;
        }
        if let Some(static_ip) = self.static_ip.take() {
            self.run_static(static_ip).await;
            return;
        }
        let carrier = self.wait_for_carrier().await;
        let Some(carrier) = carrier else { return };
        let transport = loop {
            match transports.open(&self.link) {
                Ok(t) => break t,
                Err(e) => {
                    tracing::warn!(error = %e, "opening the DHCP socket");
                    self.state(format!("failed: opening the DHCP socket: {e}"));
                    let mut cancel = self.cancel.clone();
                    tokio::select! {
                        _ = Self::cancelled(&mut cancel) => return,
                        _ = tokio::time::sleep(REOPEN) => {}
                    }
                }
            }
        };
        self.run_dhcp(transport, carrier).await;
    }

    async fn run_static(&mut self, ip: StaticIp) {
        match self.apply_static(&ip) {
            Ok(config) => {
                tracing::info!(address = %ip.address, prefix_len = ip.prefix_len, gateway = ?ip.gateway, "static address");
                self.state("static");
                self.emit(Event::Configured(config));
            }
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), "static address");
                self.state(format!("failed: {}", ErrorChain(&e)));
            }
        }
        // Report carrier until told to stop.
        let mut carrier = None;
        let mut cancel = self.cancel.clone();
        loop {
            let now = self.links.carrier(&self.link).unwrap_or(false);
            if carrier != Some(now) {
                self.emit(Event::Carrier(now));
                carrier = Some(now);
            }
            tokio::select! {
                _ = Self::cancelled(&mut cancel) => return,
                _ = tokio::time::sleep(CARRIER_WATCH) => {}
            }
        }
    }

    fn apply_static(&self, ip: &StaticIp) -> Result<IpConfig, LinkError> {
        let address = Address {
            ip: ip.address,
            prefix_len: ip.prefix_len,
            lifetime: None,
        };
        self.links.add_address(&self.link, &address)?;
        if let Some(gateway) = ip.gateway {
            self.add_default_route(ip.address, ip.prefix_len, gateway, RouteOrigin::Static)?;
        }
        Ok(IpConfig {
            source: IpSource::Static,
            address: ip.address,
            prefix_len: ip.prefix_len,
            gateway: ip.gateway,
            dns: ip.dns.clone(),
            search: Vec::new(),
            hostname: None,
        })
    }

    /// A default route via `gateway`; when the gateway is outside the address's subnet
    /// (e.g. a /32 lease), an on-link host route to it first, or the kernel refuses.
    fn add_default_route(
        &self,
        address: IpAddr,
        prefix_len: u8,
        gateway: IpAddr,
        origin: RouteOrigin,
    ) -> Result<(), LinkError> {
        let metric = self.metric;
        for route in default_routes(address, prefix_len, gateway, metric, origin) {
            self.links.add_route(&self.link, &route)?;
        }
        Ok(())
    }

    /// Waits for carrier, at most `carrier_timeout` (then DHCP starts anyway). `None` when
    /// cancelled; else whether carrier was seen.
    async fn wait_for_carrier(&self) -> Option<bool> {
        self.state("waiting for carrier");
        let mut cancel = self.cancel.clone();
        let give_up = tokio::time::Instant::now() + self.opts.carrier_timeout;
        loop {
            match self.links.carrier(&self.link) {
                Ok(true) => {
                    self.emit(Event::Carrier(true));
                    return Some(true);
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %ErrorChain(&e), "reading carrier"),
            }
            if tokio::time::Instant::now() >= give_up {
                tracing::warn!(
                    waited = ?self.opts.carrier_timeout,
                    "no carrier; trying DHCP anyway"
                );
                return Some(false);
            }
            tokio::select! {
                _ = Self::cancelled(&mut cancel) => return None,
                _ = tokio::time::sleep(CARRIER_POLL) => {}
            }
        }
    }

    async fn run_dhcp<T: DhcpTransport>(&self, transport: T, mut carrier: bool) {
        let mac = match self.link.mac {
            Some(mac) => mac,
            None => {
                self.state("failed: no MAC address for DHCP");
                return;
            }
        };
        let mut client = DhcpClient::new(
            mac,
            self.opts.dhcp.clone(),
            rand::random(),
            std::time::Instant::now(),
        );
        let mut applied: Option<Lease> = None;
        let mut cancel = self.cancel.clone();
        let mut buf = vec![0u8; RECV_BUF];
        let mut carrier_tick = tokio::time::interval(CARRIER_WATCH);
        carrier_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_state = "";
        let far = Duration::from_secs(24 * 3600);
        loop {
            if client.state_name() != last_state {
                last_state = client.state_name();
                tracing::debug!(state = last_state, "DHCP");
                self.state(if last_state == "bound" {
                    "bound".to_string()
                } else {
                    format!("dhcp {last_state}")
                });
            }
            let deadline = client
                .deadline()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + far);
            let step = tokio::select! {
                _ = Self::cancelled(&mut cancel) => return,
                _ = tokio::time::sleep_until(deadline) => client.handle_timeout(std::time::Instant::now()),
                received = transport.recv(&mut buf) => match received {
                    Ok(len) => client.handle_packet(&buf[..len], std::time::Instant::now()),
                    Err(e) => {
                        tracing::warn!(error = %e, "receiving DHCP");
                        tokio::time::sleep(CARRIER_WATCH).await;
                        Ok(Vec::new())
                    }
                },
                _ = carrier_tick.tick() => {
                    let now_up = self.links.carrier(&self.link).unwrap_or(carrier);
                    let came_back = now_up && !carrier;
                    if now_up != carrier {
                        tracing::info!(carrier = now_up, "carrier changed");
                        self.emit(Event::Carrier(now_up));
                        carrier = now_up;
                    }
                    if came_back {
                        client.link_up(std::time::Instant::now())
                    } else {
                        Ok(Vec::new())
                    }
                }
            };
            let actions = match step {
                Ok(actions) => actions,
                Err(e) => {
                    tracing::error!(error = %ErrorChain(&e), "DHCP");
                    continue;
                }
            };
            for action in actions {
                match action {
                    Action::Send { packet, to } => {
                        if let Err(e) = transport.send(&packet, to).await {
                            tracing::debug!(error = %e, ?to, "sending DHCP");
                        }
                    }
                    Action::Bind(lease) => match self.bind(&lease, applied.as_ref()) {
                        Ok(config) => {
                            tracing::info!(
                                address = %lease.address,
                                prefix_len = lease.prefix_len,
                                gateway = ?lease.gateway,
                                dns = ?lease.dns,
                                server = %lease.server,
                                lease_secs = lease.lease_time.map(|t| t.as_secs()),
                                "DHCP lease"
                            );
                            self.emit(Event::Configured(config));
                            applied = Some(lease);
                        }
                        Err(e) => {
                            // The next renewal tries again.
                            tracing::error!(error = %ErrorChain(&e), address = %lease.address, "applying the DHCP lease");
                        }
                    },
                    Action::Unbind(lease) => {
                        self.unbind(&lease);
                        if applied.as_ref().is_some_and(|a| a.address == lease.address) {
                            applied = None;
                            self.emit(Event::Unconfigured);
                        }
                    }
                }
            }
        }
    }

    fn lease_routes(&self, lease: &Lease) -> Vec<Route> {
        let mut routes: Vec<Route> = lease
            .routes
            .iter()
            .map(|r| Route {
                destination: r.destination.into(),
                prefix_len: r.prefix_len,
                gateway: r.gateway.map(IpAddr::V4),
                metric: self.metric,
                origin: RouteOrigin::Dhcp,
            })
            .collect();
        if let Some(gateway) = lease.gateway {
            routes.extend(default_routes(
                lease.address.into(),
                lease.prefix_len,
                gateway.into(),
                self.metric,
                RouteOrigin::Dhcp,
            ));
        }
        routes
    }

    fn bind(&self, lease: &Lease, previous: Option<&Lease>) -> Result<IpConfig, LinkError> {
        let routes = self.lease_routes(lease);
        if let Some(old) = previous {
            let moved = old.address != lease.address || old.prefix_len != lease.prefix_len;
            if moved {
                self.unbind(old);
            } else {
                for stale in self
                    .lease_routes(old)
                    .iter()
                    .filter(|r| !routes.contains(r))
                {
                    let _ = self.links.remove_route(&self.link, stale);
                }
            }
        }
        self.links.add_address(
            &self.link,
            &Address {
                ip: lease.address.into(),
                prefix_len: lease.prefix_len,
                lifetime: lease.lease_time,
            },
        )?;
        for route in &routes {
            self.links.add_route(&self.link, route)?;
        }
        let mut search = lease.search.clone();
        if search.is_empty() {
            search.extend(lease.domain.clone());
        }
        Ok(IpConfig {
            source: IpSource::Dhcp {
                server: lease.server,
                lease_time: lease.lease_time,
            },
            address: lease.address.into(),
            prefix_len: lease.prefix_len,
            gateway: lease.gateway.map(IpAddr::V4),
            dns: lease.dns.iter().copied().map(IpAddr::V4).collect(),
            search,
            hostname: lease.hostname.clone(),
        })
    }

    fn unbind(&self, lease: &Lease) {
        for route in self.lease_routes(lease) {
            if let Err(e) = self.links.remove_route(&self.link, &route) {
                tracing::debug!(error = %ErrorChain(&e), "removing a route");
            }
        }
        let address = Address {
            ip: lease.address.into(),
            prefix_len: lease.prefix_len,
            lifetime: None,
        };
        if let Err(e) = self.links.remove_address(&self.link, &address) {
            tracing::warn!(error = %ErrorChain(&e), address = %lease.address, "removing the address");
        }
        tracing::info!(address = %lease.address, "dropped DHCP address");
    }
}

/// The default route via `gateway`, preceded by an on-link host route to the gateway when
/// it lies outside `address/prefix_len`.
fn default_routes(
    address: IpAddr,
    prefix_len: u8,
    gateway: IpAddr,
    metric: u32,
    origin: RouteOrigin,
) -> Vec<Route> {
    let mut routes = Vec::with_capacity(2);
    if !same_subnet(address, gateway, prefix_len) {
        routes.push(Route {
            destination: gateway,
            prefix_len: if gateway.is_ipv4() { 32 } else { 128 },
            gateway: None,
            metric,
            origin,
        });
    }
    let unspecified = match gateway {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    routes.push(Route {
        destination: unspecified,
        prefix_len: 0,
        gateway: Some(gateway),
        metric,
        origin,
    });
    routes
}

fn same_subnet(a: IpAddr, b: IpAddr, prefix_len: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            // Link-local gateways (router advertisements' style) are always on-link.
            if b.segments()[0] & 0xffc0 == 0xfe80 {
                return true;
            }
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// An error with its sources, on one line.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_outside_the_subnet_get_a_host_route() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let inside = default_routes(ip("10.0.0.5"), 24, ip("10.0.0.1"), 100, RouteOrigin::Dhcp);
        assert_eq!(inside.len(), 1);
        assert_eq!(inside[0].destination, ip("0.0.0.0"));
        assert_eq!(inside[0].gateway, Some(ip("10.0.0.1")));
        let outside = default_routes(ip("10.0.0.5"), 32, ip("10.0.0.1"), 100, RouteOrigin::Dhcp);
        assert_eq!(outside.len(), 2);
        assert_eq!(
            (
                outside[0].destination,
                outside[0].prefix_len,
                outside[0].gateway
            ),
            (ip("10.0.0.1"), 32, None)
        );
        assert!(same_subnet(ip("2001:db8::5"), ip("fe80::1"), 64));
        assert!(!same_subnet(ip("2001:db8::5"), ip("2001:db9::1"), 64));
        assert!(same_subnet(ip("0.0.0.0"), ip("1.2.3.4"), 0));
    }
}
