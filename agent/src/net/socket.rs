//! Carrying DHCP datagrams: a trait, and a UDP socket pinned to one link.
//!
//! A UDP socket on 0.0.0.0:68 bound to the device with SO_BINDTODEVICE can send to
//! 255.255.255.255 and receive broadcast replies before the link has any IPv4 address
//! (the netns test proves it against dnsmasq), so no raw AF_PACKET socket is needed: the
//! client sets the BROADCAST flag until it owns an address, and unicast replies to renewals
//! arrive once it does.
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};

use super::dhcp::Destination;
use super::link::Link;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// Sends DHCP datagrams to servers and receives their replies, for one link.
pub trait DhcpTransport: Send + Sync {
    fn send(&self, packet: &[u8], to: Destination) -> impl Future<Output = io::Result<()>> + Send;
    /// One datagram from a server; its length.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
}

/// Opens a [`DhcpTransport`] for a link; the seam that lets `configure` run on fakes.
pub trait TransportFactory: Send + Sync + 'static {
    type Transport: DhcpTransport + 'static;
    fn open(&self, link: &Link) -> io::Result<Self::Transport>;
}

/// UDP port 68 on one link.
pub struct UdpTransport {
    socket: tokio::net::UdpSocket,
}

impl UdpTransport {
    /// Binds 0.0.0.0:68 on `ifname` only (so each link has its own socket), with
    /// broadcasts allowed. Needs CAP_NET_RAW for SO_BINDTODEVICE.
    pub fn bind(ifname: &str) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_broadcast(true)?;
        socket.bind_device(Some(ifname.as_bytes()))?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT).into())?;
        let socket = tokio::net::UdpSocket::from_std(socket.into())?;
        Ok(UdpTransport { socket })
    }
}

impl DhcpTransport for UdpTransport {
    async fn send(&self, packet: &[u8], to: Destination) -> io::Result<()> {
        let ip = match to {
            Destination::Broadcast => Ipv4Addr::BROADCAST,
            Destination::Unicast(ip) => ip,
        };
        self.socket
            .send_to(packet, SocketAddrV4::new(ip, SERVER_PORT))
            .await?;
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let (len, from) = self.socket.recv_from(buf).await?;
            // Only servers (and relays) send from port 67.
            if from.port() == SERVER_PORT {
                return Ok(len);
            }
        }
    }
}

/// Opens a [`UdpTransport`] per link.
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpTransports;

impl TransportFactory for UdpTransports {
    type Transport = UdpTransport;
    fn open(&self, link: &Link) -> io::Result<UdpTransport> {
        UdpTransport::bind(&link.name)
    }
}
