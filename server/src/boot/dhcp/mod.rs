//! DHCP for network boot: ProxyDHCP (PXE spec 2.1, RFC 4578) next to the site's own DHCP
//! server, and an optional full DHCP mode for labs and isolated networks.
//!
//! - [`respond`] is the whole decision, pure apart from the full-mode lease table: a
//!   request and a [`Context`] in, an optional [`Reply`] out. Only PXE and iPXE clients
//!   get boot information; in proxy mode everyone else is ignored so that we coexist
//!   with the site's DHCP server.
//! - [`packet`] turns untrusted bytes into a request or a [`Malformed`] reason; it never
//!   panics, whatever the bytes.
//! - Full mode ([`Mode::Full`]) hands out addresses from one [`Pool`] to every client;
//!   its lease table is kept in memory only (see the `lease` module for what a restart
//!   means).
//! - [`DhcpServer`] owns the sockets (ports 67 and 4011), learns the local address each
//!   request arrived on (`IP_PKTINFO`), filters interfaces, rate-limits per client MAC
//!   and sends replies out of the interface the request came in on.
//!
//! The PXE flow in proxy mode: the client broadcasts a DISCOVER; the site's server offers
//! an address and we offer boot information (no address, option 60 "PXEClient"). The
//! client takes its lease from the site's server, then either boots the file from our
//! offer or asks us again on port 4011 with a REQUEST, which we ACK with the same boot
//! information. A PXE ROM gets iPXE over TFTP; iPXE then asks again (user class "iPXE")
//! and is pointed at the per-machine script over HTTP.
use std::fmt;
use std::net::SocketAddr;

use thiserror::Error;

mod lease;
pub mod packet;
mod ratelimit;
mod respond;
mod server;
#[cfg(test)]
mod tests;

pub use lease::{LeaseInfo, LeaseState, Pool, PoolConfig};
pub use packet::{parse_request, Malformed};
pub use ratelimit::RateLimit;
pub use respond::{
    respond, BootFiles, ClientKind, Context, ListenPort, Mode, Reply, ReplyTo, IPXE_NO_PXEDHCP,
    IPXE_SCRIPT_PATH,
};
pub use server::{serve, DhcpConfig, DhcpCounters, DhcpServer, ModeConfig};

/// A client's Ethernet hardware address (chaddr with htype 1, hlen 6).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Error)]
pub enum DhcpError {
    #[error("invalid DHCP configuration: {0}")]
    Config(String),
    #[error("binding DHCP socket {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("setting {option} on DHCP socket {addr}")]
    SocketOption {
        option: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
