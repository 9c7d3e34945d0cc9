//! One read transfer on its own UDP socket (its TID), from option negotiation to the
//! last ACK.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use super::options::{negotiate, Limits, Negotiated};
use super::packet::{data_packet, error_packet, parse, ErrorCode, Packet, TftpOption};
use super::source::{FileSource, SourceError};
use super::window::{wire, AckEffect, Window};
use super::{LogBudget, TftpConfig};

/// The largest read from a source at once; amortizes file reads over many blocks.
const READ_CHUNK: usize = 64 * 1024;

/// A read request, owned, as the listener hands it over.
#[derive(Debug, Clone)]
pub(super) struct ReadRequest {
    pub filename: String,
    pub mode: String,
    pub options: Vec<(String, String)>,
}

pub(super) struct Ctx {
    pub peer: SocketAddr,
    pub config: Arc<TftpConfig>,
    pub source: Arc<dyn FileSource>,
    pub stop: watch::Receiver<bool>,
    pub logs: Arc<LogBudget>,
}

pub(super) async fn run(ctx: Ctx, req: ReadRequest) {
    let span = tracing::info_span!("tftp", client = %ctx.peer, file = %req.filename);
    async move {
        let logs = ctx.logs.clone();
        match transfer(ctx, &req).await {
            Ok(done) => tracing::info!(
                bytes = done.bytes,
                ms = done.elapsed.as_millis() as u64,
                blksize = done.blksize,
                windowsize = done.windowsize,
                resent = done.resent,
                "transfer complete"
            ),
            Err(End::Refused(reason)) => {
                if logs.allow() {
                    tracing::info!(%reason, "request refused");
                }
            }
            Err(End::Aborted(reason)) => {
                if logs.allow() {
                    tracing::info!(%reason, "transfer aborted");
                }
            }
            // PXE ROMs routinely ask for tsize, then cancel and ask again.
            Err(End::Cancelled(reason)) => tracing::debug!(%reason, "client cancelled"),
            Err(End::Shutdown) => tracing::info!("transfer stopped: server shutting down"),
        }
    }
    .instrument(span)
    .await
}

struct Done {
    bytes: u64,
    elapsed: Duration,
    blksize: u16,
    windowsize: u16,
    resent: u64,
}

enum End {
    /// Refused before any data was sent (and the client told why).
    Refused(String),
    /// Stopped part-way.
    Aborted(String),
    /// The client sent an ERROR.
    Cancelled(String),
    /// The server is stopping.
    Shutdown,
}

/// What the client did while the session waited.
enum Event {
    Ack(u16),
    Timeout,
    ClientError(u16, String),
    Stop,
    Gone(io::Error),
}

/// Resolves once the server stops (or its stop sender is gone).
type StopSignal = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

fn stop_signal(mut rx: watch::Receiver<bool>) -> StopSignal {
    Box::pin(async move {
        let _ = rx.wait_for(|&s| s).await;
    })
}

struct Link {
    sock: UdpSocket,
    /// Made once per transfer, not per wait: waits are per block.
    stop: StopSignal,
    stopped: bool,
    /// One timer per transfer, re-armed lazily: it may fire before the current
    /// deadline and is then moved to it, so a block costs no timer registration.
    timer: Pin<Box<Sleep>>,
    rbuf: Vec<u8>,
    junk: u32,
}

enum Woke {
    Stop,
    Timer,
    Received(io::Result<usize>),
}

impl Link {
    async fn send(&self, pkt: &[u8]) -> Result<(), End> {
        self.sock
            .send(pkt)
            .await
            .map(drop)
            .map_err(|e| End::Aborted(format!("sending to the client: {e}")))
    }

    async fn refuse(&self, code: ErrorCode, message: &str) -> End {
        // Best effort: the client may be gone already.
        let _ = self.sock.send(&error_packet(code, message)).await;
        End::Refused(message.to_string())
    }

    /// Waits for the next ACK or ERROR from the client, until `deadline`. Deadlines
    /// never move backwards within a transfer.
    async fn next_event(&mut self, deadline: Instant) -> Event {
        if self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline);
        }
        loop {
            if self.stopped {
                return Event::Stop;
            }
            let woke = tokio::select! {
                biased;
                _ = &mut self.stop => Woke::Stop,
                _ = self.timer.as_mut() => Woke::Timer,
                r = self.sock.recv(&mut self.rbuf) => Woke::Received(r),
            };
            let n = match woke {
                Woke::Stop => {
                    self.stopped = true;
                    return Event::Stop;
                }
                Woke::Timer if Instant::now() >= deadline => return Event::Timeout,
                Woke::Timer => {
                    self.timer.as_mut().reset(deadline);
                    continue;
                }
                Woke::Received(Ok(n)) => n,
                // ICMP port unreachable: the client went away.
                Woke::Received(Err(e)) => return Event::Gone(e),
            };
            match parse(&self.rbuf[..n]) {
                Ok(Packet::Ack { block }) => return Event::Ack(block),
                Ok(Packet::Error { code, message }) => {
                    return Event::ClientError(code, message.chars().take(128).collect())
                }
                Ok(other) => {
                    let kind = other.kind();
                    self.note_junk(kind)
                }
                Err(e) => self.note_junk(&e.to_string()),
            }
        }
    }

    /// Strays on a transfer are ignored; only the first few are logged.
    fn note_junk(&mut self, what: &str) {
        self.junk += 1;
        if self.junk <= 3 {
            tracing::debug!(what, "ignoring an unexpected packet");
        }
    }
}

