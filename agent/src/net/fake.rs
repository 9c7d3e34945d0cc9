//! Fakes for tests: a network stack that records what was configured, and an in-memory
//! DHCP server answering through fake transports. Used by this crate's tests and by
//! in-process tests of the whole agent.
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode};
use dhcproto::{Decodable, Encodable};
use tokio::sync::mpsc;

use super::dhcp::Destination;
use super::link::{Address, Link, LinkControl, LinkError, Route};
use super::socket::{DhcpTransport, TransportFactory};
use super::MacAddr;

/// What [`FakeLinks`] holds; public so tests can look and poke.
#[derive(Debug, Default, Clone)]
pub struct FakeState {
    pub links: Vec<Link>,
    pub up: BTreeSet<u32>,
    pub carrier: BTreeSet<u32>,
    pub autoconf: BTreeSet<u32>,
    pub addresses: BTreeMap<u32, Vec<Address>>,
    pub routes: BTreeMap<u32, Vec<Route>>,
    /// Global addresses as the kernel would report them (e.g. SLAAC results).
    pub global: BTreeMap<u32, Vec<(IpAddr, u8)>>,
}

/// A network stack in memory. Carrier follows `up` unless a link is listed in
/// `no_carrier`.
#[derive(Debug, Default, Clone)]
pub struct FakeLinks {
    state: Arc<Mutex<FakeState>>,
    no_carrier: Arc<Mutex<BTreeSet<u32>>>,
}

impl FakeLinks {
    pub fn new(links: Vec<Link>) -> Self {
        let fake = FakeLinks::default();
        fake.state().links = links;
        fake
    }

    /// A physical Ethernet link with a MAC made from its index.
    pub fn nic(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.to_string(),
            mac: Some(MacAddr([0x52, 0x54, 0, 0, 0, index as u8])),
            loopback: false,
            physical: true,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds carrier down on a link until [`FakeLinks::plug`].
    pub fn unplug(&self, index: u32) {
        self.no_carrier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index);
        self.state().carrier.remove(&index);
    }

    pub fn plug(&self, index: u32) {
        self.no_carrier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&index);
        let mut state = self.state();
        if state.up.contains(&index) {
            state.carrier.insert(index);
        }
    }

    fn known(&self, link: &Link) -> Result<(), LinkError> {
        if self.state().links.iter().any(|l| l.index == link.index) {
            Ok(())
        } else {
            Err(LinkError::NoSuchLink(link.index))
        }
    }
}

impl LinkControl for FakeLinks {
    fn links(&self) -> Result<Vec<Link>, LinkError> {
        Ok(self.state().links.clone())
    }

    fn set_up(&self, link: &Link) -> Result<(), LinkError> {
        self.known(link)?;
        let blocked = self
            .no_carrier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&link.index);
        let mut state = self.state();
        state.up.insert(link.index);
        if !blocked {
            state.carrier.insert(link.index);
        }
        Ok(())
    }

    fn carrier(&self, link: &Link) -> Result<bool, LinkError> {
        self.known(link)?;
        Ok(self.state().carrier.contains(&link.index))
    }

    fn enable_ipv6_autoconf(&self, link: &Link) -> Result<(), LinkError> {
        self.known(link)?;
        self.state().autoconf.insert(link.index);
        Ok(())
    }

    fn add_address(&self, link: &Link, address: &Address) -> Result<(), LinkError> {
        self.known(link)?;
        let mut state = self.state();
        let list = state.addresses.entry(link.index).or_default();
        list.retain(|a| a.ip != address.ip);
        list.push(*address);
        Ok(())
    }

    fn remove_address(&self, link: &Link, address: &Address) -> Result<(), LinkError> {
        self.known(link)?;
        let mut state = self.state();
        if let Some(list) = state.addresses.get_mut(&link.index) {
            list.retain(|a| a.ip != address.ip);
        }
        Ok(())
    }

    fn add_route(&self, link: &Link, route: &Route) -> Result<(), LinkError> {
        self.known(link)?;
        let mut state = self.state();
        let list = state.routes.entry(link.index).or_default();
        list.retain(|r| {
            (r.destination, r.prefix_len, r.metric)
                != (route.destination, route.prefix_len, route.metric)
        });
        list.push(*route);
        Ok(())
    }

    fn remove_route(&self, link: &Link, route: &Route) -> Result<(), LinkError> {
        self.known(link)?;
        let mut state = self.state();
        if let Some(list) = state.routes.get_mut(&link.index) {
            list.retain(|r| r != route);
        }
        Ok(())
    }

    fn global_addresses(&self, link: &Link) -> Result<Vec<(IpAddr, u8)>, LinkError> {
        self.known(link)?;
        let state = self.state();
        let mut out: Vec<(IpAddr, u8)> = state
            .addresses
            .get(&link.index)
            .into_iter()
            .flatten()
            .map(|a| (a.ip, a.prefix_len))
            .collect();
        out.extend(state.global.get(&link.index).into_iter().flatten().copied());
        Ok(out)
    }
}

