//! The DHCPv4 client as a state machine without I/O (RFC 2131, tuned for fast boots).
//!
//! The caller feeds it the time, received datagrams and timer expiries; it answers with
//! [`Action`]s: datagrams to send, a lease to apply, a lease to remove. Nothing here sleeps,
//! opens sockets or touches the host, so every path (OFFER, NAK, T1 renew, T2 rebind,
//! expiry, retries) is tested with packets built by `dhcproto`.
//!
//! Departures from the RFC, on purpose: retries start at 1 s and double up to a cap instead
//! of 4 s with jitter (a machine on the bench should not wait), the first OFFER wins, and a
//! lease is counted from the moment its ACK arrives.
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::MacAddr;

/// Shortest lease honoured; shorter ones would make the client spin on renewals.
const MIN_LEASE: Duration = Duration::from_secs(10);
/// `secs` and lifetimes are 32-bit on the wire; "infinite" is all ones.
const INFINITE: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Cannot happen with the options this client sends (no domain names, short strings).
    /// dhcproto's cause is not kept: formatting it would link hickory's error and IDNA
    /// machinery into the agent (about 200 KB).
    #[error("encoding a DHCP {0:?}")]
    Encode(MessageType),
}

/// How the client paces itself and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Wait after the first DISCOVER or REQUEST before sending it again.
    pub first_retry: Duration,
    /// The retry interval doubles up to this.
    pub max_retry: Duration,
    /// REQUESTs sent for one OFFER before starting over with a DISCOVER.
    pub request_attempts: u32,
    /// Shortest wait between renewal (T1..T2) or rebinding (T2..expiry) retransmissions;
    /// otherwise the client waits half the time left, as RFC 2131 says.
    pub min_renew_retry: Duration,
    /// Option 60.
    pub vendor_class: String,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(8),
            request_attempts: 4,
            min_renew_retry: Duration::from_secs(10),
            vendor_class: "siderite".to_string(),
        }
    }
}

/// A route from option 121 (RFC 3442). `gateway` is `None` for an on-link route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// What the server granted, with the times counted from `acquired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Option 54: where renewals go.
    pub server: Ipv4Addr,
    /// The default gateway: option 121's default route if the server sent 121 (RFC 3442
    /// says option 3 is then ignored), else the first router of option 3.
    pub gateway: Option<Ipv4Addr>,
    /// Option 121's routes other than the default one.
    pub routes: Vec<Route4>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub hostname: Option<String>,
    /// `None` for an infinite lease.
    pub lease_time: Option<Duration>,
    pub renew_after: Option<Duration>,
    pub rebind_after: Option<Duration>,
    pub acquired: Instant,
}

impl Lease {
    fn at(&self, after: Option<Duration>) -> Option<Instant> {
        after.map(|d| self.acquired + d)
    }
    /// When the address must no longer be used, `None` if never.
    pub fn expires(&self) -> Option<Instant> {
        self.at(self.lease_time)
    }
    pub fn renew_at(&self) -> Option<Instant> {
        self.at(self.renew_after)
    }
    pub fn rebind_at(&self) -> Option<Instant> {
        self.at(self.rebind_after)
    }
    /// Time left on the lease at `now`; `None` if infinite.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.expires().map(|e| e.saturating_duration_since(now))
    }
}

/// Where a datagram goes: the limited broadcast or a server's unicast address (renewals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Broadcast,
    Unicast(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this encoded DHCP message to port 67 at `to`.
    Send { packet: Vec<u8>, to: Destination },
    /// Configure (or refresh) this lease on the link.
    Bind(Lease),
    /// Remove this lease from the link: it expired or the server refused it.
    Unbind(Lease),
}

/// The client's state (RFC 2131 figure 5, minus INIT-REBOOT).
#[derive(Debug, Clone)]
enum State {
    /// About to send a DISCOVER at `at` (after a NAK or a failed REQUEST, with back-off).
    Init {
        at: Instant,
    },
    Selecting {
        xid: u32,
        started: Instant,
        next: Instant,
        interval: Duration,
    },
    Requesting {
        xid: u32,
        started: Instant,
        offered: Ipv4Addr,
        server: Ipv4Addr,
        sent: u32,
        next: Instant,
        interval: Duration,
    },
    Bound {
        lease: Lease,
    },
    Renewing {
        xid: u32,
        started: Instant,
        lease: Lease,
        next: Instant,
    },
    Rebinding {
        xid: u32,
        started: Instant,
        lease: Lease,
        next: Instant,
    },
}

/// One DHCPv4 client for one link.
pub struct DhcpClient {
    mac: MacAddr,
    config: DhcpConfig,
    rng: StdRng,
    state: State,
    /// NAKs in a row; spaces out restarts so a confused server cannot make us spin.
    naks: u32,
}

impl DhcpClient {
    /// A client that sends its first DISCOVER at the first [`handle_timeout`] at or after
    /// `now`. `seed` feeds the transaction IDs (random in production, fixed in tests).
    ///
    /// [`handle_timeout`]: DhcpClient::handle_timeout
    pub fn new(mac: MacAddr, config: DhcpConfig, seed: u64, now: Instant) -> Self {
        DhcpClient {
            mac,
            config,
            rng: StdRng::seed_from_u64(seed),
            state: State::Init { at: now },
            naks: 0,
        }
    }

