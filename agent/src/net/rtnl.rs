//! The few rtnetlink messages the agent needs, encoded and decoded by hand (netlink(7),
//! rtnetlink(7)): link dump/get/up, address add/remove/dump, route add/remove.
//!
//! Why not netlink-packet-route: it decodes every attribute of every link kind and cost
//! the static agent about 330 KiB of code, against a few hundred lines here. The layouts
//! below are the kernel's stable UAPI (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h,
//! linux/if_addr.h), in native byte order.
use std::net::IpAddr;

use super::link::{Address, Route, RouteOrigin};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

pub(crate) const IFF_UP: u32 = 0x1;
pub(crate) const IFF_LOOPBACK: u32 = 0x8;
pub(crate) const IFF_LOWER_UP: u32 = 0x1_0000;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_CACHEINFO: u16 = 6;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RTPROT_DHCP: u8 = 16;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// "Forever" in ifa_cacheinfo.
const INFINITY_LIFE_TIME: u32 = u32::MAX;

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// One request being built: header, fixed part, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, fixed: &[u8]) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it in
        buf.extend_from_slice(fixed);
        buf.resize(align(buf.len()), 0);
        Msg(buf)
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(align(self.0.len()), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// struct ifinfomsg: family, pad, type, index, flags, change.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = AF_UNSPEC;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// RTM_GETLINK for every link.
pub(crate) fn link_dump(seq: u32) -> Vec<u8> {
    Msg::new(RTM_GETLINK, NLM_F_DUMP, seq, &ifinfomsg(0, 0, 0)).finish()
}

/// RTM_GETLINK for one link, acknowledged.
pub(crate) fn link_get(seq: u32, index: u32) -> Vec<u8> {
    Msg::new(RTM_GETLINK, NLM_F_ACK, seq, &ifinfomsg(index, 0, 0)).finish()
}

/// RTM_NEWLINK on an existing link setting IFF_UP, as `ip link set up` does.
pub(crate) fn link_set_up(seq: u32, index: u32) -> Vec<u8> {
    Msg::new(
        RTM_NEWLINK,
        NLM_F_ACK,
        seq,
        &ifinfomsg(index, IFF_UP, IFF_UP),
    )
    .finish()
}

/// RTM_GETADDR for every address of both families.
pub(crate) fn addr_dump(seq: u32) -> Vec<u8> {
    Msg::new(
        RTM_GETADDR,
        NLM_F_DUMP,
        seq,
        &[AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0],
    )
    .finish()
}

/// RTM_NEWADDR (create or replace, with lifetimes) or RTM_DELADDR.
pub(crate) fn addr_change(seq: u32, add: bool, index: u32, address: &Address) -> Vec<u8> {
    let mut fixed = [0u8; 8];
    fixed[0] = family(&address.ip);
    fixed[1] = address.prefix_len;
    fixed[3] = RT_SCOPE_UNIVERSE;
    fixed[4..8].copy_from_slice(&index.to_ne_bytes());
    let (kind, flags) = if add {
        (RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
    } else {
        (RTM_DELADDR, NLM_F_ACK)
    };
    let ip = ip_bytes(&address.ip);
    let mut msg = Msg::new(kind, flags, seq, &fixed)
        .attr(IFA_LOCAL, &ip)
        .attr(IFA_ADDRESS, &ip);
    if let IpAddr::V4(v4) = address.ip {
        if address.prefix_len < 31 {
            let broadcast = u32::from(v4) | (u32::MAX >> address.prefix_len);
            msg = msg.attr(IFA_BROADCAST, &broadcast.to_be_bytes());
        }
    }
    if add {
        let life = address.lifetime.map_or(INFINITY_LIFE_TIME, |d| {
            u32::try_from(d.as_secs())
                .unwrap_or(INFINITY_LIFE_TIME - 1)
                .min(INFINITY_LIFE_TIME - 1)
        });
        // struct ifa_cacheinfo: preferred, valid, cstamp, tstamp.
        let mut info = [0u8; 16];
        info[0..4].copy_from_slice(&life.to_ne_bytes());
        info[4..8].copy_from_slice(&life.to_ne_bytes());
        msg = msg.attr(IFA_CACHEINFO, &info);
    }
    msg.finish()
}

/// RTM_NEWROUTE (create or replace) or RTM_DELROUTE in the main table.
pub(crate) fn route_change(seq: u32, add: bool, index: u32, route: &Route) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let mut fixed = [0u8; 12];
    fixed[0] = family(&route.destination);
    fixed[1] = route.prefix_len;
    fixed[4] = RT_TABLE_MAIN;
    fixed[5] = match route.origin {
        RouteOrigin::Dhcp => RTPROT_DHCP,
        RouteOrigin::Static => RTPROT_STATIC,
    };
    fixed[6] = if route.gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    fixed[7] = RTN_UNICAST;
    let (kind, flags) = if add {
        (RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
    } else {
        (RTM_DELROUTE, NLM_F_ACK)
    };
    let mut msg = Msg::new(kind, flags, seq, &fixed);
    if route.prefix_len > 0 {
        msg = msg.attr(RTA_DST, &ip_bytes(&route.destination));
    }
    if let Some(gateway) = &route.gateway {
        msg = msg.attr(RTA_GATEWAY, &ip_bytes(gateway));
    }
    msg.attr(RTA_OIF, &index.to_ne_bytes())
        .attr(RTA_PRIORITY, &route.metric.to_ne_bytes())
        .finish()
}

/// A link from RTM_NEWLINK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub index: u32,
    pub flags: u32,
    pub name: String,
    pub address: Vec<u8>,
}

/// An address from RTM_NEWADDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddrInfo {
    pub index: u32,
    pub prefix_len: u8,
    pub scope: u8,
    pub ip: IpAddr,
}