async fn transfer(ctx: Ctx, req: &ReadRequest) -> Result<Done, End> {
    let started = std::time::Instant::now();
    let config = &ctx.config;
    let sock = UdpSocket::bind(SocketAddr::new(config.listen.ip(), 0))
        .await
        .map_err(|e| End::Aborted(format!("binding a transfer socket: {e}")))?;
    sock.connect(ctx.peer)
        .await
        .map_err(|e| End::Aborted(format!("connecting to the client: {e}")))?;
    let mut link = Link {
        sock,
        stop: stop_signal(ctx.stop.clone()),
        stopped: false,
        timer: Box::pin(tokio::time::sleep(config.timeout)),
        rbuf: vec![0; 1024],
        junk: 0,
    };

    let netascii = if req.mode.eq_ignore_ascii_case("octet") {
        false
    } else if req.mode.eq_ignore_ascii_case("netascii") {
        true
    } else {
        let msg = format!("transfer mode {:?} is not supported", trim(&req.mode));
        return Err(link.refuse(ErrorCode::IllegalOperation, &msg).await);
    };
    let options: Vec<TftpOption<'_>> = req
        .options
        .iter()
        .map(|(name, value)| TftpOption { name, value })
        .collect();
    let limits = Limits {
        max_blksize: config.max_blksize,
        max_windowsize: config.max_windowsize,
        max_window_bytes: config.max_window_bytes,
    };
    let negotiated = match negotiate(&options, &limits) {
        Ok(n) => n,
        Err(e) => {
            return Err(link
                .refuse(ErrorCode::OptionNegotiation, &e.to_string())
                .await)
        }
    };

    let content = tokio::select! {
        r = ctx.source.open(&req.filename) => r,
        _ = &mut link.stop => {
            let _ = link.sock.send(&error_packet(ErrorCode::NotDefined, "server shutting down")).await;
            return Err(End::Shutdown);
        }
    };
    let content = match content {
        Ok(c) => c,
        Err(e) => {
            let code = match e {
                SourceError::NotFound => ErrorCode::FileNotFound,
                SourceError::AccessDenied(_) => ErrorCode::AccessViolation,
                SourceError::Io(ref err) => {
                    tracing::warn!(error = %err, "cannot open the file");
                    ErrorCode::NotDefined
                }
            };
            return Err(link.refuse(code, &e.to_string()).await);
        }
    };
    // A netascii transfer's size is only known after conversion: no tsize then.
    let tsize = if netascii { None } else { content.size() };
    let timeout = negotiated.timeout().unwrap_or(config.timeout);
    let mut sender = Sender {
        link,
        reader: content.into_reader(),
        eof: false,
        netascii,
        buf: BytesMut::new(),
        sbuf: Vec::with_capacity(4 + usize::from(negotiated.blksize)),
        timeout,
        retries: config.retries,
        resent: 0,
    };
    let result = sender.run(&negotiated, tsize).await;
    if let Err(End::Shutdown) = &result {
        let _ = sender
            .link
            .sock
            .send(&error_packet(ErrorCode::NotDefined, "server shutting down"))
            .await;
    }
    let bytes = result?;
    Ok(Done {
        bytes,
        elapsed: started.elapsed(),
        blksize: negotiated.blksize,
        windowsize: negotiated.windowsize,
        resent: sender.resent,
    })
}

fn trim(s: &str) -> String {
    s.chars().take(32).collect()
}

struct Sender {
    link: Link,
    reader: Box<dyn AsyncRead + Send + Unpin>,
    eof: bool,
    netascii: bool,
    /// The file from the first unacknowledged block on.
    buf: BytesMut,
    sbuf: Vec<u8>,
    timeout: Duration,
    retries: u32,
    resent: u64,
}

