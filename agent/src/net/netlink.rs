//! [`LinkControl`] on Linux: rtnetlink requests (encoded by the private `rtnl` module) over one
//! synchronous netlink socket, and the IPv6 sysctls. The kernel answers rtnetlink requests
//! at once, so blocking calls are fine even from async tasks.
//!
//! The socket belongs to the network namespace it was opened in; so does everything done
//! through it, which is what lets a test drive a namespace from one thread.
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::link::{Address, Link, LinkControl, LinkError, Route};
use super::rtnl::{self, Reply};
use super::MacAddr;

/// errno values the remove operations tolerate: the thing is already gone.
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

struct Channel {
    socket: Socket,
    seq: u32,
}

/// rtnetlink in the caller's network namespace; sysfs and procfs below `root`.
pub struct LinuxLinks {
    channel: Mutex<Channel>,
    root: PathBuf,
}

impl LinuxLinks {
    /// Opens the netlink socket now (in the calling thread's network namespace). `root` is
    /// where sys/ and proc/ are found ("/" on a real machine).
    pub fn new(root: &Path) -> Result<Self, LinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(LinkError::Open)?;
        socket.bind_auto().map_err(LinkError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(LinkError::Open)?;
        Ok(LinuxLinks {
            channel: Mutex::new(Channel { socket, seq: 0 }),
            root: root.to_path_buf(),
        })
    }

    /// Sends the request `build` makes for a fresh sequence number and collects the
    /// replies to it until the kernel's ACK or DONE.
    fn request(&self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<Reply>> {
        let mut channel = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        channel.seq = channel.seq.wrapping_add(1);
        let seq = channel.seq;
        channel.socket.send(&build(seq), 0)?;
        let mut replies = Vec::new();
        loop {
            let (data, _) = channel.socket.recv_from_full()?;
            let parsed =
                rtnl::parse(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            for (reply_seq, reply) in parsed {
                if reply_seq != seq {
                    continue; // a late answer to an earlier request
                }
                match reply {
                    Reply::Done | Reply::Ack => return Ok(replies),
                    Reply::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
                    other => replies.push(other),
                }
            }
        }
    }

    fn change(
        &self,
        op: &'static str,
        link: &Link,
        build: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<(), LinkError> {
        self.request(build)
            .map(drop)
            .map_err(|source| LinkError::Netlink {
                op,
                link: link.name.clone(),
                source,
            })
    }

    fn write_sysctl(&self, path: PathBuf, value: &str) -> Result<(), LinkError> {
        std::fs::write(&path, value).map_err(|source| LinkError::Sysctl { path, source })
    }

    fn to_link(&self, info: rtnl::LinkInfo) -> Link {
        let loopback = info.flags & rtnl::IFF_LOOPBACK != 0;
        let mac = <[u8; 6]>::try_from(info.address.as_slice())
            .ok()
            .map(MacAddr)
            .filter(|m| m.0 != [0; 6]);
        let physical = !loopback
            && self
                .root
                .join("sys/class/net")
                .join(&info.name)
                .join("device")
                .exists();
        Link {
            index: info.index,
            name: info.name,
            mac,
            loopback,
            physical,
        }
    }
}

impl LinkControl for LinuxLinks {
    fn links(&self) -> Result<Vec<Link>, LinkError> {
        let replies = self
            .request(rtnl::link_dump)
            .map_err(|source| LinkError::Netlink {
                op: "listing links",
                link: "*".into(),
                source,
            })?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                Reply::Link(info) => Some(self.to_link(info)),
                _ => None,
            })
            .collect())
    }

    fn set_up(&self, link: &Link) -> Result<(), LinkError> {
        self.change("setting link up", link, |seq| {
            rtnl::link_set_up(seq, link.index)
        })
    }

    fn carrier(&self, link: &Link) -> Result<bool, LinkError> {
        let replies = self
            .request(|seq| rtnl::link_get(seq, link.index))
            .map_err(|source| LinkError::Netlink {
                op: "reading link state",
                link: link.name.clone(),
                source,
            })?;
        replies
            .into_iter()
            .find_map(|r| match r {
                Reply::Link(info) => Some(info.flags & rtnl::IFF_LOWER_UP != 0),
                _ => None,
            })
            .ok_or(LinkError::NoSuchLink(link.index))
    }

    fn enable_ipv6_autoconf(&self, link: &Link) -> Result<(), LinkError> {
        let conf = self.root.join("proc/sys/net/ipv6/conf").join(&link.name);
        self.write_sysctl(conf.join("accept_ra"), "1")?;
        self.write_sysctl(conf.join("autoconf"), "1")
    }

    fn add_address(&self, link: &Link, address: &Address) -> Result<(), LinkError> {
        self.change("adding an address", link, |seq| {
            rtnl::addr_change(seq, true, link.index, address)
        })
    }

    fn remove_address(&self, link: &Link, address: &Address) -> Result<(), LinkError> {
        tolerate_gone(self.change("removing an address", link, |seq| {
            rtnl::addr_change(seq, false, link.index, address)
        }))
    }

    fn add_route(&self, link: &Link, route: &Route) -> Result<(), LinkError> {
        self.change("adding a route", link, |seq| {
            rtnl::route_change(seq, true, link.index, route)
        })
    }

    fn remove_route(&self, link: &Link, route: &Route) -> Result<(), LinkError> {
        tolerate_gone(self.change("removing a route", link, |seq| {
            rtnl::route_change(seq, false, link.index, route)
        }))
    }

    fn global_addresses(&self, link: &Link) -> Result<Vec<(IpAddr, u8)>, LinkError> {
        let replies = self
            .request(rtnl::addr_dump)
            .map_err(|source| LinkError::Netlink {
                op: "listing addresses",
                link: link.name.clone(),
                source,
            })?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                Reply::Addr(a) if a.index == link.index && a.is_global() => {
                    Some((a.ip, a.prefix_len))
                }
                _ => None,
            })
            .collect())
    }
}

fn tolerate_gone(result: Result<(), LinkError>) -> Result<(), LinkError> {
    match result {
        Err(LinkError::Netlink { ref source, .. })
            if matches!(source.raw_os_error(), Some(ESRCH | EADDRNOTAVAIL | ENODEV)) =>
        {
            Ok(())
        }
        other => other,
    }
}
