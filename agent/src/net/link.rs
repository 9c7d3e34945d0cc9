//! The host's network capability as one trait, and which links the agent configures.
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("opening a netlink socket")]
    Open(#[source] std::io::Error),
    #[error("netlink: {op} on {link}")]
    Netlink {
        op: &'static str,
        link: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no link with index {0}")]
    NoSuchLink(u32),
}

/// A network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for links without a 6-byte hardware address (loopback, tunnels).
    pub mac: Option<MacAddr>,
    pub loopback: bool,
    /// Backed by a device (sysfs `device` link): a NIC, not a bridge, veth or tunnel.
    pub physical: bool,
}

/// An address to put on a link; `lifetime` `None` means forever (static, infinite lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub lifetime: Option<Duration>,
}

/// Who asked for a route; the kernel records it (`proto dhcp` / `proto static`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    Dhcp,
    Static,
}

/// A route out of a link. `gateway` `None` is an on-link route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub metric: u32,
    pub origin: RouteOrigin,
}

/// What the agent needs from the host's network stack. Linux: [`super::LinuxLinks`]
/// (rtnetlink + sysctls); tests: [`super::fake::FakeLinks`].
///
/// Adding an address or route replaces an existing one with the same key, so renewals
/// and retries are idempotent.
pub trait LinkControl: Send + Sync {
    /// Every link, loopback included.
    fn links(&self) -> Result<Vec<Link>, LinkError>;
    /// Administratively up.
    fn set_up(&self, link: &Link) -> Result<(), LinkError>;
    /// Whether the link has carrier (IFF_LOWER_UP).
    fn carrier(&self, link: &Link) -> Result<bool, LinkError>;
    /// Let the kernel do IPv6 SLAAC on the link: accept router advertisements, autoconf.
    fn enable_ipv6_autoconf(&self, link: &Link) -> Result<(), LinkError>;
    fn add_address(&self, link: &Link, address: &Address) -> Result<(), LinkError>;
    fn remove_address(&self, link: &Link, address: &Address) -> Result<(), LinkError>;
    fn add_route(&self, link: &Link, route: &Route) -> Result<(), LinkError>;
    fn remove_route(&self, link: &Link, route: &Route) -> Result<(), LinkError>;
    /// The link's global-scope addresses, both families, as the kernel has them (this is how
    /// SLAAC results are seen).
    fn global_addresses(&self, link: &Link) -> Result<Vec<(IpAddr, u8)>, LinkError>;
}

/// Which links get DHCP and SLAAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LinkSelection {
    /// Every link backed by a device (a NIC); if there is none, every other non-loopback
    /// link with a MAC (a VM or container whose NIC is virtual).
    #[default]
    Physical,
    /// Exactly these links, by name, whatever they are.
    Named(Vec<String>),
}

impl LinkSelection {
    /// The links to configure among `all`, sorted by name.
    pub fn select(&self, all: &[Link]) -> Vec<Link> {
        let mut chosen: Vec<Link> = match self {
            LinkSelection::Named(names) => all
                .iter()
                .filter(|l| names.contains(&l.name))
                .cloned()
                .collect(),
            LinkSelection::Physical => {
                let candidates = all.iter().filter(|l| !l.loopback && l.mac.is_some());
                let physical: Vec<Link> =
                    candidates.clone().filter(|l| l.physical).cloned().collect();
                if physical.is_empty() {
                    candidates.cloned().collect()
                } else {
                    physical
                }
            }
        };
        chosen.sort_by(|a, b| a.name.cmp(&b.name));
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, physical: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mac: (name != "lo").then_some(MacAddr([2, 0, 0, 0, 0, index as u8])),
            loopback: name == "lo",
            physical,
        }
    }

    #[test]
    fn physical_links_only_when_there_are_some() {
        let all = vec![
            link(1, "lo", false),
            link(4, "enp3s0", true),
            link(2, "br0", false),
            link(3, "eno1", true),
        ];
        let names: Vec<_> = LinkSelection::Physical
            .select(&all)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["eno1", "enp3s0"]);

        let virt = vec![link(1, "lo", false), link(2, "veth0", false)];
        let names: Vec<_> = LinkSelection::Physical
            .select(&virt)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["veth0"]);
    }

    #[test]
    fn named_links_whatever_they_are() {
        let all = vec![
            link(1, "lo", false),
            link(2, "veth0", false),
            link(3, "eno1", true),
        ];
        let names: Vec<_> = LinkSelection::Named(vec!["veth0".into(), "missing".into()])
            .select(&all)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["veth0"]);
    }
}