    /// The state's name, for logs and reports.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Init { .. } => "init",
            State::Selecting { .. } => "selecting",
            State::Requesting { .. } => "requesting",
            State::Bound { .. } => "bound",
            State::Renewing { .. } => "renewing",
            State::Rebinding { .. } => "rebinding",
        }
    }

    /// The lease in force, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound { lease }
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// The transaction ID the client currently answers to.
    pub fn xid(&self) -> Option<u32> {
        match self.state {
            State::Selecting { xid, .. }
            | State::Requesting { xid, .. }
            | State::Renewing { xid, .. }
            | State::Rebinding { xid, .. } => Some(xid),
            State::Init { .. } | State::Bound { .. } => None,
        }
    }

    /// When [`handle_timeout`](DhcpClient::handle_timeout) wants to be called next; `None`
    /// when bound to an infinite lease.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Init { at } => Some(*at),
            State::Selecting { next, .. } | State::Requesting { next, .. } => Some(*next),
            State::Bound { lease } => lease.renew_at(),
            State::Renewing { lease, next, .. } => Some(min_opt(*next, lease.rebind_at())),
            State::Rebinding { lease, next, .. } => Some(min_opt(*next, lease.expires())),
        }
    }

    /// Timers: (re)send what is due, move to RENEWING/REBINDING, drop an expired lease.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<Vec<Action>, DhcpError> {
        if self.deadline().is_none_or(|d| now < d) {
            return Ok(Vec::new());
        }
        match self.state.clone() {
            State::Init { .. } => self.discover(now),
            State::Selecting {
                xid,
                started,
                interval,
                ..
            } => {
                let interval = self.backoff(interval);
                self.state = State::Selecting {
                    xid,
                    started,
                    next: now + interval,
                    interval,
                };
                Ok(vec![self.send_discover(xid, started, now)?])
            }
            State::Requesting {
                xid,
                started,
                offered,
                server,
                sent,
                interval,
                ..
            } => {
                if sent >= self.config.request_attempts {
                    tracing::debug!(%offered, %server, "no answer to REQUEST; starting over");
                    return self.discover(now);
                }
                let interval = self.backoff(interval);
                self.state = State::Requesting {
                    xid,
                    started,
                    offered,
                    server,
                    sent: sent + 1,
                    next: now + interval,
                    interval,
                };
                Ok(vec![
                    self.send_select_request(xid, started, now, offered, server)?
                ])
            }
            State::Bound { lease } => {
                let xid = self.rng.random();
                let next = now + self.renew_retry(now, lease.rebind_at());
                let send = self.send_renew_request(
                    xid,
                    now,
                    now,
                    &lease,
                    Destination::Unicast(lease.server),
                )?;
                self.state = State::Renewing {
                    xid,
                    started: now,
                    lease,
                    next,
                };
                Ok(vec![send])
            }
            State::Renewing {
                xid,
                started,
                lease,
                ..
            } => {
                if lease.rebind_at().is_some_and(|t2| now >= t2) {
                    let xid = self.rng.random();
                    let next = now + self.renew_retry(now, lease.expires());
                    let send =
                        self.send_renew_request(xid, now, now, &lease, Destination::Broadcast)?;
                    self.state = State::Rebinding {
                        xid,
                        started: now,
                        lease,
                        next,
                    };
                    return Ok(vec![send]);
                }
                let next = now + self.renew_retry(now, lease.rebind_at());
                let send = self.send_renew_request(
                    xid,
                    started,
                    now,
                    &lease,
                    Destination::Unicast(lease.server),
                )?;
                self.state = State::Renewing {
                    xid,
                    started,
                    lease,
                    next,
                };
                Ok(vec![send])
            }
            State::Rebinding {
                xid,
                started,
                lease,
                ..
            } => {
                if lease.expires().is_some_and(|end| now >= end) {
                    tracing::warn!(address = %lease.address, "DHCP lease expired");
                    let mut actions = vec![Action::Unbind(lease)];
                    actions.extend(self.discover(now)?);
                    return Ok(actions);
                }
                let next = now + self.renew_retry(now, lease.expires());
                let send =
                    self.send_renew_request(xid, started, now, &lease, Destination::Broadcast)?;
                self.state = State::Rebinding {
                    xid,
                    started,
                    lease,
                    next,
                };
                Ok(vec![send])
            }
        }
    }

    /// The link came back after losing carrier: it may be on another network now, so
    /// start over at once (a bound client asks to keep its address by rebinding).
    pub fn link_up(&mut self, now: Instant) -> Result<Vec<Action>, DhcpError> {
        match self.state.clone() {
            State::Bound { lease }
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. } => {
                if lease.expires().is_some_and(|end| now >= end) {
                    let mut actions = vec![Action::Unbind(lease)];
                    actions.extend(self.discover(now)?);
                    return Ok(actions);
                }
                let xid = self.rng.random();
                let next = now + self.config.first_retry;
                let send =
                    self.send_renew_request(xid, now, now, &lease, Destination::Broadcast)?;
                self.state = State::Rebinding {
                    xid,
                    started: now,
                    lease,
                    next,
                };
                Ok(vec![send])
            }
            State::Init { .. } | State::Selecting { .. } | State::Requesting { .. } => {
                self.naks = 0;
                self.discover(now)
            }
        }
    }

    /// A datagram from port 67. Anything that is not a reply to us, in this state, with
    /// this xid, is ignored.
    pub fn handle_packet(&mut self, bytes: &[u8], now: Instant) -> Result<Vec<Action>, DhcpError> {
        let Ok(msg) = Message::from_bytes(bytes) else {
            tracing::debug!(len = bytes.len(), "ignoring an undecodable DHCP datagram");
            return Ok(Vec::new());
        };
        if msg.opcode() != Opcode::BootReply
            || Some(msg.xid()) != self.xid()
            || msg.chaddr().get(..6) != Some(&self.mac.0[..])
        {
            return Ok(Vec::new());
        }
        let Some(kind) = msg.opts().msg_type() else {
            return Ok(Vec::new());
        };
        let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        match (self.state.clone(), kind) {
            (State::Selecting { xid, started, .. }, MessageType::Offer) => {
                let offered = msg.yiaddr();
                // A server identifier is mandatory in an OFFER; without it there is no
                // server to address the REQUEST to.
                let Some(server) = server_id else {
                    return Ok(Vec::new());
                };
                if offered.is_unspecified() || offered.is_broadcast() || offered.is_multicast() {
                    return Ok(Vec::new());
                }
                tracing::debug!(%offered, %server, "DHCP OFFER");
                let interval = self.config.first_retry;
                self.state = State::Requesting {
                    xid,
                    started,
                    offered,
                    server,
                    sent: 1,
                    next: now + interval,
                    interval,
                };
                Ok(vec![
                    self.send_select_request(xid, started, now, offered, server)?
                ])
            }
            (
                State::Requesting {
                    offered, server, ..
                },
                MessageType::Ack,
            ) => {
                let Some(lease) = parse_lease(&msg, now, server) else {
                    return Ok(Vec::new());
                };
                if lease.address != offered {
                    tracing::debug!(%offered, acked = %lease.address, "ACK for another address than offered");
                }
                self.naks = 0;
                self.state = State::Bound {
                    lease: lease.clone(),
                };
                Ok(vec![Action::Bind(lease)])
            }
            (
                State::Renewing { lease: old, .. } | State::Rebinding { lease: old, .. },
                MessageType::Ack,
            ) => {
                let Some(lease) = parse_lease(&msg, now, old.server) else {
                    return Ok(Vec::new());
                };
                let mut actions = Vec::new();
                if lease.address != old.address || lease.prefix_len != old.prefix_len {
                    actions.push(Action::Unbind(old));
                }
                self.naks = 0;
                self.state = State::Bound {
                    lease: lease.clone(),
                };
                actions.push(Action::Bind(lease));
                Ok(actions)
            }
            (State::Requesting { server, .. }, MessageType::Nak) => {
                if server_id.is_some_and(|id| id != server) {
                    // Another server refusing; ours may still say yes.
                    return Ok(Vec::new());
                }
                tracing::info!(%server, message = nak_message(&msg), "DHCP NAK");
                self.restart_after_nak(now);
                Ok(Vec::new())
            }
            (State::Renewing { lease, .. } | State::Rebinding { lease, .. }, MessageType::Nak) => {
                tracing::warn!(address = %lease.address, message = nak_message(&msg), "DHCP NAK: the lease is gone");
                self.restart_after_nak(now);
                Ok(vec![Action::Unbind(lease)])
            }
            _ => Ok(Vec::new()),
        }
    }

    fn restart_after_nak(&mut self, now: Instant) {
        self.naks = self.naks.saturating_add(1);
        // The first NAK restarts at once; repeated ones back off like retransmissions.
        let wait = if self.naks <= 1 {
            Duration::ZERO
        } else {
            self.config
                .first_retry
                .saturating_mul(1 << (self.naks - 2).min(16))
                .min(self.config.max_retry)
        };
        self.state = State::Init { at: now + wait };
    }

    fn discover(&mut self, now: Instant) -> Result<Vec<Action>, DhcpError> {
        let xid = self.rng.random();
        let interval = self.config.first_retry;
        self.state = State::Selecting {
            xid,
            started: now,
            next: now + interval,
            interval,
        };
        Ok(vec![self.send_discover(xid, now, now)?])
    }

    fn backoff(&self, interval: Duration) -> Duration {
        interval.saturating_mul(2).min(self.config.max_retry)
    }

    /// Half the time left until `until`, but no less than the configured minimum and never
    /// past `until` itself (the deadline takes over there).
    fn renew_retry(&self, now: Instant, until: Option<Instant>) -> Duration {
        match until {
            Some(until) => {
                let left = until.saturating_duration_since(now);
                (left / 2)
                    .max(self.config.min_renew_retry)
                    .min(left.max(Duration::from_millis(1)))
            }
            None => self.config.min_renew_retry,
        }
    }

    fn base_message(&self, xid: u32, started: Instant, now: Instant, kind: MessageType) -> Message {
        let mut msg = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac.0,
        );
        let secs = now.saturating_duration_since(started).as_secs();
        msg.set_secs(u16::try_from(secs).unwrap_or(u16::MAX));
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut client_id = Vec::with_capacity(7);
        client_id.push(1); // htype 1: Ethernet
        client_id.extend_from_slice(&self.mac.0);
        opts.insert(DhcpOption::ClientIdentifier(client_id));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::DomainName,
            OptionCode::Hostname,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
            OptionCode::DomainSearch,
            OptionCode::ClasslessStaticRoute,
        ]));
        opts.insert(DhcpOption::ClassIdentifier(
            self.config.vendor_class.as_bytes().to_vec(),
        ));
        msg
    }

    fn send_discover(&self, xid: u32, started: Instant, now: Instant) -> Result<Action, DhcpError> {
        let mut msg = self.base_message(xid, started, now, MessageType::Discover);
        // We have no address yet: ask for broadcast replies.
        msg.set_flags(Flags::default().set_broadcast());
        encode(&msg, MessageType::Discover, Destination::Broadcast)
    }

    fn send_select_request(
        &self,
        xid: u32,
        started: Instant,
        now: Instant,
        offered: Ipv4Addr,
        server: Ipv4Addr,
    ) -> Result<Action, DhcpError> {
        let mut msg = self.base_message(xid, started, now, MessageType::Request);
        msg.set_flags(Flags::default().set_broadcast());
        msg.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offered));
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        encode(&msg, MessageType::Request, Destination::Broadcast)
    }

    /// RENEWING and REBINDING: ciaddr holds our address, no options 50/54 (RFC 2131 4.3.2);
    /// we own the address, so replies may come unicast.
    fn send_renew_request(
        &self,
        xid: u32,
        started: Instant,
        now: Instant,
        lease: &Lease,
        to: Destination,
    ) -> Result<Action, DhcpError> {
        let mut msg = self.base_message(xid, started, now, MessageType::Request);
        msg.set_ciaddr(lease.address);
        encode(&msg, MessageType::Request, to)
    }
}