impl AddrInfo {
    pub fn is_global(&self) -> bool {
        self.scope == RT_SCOPE_UNIVERSE
    }
}

/// One message of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Link(LinkInfo),
    Addr(AddrInfo),
    /// The end of a dump.
    Done,
    /// NLMSG_ERROR with 0: the request succeeded.
    Ack,
    /// NLMSG_ERROR with an errno (positive here).
    Error(i32),
    /// Anything else (other message types, or ones we do not decode).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink reply: {0}")]
pub struct Malformed(pub &'static str);

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes after a fixed part: (type, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let kind = u16_at(b, 2)? & 0x3fff; // strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = b.get(align(len)..).unwrap_or(&[]);
        Some((kind, data))
    })
}

fn parse_ip(family: u8, data: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(data).ok().map(IpAddr::from),
        AF_INET6 => <[u8; 16]>::try_from(data).ok().map(IpAddr::from),
        _ => None,
    }
}

fn parse_link(body: &[u8]) -> Result<Reply, Malformed> {
    let fixed = body.get(..16).ok_or(Malformed("short ifinfomsg"))?;
    let mut link = LinkInfo {
        index: u32_at(fixed, 4).unwrap_or(0),
        flags: u32_at(fixed, 8).unwrap_or(0),
        name: String::new(),
        address: Vec::new(),
    };
    for (kind, data) in attrs(&body[16..]) {
        match kind {
            IFLA_IFNAME => {
                let name = data.split(|b| *b == 0).next().unwrap_or(&[]);
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_ADDRESS => link.address = data.to_vec(),
            _ => {}
        }
    }
    Ok(Reply::Link(link))
}

fn parse_addr(body: &[u8]) -> Result<Reply, Malformed> {
    let fixed = body.get(..8).ok_or(Malformed("short ifaddrmsg"))?;
    let family = fixed[0];
    let (mut local, mut address) = (None, None);
    for (kind, data) in attrs(&body[8..]) {
        match kind {
            IFA_LOCAL => local = parse_ip(family, data),
            IFA_ADDRESS => address = parse_ip(family, data),
            _ => {}
        }
    }
    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links
    // and the address otherwise (IPv6 sends only IFA_ADDRESS).
    match local.or(address) {
        Some(ip) => Ok(Reply::Addr(AddrInfo {
            index: u32_at(fixed, 4).unwrap_or(0),
            prefix_len: fixed[1],
            scope: fixed[3],
            ip,
        })),
        None => Ok(Reply::Other),
    }
}

/// Every message in one datagram from the kernel, with its sequence number.
pub(crate) fn parse(datagram: &[u8]) -> Result<Vec<(u32, Reply)>, Malformed> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32_at(rest, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(Malformed("bad message length"));
        }
        let kind = u16_at(rest, 4).unwrap_or(0);
        let seq = u32_at(rest, 8).unwrap_or(0);
        let body = &rest[NLMSG_HDRLEN..len];
        let reply = match kind {
            NLMSG_DONE => Reply::Done,
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or(Malformed("short error message"))? as i32;
                if code == 0 {
                    Reply::Ack
                } else {
                    Reply::Error(code.saturating_neg())
                }
            }
            RTM_NEWLINK => parse_link(body)?,
            RTM_NEWADDR => parse_addr(body)?,
            _ => Reply::Other,
        };
        out.push((seq, reply));
        rest = rest.get(align(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn header(b: &[u8]) -> (u32, u16, u16, u32) {
        (
            u32_at(b, 0).unwrap(),
            u16_at(b, 4).unwrap(),
            u16_at(b, 6).unwrap(),
            u32_at(b, 8).unwrap(),
        )
    }

    #[test]
    fn link_up_is_ip_link_set_up() {
        let b = link_set_up(7, 3);
        assert_eq!(header(&b), (32, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 7));
        assert_eq!(&b[16..], &ifinfomsg(3, IFF_UP, IFF_UP));
        assert_eq!(u32_at(&b, 20), Some(3));
        assert_eq!(header(&link_dump(1)).2, NLM_F_REQUEST | NLM_F_DUMP);
    }

    #[test]
    fn address_add_carries_broadcast_and_lifetime() {
        let address = Address {
            ip: "10.213.0.120".parse().unwrap(),
            prefix_len: 24,
            lifetime: Some(Duration::from_secs(120)),
        };
        let b = addr_change(9, true, 5, &address);
        let (len, kind, flags, seq) = header(&b);
        assert_eq!(len as usize, b.len());
        assert_eq!((kind, seq), (RTM_NEWADDR, 9));
        assert_eq!(
            flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        assert_eq!(&b[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(u32_at(&b, 20), Some(5));
        let found: Vec<(u16, Vec<u8>)> = attrs(&b[24..]).map(|(k, d)| (k, d.to_vec())).collect();
        assert_eq!(
            found,
            vec![
                (IFA_LOCAL, vec![10, 213, 0, 120]),
                (IFA_ADDRESS, vec![10, 213, 0, 120]),
                (IFA_BROADCAST, vec![10, 213, 0, 255]),
                (
                    IFA_CACHEINFO,
                    [120u32.to_ne_bytes(), 120u32.to_ne_bytes(), [0; 4], [0; 4]].concat()
                ),
            ]
        );
        let forever = Address {
            lifetime: None,
            ..address
        };
        let b = addr_change(1, true, 5, &forever);
        let info = attrs(&b[24..])
            .find(|(k, _)| *k == IFA_CACHEINFO)
            .unwrap()
            .1
            .to_vec();
        assert_eq!(&info[4..8], &u32::MAX.to_ne_bytes());
        let del = addr_change(2, false, 5, &forever);
        assert_eq!(header(&del).1, RTM_DELADDR);
        assert!(attrs(&del[24..]).all(|(k, _)| k != IFA_CACHEINFO));
    }

    #[test]
    fn default_route_via_a_gateway() {
        let route = Route {
            destination: "0.0.0.0".parse().unwrap(),
            prefix_len: 0,
            gateway: Some("10.213.0.1".parse().unwrap()),
            metric: 100,
            origin: RouteOrigin::Dhcp,
        };
        let b = route_change(4, true, 6, &route);
        assert_eq!(header(&b).1, RTM_NEWROUTE);
        assert_eq!(
            &b[16..28],
            &[
                AF_INET,
                0,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_DHCP,
                RT_SCOPE_UNIVERSE,
                RTN_UNICAST,
                0,
                0,
                0,
                0
            ]
        );
        let found: Vec<(u16, Vec<u8>)> = attrs(&b[28..]).map(|(k, d)| (k, d.to_vec())).collect();
        assert_eq!(
            found,
            vec![
                (RTA_GATEWAY, vec![10, 213, 0, 1]),
                (RTA_OIF, 6u32.to_ne_bytes().to_vec()),
                (RTA_PRIORITY, 100u32.to_ne_bytes().to_vec()),
            ]
        );
        let onlink = Route {
            destination: "2001:db8::".parse().unwrap(),
            prefix_len: 64,
            gateway: None,
            origin: RouteOrigin::Static,
            ..route
        };
        let b = route_change(5, false, 6, &onlink);
        assert_eq!(header(&b).1, RTM_DELROUTE);
        assert_eq!(
            &b[16..24],
            &[
                AF_INET6,
                64,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_STATIC,
                RT_SCOPE_LINK,
                RTN_UNICAST
            ]
        );
        let dst = attrs(&b[28..])
            .find(|(k, _)| *k == RTA_DST)
            .unwrap()
            .1
            .to_vec();
        assert_eq!(dst.len(), 16);
    }

    /// A reply as the kernel lays it out: header, fixed part, attributes.
    fn reply(kind: u16, seq: u32, fixed: &[u8], attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut msg = Msg::new(kind, 0, seq, fixed);
        for (k, d) in attributes {
            msg = msg.attr(*k, d);
        }
        msg.finish()
    }

    #[test]
    fn parses_links_addresses_acks_and_errors() {
        let mut datagram = reply(
            RTM_NEWLINK,
            3,
            &ifinfomsg(2, IFF_UP | IFF_LOWER_UP, 0),
            &[
                (IFLA_IFNAME, b"eth0\0"),
                (IFLA_ADDRESS, &[0x52, 0x54, 0, 1, 2, 3]),
                (999, b"xyz"),
            ],
        );
        let mut addr = [AF_INET6, 64, 0, RT_SCOPE_UNIVERSE, 0, 0, 0, 0];
        addr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        let v6: std::net::Ipv6Addr = "2001:db8::5054:ff:fe01:203".parse().unwrap();
        datagram.extend(reply(RTM_NEWADDR, 3, &addr, &[(IFA_ADDRESS, &v6.octets())]));
        datagram.extend(reply(NLMSG_DONE, 3, &[0; 4], &[]));
        datagram.extend(reply(NLMSG_ERROR, 4, &0i32.to_ne_bytes(), &[]));
        datagram.extend(reply(NLMSG_ERROR, 5, &(-17i32).to_ne_bytes(), &[]));
        let parsed = parse(&datagram).unwrap();
        assert_eq!(
            parsed,
            vec![
                (
                    3,
                    Reply::Link(LinkInfo {
                        index: 2,
                        flags: IFF_UP | IFF_LOWER_UP,
                        name: "eth0".into(),
                        address: vec![0x52, 0x54, 0, 1, 2, 3],
                    })
                ),
                (
                    3,
                    Reply::Addr(AddrInfo {
                        index: 2,
                        prefix_len: 64,
                        scope: RT_SCOPE_UNIVERSE,
                        ip: IpAddr::V6(v6),
                    })
                ),
                (3, Reply::Done),
                (4, Reply::Ack),
                (5, Reply::Error(17)),
            ]
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(parse(&[]).unwrap().is_empty());
        let mut bad = link_dump(1);
        bad[0] = 200; // longer than the datagram
        assert!(parse(&bad).is_err());
        let mut short = reply(RTM_NEWLINK, 1, &[0; 4], &[]);
        short.truncate(20);
        short[..4].copy_from_slice(&20u32.to_ne_bytes());
        assert!(parse(&short).is_err());
        // An attribute claiming more than there is ends the attribute walk.
        let mut odd = reply(
            RTM_NEWLINK,
            1,
            &ifinfomsg(1, 0, 0),
            &[(IFLA_IFNAME, b"x\0")],
        );
        odd[32] = 200;
        assert!(matches!(parse(&odd).unwrap()[0].1, Reply::Link(ref l) if l.name.is_empty()));
    }
}