impl Sender {
    async fn run(&mut self, n: &Negotiated, tsize: Option<u64>) -> Result<u64, End> {
        // Nothing to acknowledge (only unknown options, or tsize we cannot tell):
        // no OACK, data at once, as for a plain RFC 1350 request.
        let acknowledged = n.oack(tsize);
        if !acknowledged.is_empty() {
            self.send_oack(&acknowledged).await?;
        }
        let blksize = usize::from(n.blksize);
        let want = blksize * usize::from(n.windowsize);
        let mut win = Window::new(n.windowsize);
        let mut bytes = 0u64;
        let mut tries = 0u32;
        self.fill(want, blksize, &mut win).await?;
        loop {
            while let Some(block) = win.to_send() {
                let start = ((block - win.acked() - 1) as usize * blksize).min(self.buf.len());
                let end = (start + blksize).min(self.buf.len());
                data_packet(&mut self.sbuf, wire(block), &self.buf[start..end]);
                self.link.send(&self.sbuf).await?;
                win.mark_sent();
            }
            let deadline = Instant::now() + self.timeout;
            loop {
                match self.link.next_event(deadline).await {
                    Event::Ack(b) => match win.on_ack(b) {
                        AckEffect::Progress(k) => {
                            let k = (k as usize * blksize).min(self.buf.len());
                            self.buf.advance(k);
                            bytes += k as u64;
                            tries = 0;
                            if win.is_done() {
                                return Ok(bytes);
                            }
                            self.fill(want, blksize, &mut win).await?;
                            break;
                        }
                        AckEffect::Resend => {
                            self.resent += 1;
                            break;
                        }
                        AckEffect::Duplicate | AckEffect::Ignored => {}
                    },
                    Event::Timeout => {
                        tries += 1;
                        if tries > self.retries {
                            let msg = format!("no ACK after {} retries", self.retries);
                            let _ = self
                                .link
                                .sock
                                .send(&error_packet(ErrorCode::NotDefined, &msg))
                                .await;
                            return Err(End::Aborted(msg));
                        }
                        self.resent += 1;
                        win.on_timeout();
                        break;
                    }
                    other => return Err(self.ended(other)),
                }
            }
        }
    }

    async fn send_oack(&mut self, values: &[(&'static str, String)]) -> Result<(), End> {
        let pkt = Packet::Oack {
            options: values
                .iter()
                .map(|(name, value)| TftpOption { name, value })
                .collect(),
        }
        .to_bytes();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                self.resent += 1;
            }
            self.link.send(&pkt).await?;
            let deadline = Instant::now() + self.timeout;
            loop {
                match self.link.next_event(deadline).await {
                    Event::Ack(0) => return Ok(()),
                    Event::Ack(_) => {}
                    Event::Timeout => break,
                    other => return Err(self.ended(other)),
                }
            }
        }
        Err(End::Aborted(format!(
            "no ACK for the OACK after {} retries",
            self.retries
        )))
    }

    fn ended(&self, e: Event) -> End {
        match e {
            Event::ClientError(code, msg) => End::Cancelled(format!("ERROR {code}: {msg:?}")),
            Event::Stop => End::Shutdown,
            Event::Gone(e) => End::Aborted(format!("client unreachable: {e}")),
            Event::Ack(_) | Event::Timeout => End::Aborted("unexpected event".into()),
        }
    }

    /// Reads until the buffer holds a whole window or the file ends, then tells the
    /// window where the last block is.
    async fn fill(&mut self, want: usize, blksize: usize, win: &mut Window) -> Result<(), End> {
        let mut raw = Vec::new();
        while !self.eof && self.buf.len() < want {
            let n = if self.netascii {
                raw.resize(READ_CHUNK, 0);
                let n = self.reader.read(&mut raw).await;
                if let Ok(n) = n {
                    to_netascii(&raw[..n], &mut self.buf);
                }
                n
            } else {
                self.buf.reserve((want - self.buf.len()).max(READ_CHUNK));
                self.reader.read_buf(&mut self.buf).await
            };
            match n {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the file");
                    return Err(self.link.refuse(ErrorCode::NotDefined, "read error").await);
                }
            }
        }
        if self.eof {
            // The last block is the first one shorter than blksize (possibly empty).
            win.set_last(win.acked() + (self.buf.len() / blksize) as u64 + 1);
        }
        Ok(())
    }
}

/// RFC 1350 netascii: LF becomes CR LF and a bare CR becomes CR NUL.
fn to_netascii(raw: &[u8], out: &mut BytesMut) {
    out.reserve(raw.len() + raw.len() / 8);
    for &b in raw {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.extend_from_slice(&[b]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netascii_conversion() {
        let mut out = BytesMut::new();
        to_netascii(b"a\nb\rc\r\n", &mut out);
        assert_eq!(&out[..], b"a\r\nb\r\0c\r\0\r\n");
    }
}
