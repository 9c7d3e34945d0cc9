//! A small TFTP read client: for tests, the benchmark and checking a server by hand.
//! It speaks the same options the server does and can drop chosen DATA blocks once,
//! to exercise the server's retransmission.
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::packet::{ack_packet, parse, Packet, Request, TftpOption, MAX_BLKSIZE};
use super::window::wire;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    pub tsize: bool,
    /// Sent as the timeout option (whole seconds) when set.
    pub timeout_option: Option<u8>,
    pub mode: String,
    /// How long to wait for the server before resending.
    pub timeout: Duration,
    pub retries: u32,
    /// Keep the file in memory; otherwise only count its bytes.
    pub keep_data: bool,
    /// Absolute block numbers to discard the first time they arrive (fault injection).
    pub drop_once: HashSet<u64>,
    /// Local address to send from; unspecified by default.
    pub bind: Option<IpAddr>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            blksize: None,
            windowsize: None,
            tsize: false,
            timeout_option: None,
            mode: "octet".into(),
            timeout: Duration::from_secs(2),
            retries: 5,
            keep_data: true,
            drop_once: HashSet::new(),
            bind: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub data: Vec<u8>,
    pub bytes: u64,
    pub blocks: u64,
    /// The OACK's options, empty when the server sent none.
    pub oack: Vec<(String, String)>,
    pub tsize: Option<u64>,
    pub blksize: u16,
    pub windowsize: u16,
    /// The transfer's TID on the server side.
    pub server_tid: Option<SocketAddr>,
    /// Blocks received again after we had them (the server retransmitted).
    pub duplicates: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TFTP client socket")]
    Io(#[from] io::Error),
    #[error("server sent ERROR {code}: {message}")]
    Server { code: u16, message: String },
    #[error("no answer from the server after {0} retries")]
    Timeout(u32),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Fetches `path` from the server listening at `server`.
pub async fn fetch(
    server: SocketAddr,
    path: &str,
    opts: &ClientOptions,
) -> Result<Fetched, ClientError> {
    let bind = opts.bind.unwrap_or(match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let sock = UdpSocket::bind(SocketAddr::new(bind, 0)).await?;

    let values: Vec<(&str, String)> = [
        opts.blksize.map(|b| ("blksize", b.to_string())),
        opts.tsize.then(|| ("tsize", "0".to_string())),
        opts.timeout_option.map(|t| ("timeout", t.to_string())),
        opts.windowsize.map(|w| ("windowsize", w.to_string())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let rrq = Packet::Rrq(Request {
        filename: path,
        mode: &opts.mode,
        options: values
            .iter()
            .map(|(name, value)| TftpOption { name, value })
            .collect(),
    })
    .to_bytes();
    sock.send_to(&rrq, server).await?;

    let mut out = Fetched {
        blksize: 512,
        windowsize: 1,
        ..Fetched::default()
    };
    let mut drop_once = opts.drop_once.clone();
    let mut buf = vec![0u8; 4 + usize::from(MAX_BLKSIZE) + 1];
    let mut tid: Option<SocketAddr> = None;
    // Next block expected, absolute; blocks seen since our last ACK.
    let mut expected = 1u64;
    let mut in_window = 0u16;
    // The block we last re-ACKed for a gap, so a burst of strays gets one ACK.
    let mut gap_acked: Option<u64> = None;
    let mut tries = 0u32;
    let mut deadline = Instant::now() + opts.timeout;

    loop {
        let (n, from) = match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                tries += 1;
                if tries > opts.retries {
                    return Err(ClientError::Timeout(opts.retries));
                }
                match tid {
                    None => sock.send_to(&rrq, server).await?,
                    Some(t) => sock.send_to(&ack_packet(wire(expected - 1)), t).await?,
                };
                in_window = 0;
                deadline = Instant::now() + opts.timeout;
                continue;
            }
        };
        if tid.is_some_and(|t| t != from) {
            continue;
        }
        let packet = match parse(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                return Err(ClientError::Protocol(format!(
                    "bad packet from the server: {e}"
                )))
            }
        };
        match packet {
            Packet::Oack { options } if tid.is_none() => {
                tid = Some(from);
                out.server_tid = tid;
                for o in &options {
                    let v: u64 = o.value.parse().map_err(|_| {
                        ClientError::Protocol(format!("OACK {}={:?}", o.name, o.value))
                    })?;
                    let asked = |x: Option<u16>| x.is_some_and(|a| v >= 1 && v <= u64::from(a));
                    match o.name.to_ascii_lowercase().as_str() {
                        "blksize" if asked(opts.blksize) => out.blksize = v as u16,
                        "windowsize" if asked(opts.windowsize) => out.windowsize = v as u16,
                        "tsize" if opts.tsize => out.tsize = Some(v),
                        "timeout" if opts.timeout_option.is_some() => {}
                        _ => {
                            return Err(ClientError::Protocol(format!(
                                "OACK has {}={} that was not asked for",
                                o.name, o.value
                            )))
                        }
                    }
                    out.oack.push((o.name.to_string(), o.value.to_string()));
                }
                sock.send_to(&ack_packet(0), from).await?;
                tries = 0;
                deadline = Instant::now() + opts.timeout;
            }
            // Our ACK of the OACK was lost.
            Packet::Oack { .. } if expected == 1 => {
                sock.send_to(&ack_packet(0), from).await?;
            }
            Packet::Data { block, data } => {
                if tid.is_none() {
                    tid = Some(from);
                    out.server_tid = tid;
                }
                if block == wire(expected) {
                    if drop_once.remove(&expected) {
                        continue;
                    }
                    if data.len() > usize::from(out.blksize) {
                        return Err(ClientError::Protocol(format!(
                            "{}-byte block with blksize {}",
                            data.len(),
                            out.blksize
                        )));
                    }
                    if opts.keep_data {
                        out.data.extend_from_slice(data);
                    }
                    out.bytes += data.len() as u64;
                    out.blocks += 1;
                    expected += 1;
                    in_window += 1;
                    gap_acked = None;
                    tries = 0;
                    deadline = Instant::now() + opts.timeout;
                    let last = data.len() < usize::from(out.blksize);
                    if last || in_window >= out.windowsize {
                        sock.send_to(&ack_packet(block), from).await?;
                        in_window = 0;
                    }
                    if last {
                        return Ok(out);
                    }
                } else {
                    // A block we already have (our ACK was lost) or one past a gap:
                    // ACK the last good block once so the server resends from there.
                    out.duplicates += 1;
                    if gap_acked != Some(expected) {
                        gap_acked = Some(expected);
                        sock.send_to(&ack_packet(wire(expected - 1)), from).await?;
                        in_window = 0;
                    }
                }
            }
            Packet::Error { code, message } => {
                return Err(ClientError::Server {
                    code,
                    message: message.into_owned(),
                })
            }
            _ => {}
        }
    }
}