/// What the fake DHCP server hands out on one link's network.
#[derive(Debug, Clone)]
pub struct FakeDhcpServer {
    pub server: Ipv4Addr,
    /// Addresses are given out from here up, one per client MAC.
    pub first: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease: Duration,
}

impl FakeDhcpServer {
    /// A /24 with the server as router and DNS, one-hour leases.
    pub fn subnet(third_octet: u8) -> Self {
        let server = Ipv4Addr::new(10, 77, third_octet, 1);
        FakeDhcpServer {
            server,
            first: Ipv4Addr::new(10, 77, third_octet, 100),
            prefix_len: 24,
            router: Some(server),
            dns: vec![server],
            domain: Some("fake.test".into()),
            lease: Duration::from_secs(3600),
        }
    }

    /// The reply to one client datagram, if any.
    pub fn answer(&self, request: &[u8]) -> Option<Vec<u8>> {
        let req = Message::from_bytes(request).ok()?;
        if req.opcode() != Opcode::BootRequest {
            return None;
        }
        let kind = match req.opts().msg_type()? {
            MessageType::Discover => MessageType::Offer,
            MessageType::Request => MessageType::Ack,
            _ => return None,
        };
        let host = u32::from(req.chaddr().get(5).copied().unwrap_or(0));
        let yiaddr = Ipv4Addr::from(u32::from(self.first) + host);
        let mut msg = Message::new_with_id(
            req.xid(),
            req.ciaddr(),
            yiaddr,
            self.server,
            Ipv4Addr::UNSPECIFIED,
            req.chaddr(),
        );
        msg.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_flags(req.flags());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.server));
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        opts.insert(DhcpOption::SubnetMask(mask.into()));
        if let Some(router) = self.router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        if !self.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(self.dns.clone()));
        }
        if let Some(domain) = &self.domain {
            opts.insert(DhcpOption::DomainName(domain.clone()));
        }
        let secs = u32::try_from(self.lease.as_secs()).unwrap_or(u32::MAX - 1);
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        msg.to_vec().ok()
    }
}

/// A datagram a client sent: link name, bytes, destination.
pub type Sent = (String, Vec<u8>, Destination);

/// Fake transports: each link's datagrams go to that link's [`FakeDhcpServer`] (or
/// nowhere, for links without one) and its replies come back.
#[derive(Debug, Clone, Default)]
pub struct FakeDhcpNet {
    servers: Arc<Mutex<BTreeMap<String, FakeDhcpServer>>>,
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl FakeDhcpNet {
    pub fn new() -> Self {
        FakeDhcpNet::default()
    }

    /// Serve DHCP on the network behind link `name`.
    pub fn serve(&self, name: &str, server: FakeDhcpServer) {
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), server);
    }

    /// Every datagram clients sent: link name, bytes, destination.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct FakeTransport {
    link: String,
    net: FakeDhcpNet,
    replies_tx: mpsc::UnboundedSender<Vec<u8>>,
    replies: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
}

impl DhcpTransport for FakeTransport {
    async fn send(&self, packet: &[u8], to: Destination) -> io::Result<()> {
        self.net
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.link.clone(), packet.to_vec(), to));
        let server = self
            .net
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.link)
            .cloned();
        if let Some(reply) = server.and_then(|s| s.answer(packet)) {
            let _ = self.replies_tx.send(reply);
        }
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let reply = self.replies.lock().await.recv().await;
        let reply = reply.ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        let len = reply.len().min(buf.len());
        buf[..len].copy_from_slice(&reply[..len]);
        Ok(len)
    }
}

impl TransportFactory for FakeDhcpNet {
    type Transport = FakeTransport;
    fn open(&self, link: &Link) -> io::Result<FakeTransport> {
        let (replies_tx, replies) = mpsc::unbounded_channel();
        Ok(FakeTransport {
            link: link.name.clone(),
            net: self.clone(),
            replies_tx,
            replies: tokio::sync::Mutex::new(replies),
        })
    }
}