fn encode(msg: &Message, kind: MessageType, to: Destination) -> Result<Action, DhcpError> {
    let packet = msg.to_vec().map_err(|_| DhcpError::Encode(kind))?;
    Ok(Action::Send { packet, to })
}

fn min_opt(a: Instant, b: Option<Instant>) -> Instant {
    b.map_or(a, |b| a.min(b))
}

fn nak_message(msg: &Message) -> &str {
    match msg.opts().get(OptionCode::Message) {
        Some(DhcpOption::Message(m)) => m.as_str(),
        _ => "",
    }
}

/// The lease an ACK grants; `None` when the ACK is unusable (no address).
fn parse_lease(msg: &Message, now: Instant, fallback_server: Ipv4Addr) -> Option<Lease> {
    let address = msg.yiaddr();
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return None;
    }
    let opts = msg.opts();
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ => fallback_server,
    };
    let prefix_len = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => mask_to_prefix(*mask),
        _ => None,
    }
    .unwrap_or_else(|| classful_prefix(address));
    let routers: Vec<Ipv4Addr> = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect(),
        _ => Vec::new(),
    };
    let (gateway, routes) = match opts.get(OptionCode::ClasslessStaticRoute) {
        Some(DhcpOption::ClasslessStaticRoute(list)) => {
            let mut gateway = None;
            let mut routes = Vec::new();
            for (net, gw) in list {
                let via = (!gw.is_unspecified()).then_some(*gw);
                if net.prefix_len() == 0 {
                    gateway = gateway.or(via);
                } else {
                    routes.push(Route4 {
                        destination: net.network(),
                        prefix_len: net.prefix_len(),
                        gateway: via,
                    });
                }
            }
            (gateway, routes)
        }
        _ => (routers.first().copied(), Vec::new()),
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect(),
        _ => Vec::new(),
    };
    let domain = match opts.get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d)) => clean_name(d),
        _ => None,
    };
    let search = match opts.get(OptionCode::DomainSearch) {
        // to_ascii keeps IDNA tables out of the binary.
        Some(DhcpOption::DomainSearch(names)) => names
            .iter()
            .filter_map(|n| clean_name(&n.to_ascii()))
            .collect(),
        _ => Vec::new(),
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => clean_name(h),
        _ => None,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
        _ => None,
    };
    let (lease_time, renew_after, rebind_after) = match lease_secs {
        // No lease time in an ACK is a broken server; treat it as infinite rather than
        // dropping an address the server did hand out.
        None | Some(INFINITE) => (None, None, None),
        Some(secs) => {
            let lease = Duration::from_secs(u64::from(secs)).max(MIN_LEASE);
            let t1 = match opts.get(OptionCode::Renewal) {
                Some(DhcpOption::Renewal(t)) => Some(Duration::from_secs(u64::from(*t))),
                _ => None,
            };
            let t2 = match opts.get(OptionCode::Rebinding) {
                Some(DhcpOption::Rebinding(t)) => Some(Duration::from_secs(u64::from(*t))),
                _ => None,
            };
            let (t1, t2) = lease_timers(lease, t1, t2);
            (Some(lease), Some(t1), Some(t2))
        }
    };
    Some(Lease {
        address,
        prefix_len,
        server,
        gateway,
        routes,
        dns,
        domain,
        search,
        hostname,
        lease_time,
        renew_after,
        rebind_after,
        acquired: now,
    })
}

/// T1 and T2 as sent when they make sense (0 < T1 < T2 < lease), RFC 2131's defaults
/// (0.5 and 0.875 of the lease) otherwise.
fn lease_timers(
    lease: Duration,
    t1: Option<Duration>,
    t2: Option<Duration>,
) -> (Duration, Duration) {
    let default_t1 = lease / 2;
    let default_t2 = lease * 7 / 8;
    let t2 = t2
        .filter(|t2| !t2.is_zero() && *t2 < lease)
        .unwrap_or(default_t2);
    let t1 = t1
        .filter(|t1| !t1.is_zero() && *t1 < t2)
        .unwrap_or(default_t1.min(t2));
    (t1, t2)
}

/// A contiguous netmask's prefix length.
pub(crate) fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The pre-CIDR default for a server that sends no subnet mask.
fn classful_prefix(ip: Ipv4Addr) -> u8 {
    match ip.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// A DNS name from the wire, or `None` if it is empty or carries anything that could break
/// resolv.conf (whitespace, control characters) or is absurdly long.
fn clean_name(raw: &str) -> Option<String> {
    let name = raw.trim_end_matches('\0').trim_end_matches('.');
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::HType;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
    const OFFERED: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 50);

    fn client(now: Instant) -> DhcpClient {
        DhcpClient::new(MAC, DhcpConfig::default(), 7, now)
    }

    fn decode(action: &Action) -> (Message, Destination) {
        match action {
            Action::Send { packet, to } => (Message::from_bytes(packet).expect("decodes"), *to),
            other => panic!("expected a Send, got {other:?}"),
        }
    }

    fn only_send(actions: &[Action]) -> (Message, Destination) {
        assert_eq!(actions.len(), 1, "{actions:?}");
        decode(&actions[0])
    }

    /// A server reply to `req`, as dnsmasq would build it.
    fn reply(req: &Message, kind: MessageType, lease_secs: Option<u32>) -> Vec<u8> {
        let mut msg = Message::new_with_id(
            req.xid(),
            req.ciaddr(),
            if kind == MessageType::Nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                OFFERED
            },
            SERVER,
            Ipv4Addr::UNSPECIFIED,
            req.chaddr(),
        );
        msg.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_flags(req.flags());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(SERVER));
        if kind != MessageType::Nak {
            opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            opts.insert(DhcpOption::Router(vec![SERVER]));
            opts.insert(DhcpOption::DomainNameServer(vec![
                Ipv4Addr::new(10, 9, 0, 53),
                Ipv4Addr::new(10, 9, 0, 54),
            ]));
            opts.insert(DhcpOption::DomainName("lab.example".into()));
            if let Some(secs) = lease_secs {
                opts.insert(DhcpOption::AddressLeaseTime(secs));
            }
        } else {
            opts.insert(DhcpOption::Message("wrong network".into()));
        }
        msg.to_vec().unwrap()
    }

    /// Runs DISCOVER -> OFFER -> REQUEST -> ACK with a `lease_secs` lease.
    fn bound(now: Instant, lease_secs: u32) -> DhcpClient {
        let mut c = client(now);
        let (discover, _) = only_send(&c.handle_timeout(now).unwrap());
        let (request, _) = only_send(
            &c.handle_packet(&reply(&discover, MessageType::Offer, Some(lease_secs)), now)
                .unwrap(),
        );
        let actions = c
            .handle_packet(&reply(&request, MessageType::Ack, Some(lease_secs)), now)
            .unwrap();
        assert!(
            matches!(actions.as_slice(), [Action::Bind(_)]),
            "{actions:?}"
        );
        c
    }

    #[test]
    fn discover_carries_what_servers_need() {
        let now = Instant::now();
        let mut c = client(now);
        assert_eq!(c.deadline(), Some(now));
        let (msg, to) = only_send(&c.handle_timeout(now).unwrap());
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(msg.opcode(), Opcode::BootRequest);
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        assert!(
            msg.flags().broadcast(),
            "replies must be broadcast: we have no address"
        );
        assert_eq!(&msg.chaddr()[..6], &MAC.0);
        assert_eq!(msg.htype(), HType::Eth);
        assert_eq!(
            msg.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![
                1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56
            ]))
        );
        assert_eq!(
            msg.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"siderite".to_vec()))
        );
        let Some(DhcpOption::ParameterRequestList(prl)) =
            msg.opts().get(OptionCode::ParameterRequestList)
        else {
            panic!("no parameter request list");
        };
        for code in [
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::DomainName,
            OptionCode::Hostname,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ] {
            assert!(prl.contains(&code), "{code:?} not requested");
        }
        assert_eq!(c.state_name(), "selecting");
        assert_eq!(c.xid(), Some(msg.xid()));
    }

    #[test]
    fn xids_are_random_per_client() {
        let now = Instant::now();
        let mut a = DhcpClient::new(MAC, DhcpConfig::default(), 1, now);
        let mut b = DhcpClient::new(MAC, DhcpConfig::default(), 2, now);
        let (ma, _) = only_send(&a.handle_timeout(now).unwrap());
        let (mb, _) = only_send(&b.handle_timeout(now).unwrap());
        assert_ne!(ma.xid(), mb.xid());
    }

    #[test]
    fn discover_retries_at_1_2_4_8_then_stays_capped() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let (first, _) = only_send(&c.handle_timeout(t0).unwrap());
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let next = c.deadline().unwrap();
            // Nothing happens before the deadline.
            assert!(c
                .handle_timeout(next - Duration::from_millis(1))
                .unwrap()
                .is_empty());
            gaps.push((next - now).as_secs());
            now = next;
            let (again, _) = only_send(&c.handle_timeout(now).unwrap());
            assert_eq!(again.xid(), first.xid(), "retransmissions keep the xid");
            assert_eq!(u64::from(again.secs()), (now - t0).as_secs());
        }
        assert_eq!(gaps, vec![1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn first_offer_wins_and_request_names_it() {
        let now = Instant::now();
        let mut c = client(now);
        let (discover, _) = only_send(&c.handle_timeout(now).unwrap());
        let (request, to) = only_send(
            &c.handle_packet(&reply(&discover, MessageType::Offer, Some(3600)), now)
                .unwrap(),
        );
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(request.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(request.xid(), discover.xid());
        assert!(request.flags().broadcast());
        assert_eq!(
            request.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(OFFERED))
        );
        assert_eq!(
            request.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(request.ciaddr(), Ipv4Addr::UNSPECIFIED);
        // A second OFFER is ignored.
        assert!(c
            .handle_packet(&reply(&discover, MessageType::Offer, Some(3600)), now)
            .unwrap()
            .is_empty());
        assert_eq!(c.state_name(), "requesting");
    }

    #[test]
    fn ack_binds_with_everything_the_server_said() {
        let now = Instant::now();
        let c = bound(now, 3600);
        let lease = c.lease().unwrap();
        assert_eq!(lease.address, OFFERED);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.server, SERVER);
        assert_eq!(lease.gateway, Some(SERVER));
        assert_eq!(
            lease.dns,
            vec![Ipv4Addr::new(10, 9, 0, 53), Ipv4Addr::new(10, 9, 0, 54)]
        );
        assert_eq!(lease.domain.as_deref(), Some("lab.example"));
        assert_eq!(lease.lease_time, Some(Duration::from_secs(3600)));
        assert_eq!(lease.renew_at(), Some(now + Duration::from_secs(1800)));
        assert_eq!(lease.rebind_at(), Some(now + Duration::from_secs(3150)));
        assert_eq!(c.deadline(), lease.renew_at());
        assert_eq!(c.state_name(), "bound");
    }

    #[test]
    fn replies_for_someone_else_are_ignored() {
        let now = Instant::now();
        let mut c = client(now);
        let (discover, _) = only_send(&c.handle_timeout(now).unwrap());
        // Wrong xid.
        let mut other = discover.clone();
        other.set_xid(discover.xid().wrapping_add(1));
        assert!(c
            .handle_packet(&reply(&other, MessageType::Offer, Some(60)), now)
            .unwrap()
            .is_empty());
        // Wrong MAC.
        let mut other = discover.clone();
        other.set_chaddr(&[2, 0, 0, 0, 0, 1]);
        assert!(c
            .handle_packet(&reply(&other, MessageType::Offer, Some(60)), now)
            .unwrap()
            .is_empty());
        // Our own DISCOVER echoed back (BootRequest).
        assert!(c
            .handle_packet(&discover.to_vec().unwrap(), now)
            .unwrap()
            .is_empty());
        // Garbage.
        assert!(c.handle_packet(&[1, 2, 3], now).unwrap().is_empty());
        // An ACK while selecting.
        assert!(c
            .handle_packet(&reply(&discover, MessageType::Ack, Some(60)), now)
            .unwrap()
            .is_empty());
        assert_eq!(c.state_name(), "selecting");
    }

    #[test]
    fn nak_while_requesting_starts_over_with_a_new_xid() {
        let now = Instant::now();
        let mut c = client(now);
        let (discover, _) = only_send(&c.handle_timeout(now).unwrap());
        let (request, _) = only_send(
            &c.handle_packet(&reply(&discover, MessageType::Offer, Some(60)), now)
                .unwrap(),
        );
        assert!(c
            .handle_packet(&reply(&request, MessageType::Nak, None), now)
            .unwrap()
            .is_empty());
        assert_eq!(c.state_name(), "init");
        assert_eq!(c.deadline(), Some(now), "the first NAK restarts at once");
        let (again, _) = only_send(&c.handle_timeout(now).unwrap());
        assert_eq!(again.opts().msg_type(), Some(MessageType::Discover));
        assert_ne!(again.xid(), discover.xid());
        // NAKs in a row back off.
        let (request, _) = only_send(
            &c.handle_packet(&reply(&again, MessageType::Offer, Some(60)), now)
                .unwrap(),
        );
        c.handle_packet(&reply(&request, MessageType::Nak, None), now)
            .unwrap();
        assert_eq!(c.deadline(), Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn unanswered_requests_fall_back_to_discover() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let (discover, _) = only_send(&c.handle_timeout(t0).unwrap());
        only_send(
            &c.handle_packet(&reply(&discover, MessageType::Offer, Some(60)), t0)
                .unwrap(),
        );
        let mut sent = 1;
        loop {
            let now = c.deadline().unwrap();
            let (msg, _) = only_send(&c.handle_timeout(now).unwrap());
            if msg.opts().msg_type() == Some(MessageType::Discover) {
                break;
            }
            sent += 1;
            assert!(sent <= 4, "too many REQUESTs");
        }
        assert_eq!(sent, 4);
        assert_eq!(c.state_name(), "selecting");
    }

    #[test]
    fn t1_renews_unicast_then_ack_extends() {
        let t0 = Instant::now();
        let mut c = bound(t0, 100);
        let t1 = t0 + Duration::from_secs(50);
        assert_eq!(c.deadline(), Some(t1));
        assert!(c
            .handle_timeout(t1 - Duration::from_millis(1))
            .unwrap()
            .is_empty());
        let (renew, to) = only_send(&c.handle_timeout(t1).unwrap());
        assert_eq!(to, Destination::Unicast(SERVER));
        assert_eq!(renew.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(renew.ciaddr(), OFFERED);
        assert!(!renew.flags().broadcast());
        assert!(renew.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert!(renew.opts().get(OptionCode::ServerIdentifier).is_none());
        assert_eq!(c.state_name(), "renewing");
        let later = t1 + Duration::from_secs(2);
        let actions = c
            .handle_packet(&reply(&renew, MessageType::Ack, Some(100)), later)
            .unwrap();
        let [Action::Bind(lease)] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        assert_eq!(lease.acquired, later);
        assert_eq!(c.deadline(), Some(later + Duration::from_secs(50)));
        assert_eq!(c.state_name(), "bound");
    }

    #[test]
    fn renewing_retries_then_rebinds_at_t2_then_expires() {
        let t0 = Instant::now();
        let mut c = bound(t0, 160);
        let t1 = t0 + Duration::from_secs(80);
        let t2 = t0 + Duration::from_secs(140);
        let end = t0 + Duration::from_secs(160);
        let (renew, _) = only_send(&c.handle_timeout(t1).unwrap());
        // Half of the 60 s left to T2.
        assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(30)));
        let (again, to) = only_send(&c.handle_timeout(t1 + Duration::from_secs(30)).unwrap());
        assert_eq!(to, Destination::Unicast(SERVER));
        assert_eq!(again.xid(), renew.xid());
        // 30 s left: half is 15, at least 10.
        assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(45)));
        only_send(&c.handle_timeout(t1 + Duration::from_secs(45)).unwrap());
        // 15 s left: 7.5 s is below the 10 s minimum.
        assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(55)));
        only_send(&c.handle_timeout(t1 + Duration::from_secs(55)).unwrap());
        // 5 s left: capped at T2.
        assert_eq!(c.deadline(), Some(t2));
        let (rebind, to) = only_send(&c.handle_timeout(t2).unwrap());
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(rebind.ciaddr(), OFFERED);
        assert_eq!(c.state_name(), "rebinding");
        // 20 s left: 10 s retry.
        assert_eq!(c.deadline(), Some(t2 + Duration::from_secs(10)));
        only_send(&c.handle_timeout(t2 + Duration::from_secs(10)).unwrap());
        assert_eq!(c.deadline(), Some(end));
        let actions = c.handle_timeout(end).unwrap();
        assert!(
            matches!(&actions[0], Action::Unbind(l) if l.address == OFFERED),
            "{actions:?}"
        );
        let (discover, _) = decode(&actions[1]);
        assert_eq!(discover.opts().msg_type(), Some(MessageType::Discover));
        assert!(c.lease().is_none());
    }

    #[test]
    fn ack_while_rebinding_rebinds() {
        let t0 = Instant::now();
        let mut c = bound(t0, 160);
        only_send(&c.handle_timeout(t0 + Duration::from_secs(80)).unwrap());
        let t2 = t0 + Duration::from_secs(140);
        let (rebind, _) = only_send(&c.handle_timeout(t2).unwrap());
        let actions = c
            .handle_packet(&reply(&rebind, MessageType::Ack, Some(160)), t2)
            .unwrap();
        assert!(matches!(actions.as_slice(), [Action::Bind(l)] if l.acquired == t2));
        assert_eq!(c.state_name(), "bound");
    }

    #[test]
    fn nak_while_renewing_drops_the_lease() {
        let t0 = Instant::now();
        let mut c = bound(t0, 100);
        let (renew, _) = only_send(&c.handle_timeout(t0 + Duration::from_secs(50)).unwrap());
        let actions = c
            .handle_packet(
                &reply(&renew, MessageType::Nak, None),
                t0 + Duration::from_secs(50),
            )
            .unwrap();
        assert!(matches!(actions.as_slice(), [Action::Unbind(l)] if l.address == OFFERED));
        assert_eq!(c.state_name(), "init");
    }

    #[test]
    fn renewal_to_another_address_unbinds_the_old_one() {
        let t0 = Instant::now();
        let mut c = bound(t0, 100);
        let (renew, _) = only_send(&c.handle_timeout(t0 + Duration::from_secs(50)).unwrap());
        let mut ack = Message::from_bytes(&reply(&renew, MessageType::Ack, Some(100))).unwrap();
        ack.set_yiaddr(Ipv4Addr::new(10, 9, 0, 77));
        let actions = c
            .handle_packet(&ack.to_vec().unwrap(), t0 + Duration::from_secs(50))
            .unwrap();
        assert!(
            matches!(actions.as_slice(), [Action::Unbind(old), Action::Bind(new)]
                if old.address == OFFERED && new.address == Ipv4Addr::new(10, 9, 0, 77)),
            "{actions:?}"
        );
    }

    #[test]
    fn link_up_rebinds_a_lease_and_restarts_discovery() {
        let t0 = Instant::now();
        let mut c = bound(t0, 3600);
        let (msg, to) = only_send(&c.link_up(t0 + Duration::from_secs(5)).unwrap());
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(msg.ciaddr(), OFFERED);
        assert_eq!(c.state_name(), "rebinding");

        let mut c = client(t0);
        only_send(&c.handle_timeout(t0).unwrap());
        for _ in 0..3 {
            let d = c.deadline().unwrap();
            c.handle_timeout(d).unwrap();
        }
        let now = c.deadline().unwrap() - Duration::from_millis(500);
        let (msg, _) = only_send(&c.link_up(now).unwrap());
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(
            c.deadline(),
            Some(now + Duration::from_secs(1)),
            "back-off restarts"
        );
    }

    #[test]
    fn infinite_and_missing_lease_times_never_renew() {
        let now = Instant::now();
        let c = bound(now, INFINITE);
        assert_eq!(c.lease().unwrap().lease_time, None);
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn tiny_leases_are_stretched() {
        let now = Instant::now();
        let c = bound(now, 1);
        assert_eq!(c.lease().unwrap().lease_time, Some(MIN_LEASE));
        assert_eq!(c.deadline(), Some(now + MIN_LEASE / 2));
    }

    #[test]
    fn lease_timers_fall_back_to_rfc_defaults() {
        let lease = Duration::from_secs(1000);
        let s = Duration::from_secs;
        assert_eq!(lease_timers(lease, None, None), (s(500), s(875)));
        assert_eq!(
            lease_timers(lease, Some(s(100)), Some(s(200))),
            (s(100), s(200))
        );
        // T1 after T2, T2 after the lease: both replaced.
        assert_eq!(
            lease_timers(lease, Some(s(900)), Some(s(2000))),
            (s(500), s(875))
        );
        assert_eq!(
            lease_timers(lease, Some(s(0)), Some(s(300))),
            (s(300), s(300))
        );
    }

    #[test]
    fn option_121_overrides_routers() {
        let now = Instant::now();
        let mut msg = Message::from_bytes(&reply(
            &Message::new_with_id(
                1,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                &MAC.0,
            ),
            MessageType::Ack,
            Some(60),
        ))
        .unwrap();
        msg.opts_mut().insert(DhcpOption::ClasslessStaticRoute(vec![
            ("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 9, 0, 254)),
            (
                "192.168.7.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 9, 0, 2),
            ),
            ("10.10.0.0/16".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
        ]));
        let lease = parse_lease(&msg, now, SERVER).unwrap();
        assert_eq!(lease.gateway, Some(Ipv4Addr::new(10, 9, 0, 254)));
        assert_eq!(
            lease.routes,
            vec![
                Route4 {
                    destination: Ipv4Addr::new(192, 168, 7, 0),
                    prefix_len: 24,
                    gateway: Some(Ipv4Addr::new(10, 9, 0, 2))
                },
                Route4 {
                    destination: Ipv4Addr::new(10, 10, 0, 0),
                    prefix_len: 16,
                    gateway: None
                },
            ]
        );
    }

    #[test]
    fn names_from_the_wire_are_sanitised() {
        assert_eq!(clean_name("Lab.Example."), Some("lab.example".into()));
        assert_eq!(clean_name("evil\nnameserver 1.2.3.4"), None);
        assert_eq!(clean_name(""), None);
        assert_eq!(clean_name(&"a".repeat(300)), None);
    }

    #[test]
    fn masks() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(classful_prefix(Ipv4Addr::new(10, 0, 0, 1)), 8);
        assert_eq!(classful_prefix(Ipv4Addr::new(172, 16, 0, 1)), 16);
        assert_eq!(classful_prefix(Ipv4Addr::new(192, 168, 0, 1)), 24);
    }

    #[test]
    fn without_a_mask_the_class_decides() {
        let now = Instant::now();
        let mut msg = Message::from_bytes(&reply(
            &Message::new_with_id(
                1,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                &MAC.0,
            ),
            MessageType::Ack,
            Some(60),
        ))
        .unwrap();
        msg.opts_mut().remove(OptionCode::SubnetMask);
        assert_eq!(parse_lease(&msg, now, SERVER).unwrap().prefix_len, 8);
    }
}
